"""Processes the tests start: a worker in another process, run until the test is done."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def ready_process(*argv: str) -> Iterator[subprocess.Popen[bytes]]:
    """``python ARGV...`` run from the repository, once it printed "ready"; killed when the block ends.

    Waits for its first line rather than for a time: a process that fails before it is ready fails
    the test with all it printed.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip() == b"ready", first + proc.stdout.read()
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
