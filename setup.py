"""Build the compiled core: every .pyx under csrc/duro/_core becomes duro._core.<name>."""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("DURO_DEBUG") == "1"

macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
extensions = [
    Extension(
        f"duro._core.{pyx.stem}",
        [str(pyx)],
        define_macros=macros,
        # liblmdb (Debian: liblmdb-dev) for duro._core.mdb and log (it cimports mdb); the Makefile installs it.
        libraries=["lmdb"] if pyx.stem in ("mdb", "log") else [],
        extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"],
    )
    for pyx in sorted(Path("csrc/duro/_core").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["csrc"],
        annotate=DEBUG,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "linetrace": DEBUG,
        },
    ),
)
