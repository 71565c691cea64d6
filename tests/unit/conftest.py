"""Hypothesis profiles of the unit tests.

``quick`` is Hypothesis' own default (100 examples per property) and is what every run uses unless
``HYPOTHESIS_PROFILE`` names another profile. ``fuzz`` is the long run of ``make fuzz``: many more
examples (``FUZZ_EXAMPLES``, default 2000: each property of ``test_fuzz.py``
runs ``FUZZ_EXAMPLES / 100`` times its quick budget), no per-example deadline, and the
reproduction blob printed for any failure. Nothing is loaded when the variable is unset, so
``--hypothesis-profile`` on the command line keeps working.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("quick", max_examples=100)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")),
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
