"""Processes the tests start: a worker in another process, run until the test is done; a command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    """What a command run by ``run_command`` ended with."""

    code: int
    out: str
    err: str


async def run_command(argv: Sequence[str], *, pythonpath: Sequence[Path] = (REPO / "src", REPO),
                      timeout: float = 60) -> Result:
    """Run ``argv`` from the repository as another process, without ``$DURO_STORE``; its exit code and output.

    Asynchronous, so the test's own loop (a worker the command talks to) keeps running meanwhile;
    killed if it has not finished within ``timeout`` seconds.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)}
    env.pop("DURO_STORE", None)
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


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
