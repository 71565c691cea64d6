"""The kill -9 matrix: workers and clients SIGKILLed at random moments under load, then every promise checked.

Run it as ``python -m tests.integration.killmatrix --store URL --rounds N --seconds S --workers K``
(``make soak SECONDS=600`` does), where URL is ``lmdb://DIR`` (a new or empty directory) or
``postgresql://...?schema=NAME`` (a new or empty schema; the acknowledgements and logs then go to
``--work-dir`` or a temporary directory). It prints one JSON object with the counts and exits 1 when any
failure count is non-zero (2 on bad arguments).

What happens:

- K worker processes (``km_worker.py``) serve one store (LMDB on disk, or a PostgreSQL schema); C client processes
  (``km_client.py``) start ``km_workflow`` runs with uuid4 ids at a steady rate and record, fsynced,
  every start ``start_workflow`` acknowledged (and some results they waited for).
- Each round, for S/N seconds, the driver SIGKILLs a random worker, a random client, or now and then
  every worker at once, after random delays, and starts a replacement after another random delay.
  Each round kills at least one worker and one client.
- Then the clients are killed, every worker slot is restored, and the driver waits (polling with a
  deadline) until every acknowledged run, and every other run in the store, is closed.
- At the end all workers are killed and the store is checked through the public API
  (``describe``, ``fetch_history``, ``result``, ``list_workflows``, ``Replayer``) against the clients'
  acknowledgements and the activities' own execution logs (see ``km_worker.py``).

The counts (each must be 0):

- ``lost``: an acknowledged id that is not in the store, or whose run never completed.
- ``duplicated``: an acknowledged id whose latest run is not the acknowledged one; a history with
  more than one start or close, or an activity scheduled or completed more than once.
- ``rerun_after_recorded``: an activity attempt that started after its ``ActivityTaskCompleted``
  was recorded (by the event's timestamp), or with an attempt number above the recorded one.
- ``wrong_results``: a completed run whose result, or a result a client was given, is not the
  expected one, or whose activities do not all have a completion.
- ``stranded``: a run in the store that nobody acknowledged (its client died between the commit
  and the acknowledgement) and that did not complete either.
- ``replay_failures``: a completed history that the ``Replayer`` rejects.
- ``unexpected_exits``: a worker or client that died without being killed (it is restarted).

The run is ``aborted`` (and fails) when a process keeps dying before it is ready.

Every process the driver started is SIGKILLed and reaped when it returns, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import duro  # noqa: E402
from tests.integration.km_worker import TASK_QUEUE, expected_result, km_workflow  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKER_SCRIPT = HERE / "km_worker.py"
CLIENT_SCRIPT = HERE / "km_client.py"
READY_TIMEOUT_S = 30.0
POLL_S = 0.02
# "Every workflow" for list_workflows: PostgreSQL's LIMIT parameter is an int32 today (see
# tests/engine/test_list_limit.py, an xfail on that store), so not 1 << 40.
LIST_ALL = 2**31 - 1
FAILURE_COUNTS = ("lost", "duplicated", "rerun_after_recorded", "wrong_results", "stranded", "replay_failures",
                  "unexpected_exits")


@dataclass
class Config:
    """The matrix's knobs (the command line's options)."""

    store: str
    rounds: int = 3
    seconds: float = 30.0
    workers: int = 3
    clients: int = 2
    rate: float = 60.0
    concurrency: int = 4
    kill_delay: tuple[float, float] = (0.2, 1.5)
    restart_delay: tuple[float, float] = (0.0, 0.4)
    kill_all_workers_p: float = 0.1
    drain_timeout: float = 90.0
    seed: int | None = None
    work_dir: str | None = None
    verbose: int = 0  # 1: a line per round on stderr; 2: a line per kill too
    temp_root: str | None = None  # made for this run: removed when it passes


@dataclass
class Report:
    """What the matrix measured (printed as JSON)."""

    rounds: int = 0
    worker_kills: int = 0
    client_kills: int = 0
    all_worker_kills: int = 0
    acknowledged: int = 0
    completed: int = 0
    lost: int = 0
    duplicated: int = 0
    rerun_after_recorded: int = 0
    wrong_results: int = 0
    stranded: int = 0
    replay_failures: int = 0
    unacknowledged_started: int = 0
    results_seen_by_clients: int = 0
    start_errors: int = 0
    result_wait_errors: int = 0
    unexpected_exits: int = 0
    activity_attempts: int = 0
    activity_attempts_cut: int = 0
    activity_retries: int = 0
    drain_seconds_max: float = 0.0
    aborted: str = ""
    seconds: float = 0.0
    seed: int = 0
    work_dir: str = ""
    problems: list[str] = field(default_factory=list)

    def failures(self) -> int:
        """The sum of the counts that must be 0."""
        counts: list[int] = [getattr(self, name) for name in FAILURE_COUNTS]
        return sum(counts) + (1 if self.aborted else 0)


@dataclass
class Acks:
    """The clients' records: acknowledged id -> run id, id -> result given, errors they saw."""

    acked: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    start_errors: list[str] = field(default_factory=list)
    result_errors: list[str] = field(default_factory=list)


def _log(cfg: Config, msg: str, level: int = 1) -> None:
    if cfg.verbose >= level:
        print(f"[killmatrix {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Proc:
    """One worker or client subprocess; its stdout and stderr go to files in the log directory."""

    def __init__(self, role: str, slot: int, incarnation: int, argv: list[str], log_dir: Path,
                 env: dict[str, str]) -> None:
        self.role = role
        self.name = f"{role}{slot}-{incarnation}"
        self.slot = slot
        self.out_path = log_dir / f"{self.name}.out"
        self.err_path = log_dir / f"{self.name}.err"
        self.killed = False
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, *argv], cwd=_ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self) -> bool:
        try:
            return b"ready" in self.out_path.read_bytes()
        except OSError:
            return False

    def stderr_tail(self, n: int = 3000) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the process if it still runs, and reap it (a zombie would count as alive)."""
        if self.proc.poll() is None:
            self.killed = True
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}, exit code {self.proc.poll()}); stderr:\n{self.stderr_tail()}"


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


class KillMatrix:
    """Runs the rounds and the final check; ``run()`` returns the report."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        if not (cfg.store.startswith("lmdb://") or _is_postgres(cfg.store)):
            raise ValueError(f"the kill matrix runs on lmdb://DIR or postgresql://..., got {cfg.store!r}")
        if cfg.work_dir:
            self.work = Path(cfg.work_dir)
        elif _is_postgres(cfg.store):  # no directory of its own: a temporary one
            self.work = Path(tempfile.mkdtemp(prefix="duro-killmatrix-"))
        else:
            self.work = Path(_store_dir(cfg.store) + ".km")
        self.logs = self.work / "logs"
        self.acts = self.work / "activities"
        self.acks = self.work / "acks"
        for d in (self.logs, self.acts, self.acks):
            d.mkdir(parents=True, exist_ok=True)
        seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(1 << 32)
        self.rng = random.Random(seed)
        self.report = Report(seed=seed, work_dir=str(self.work))
        self.workers: dict[int, Proc] = {}
        self.clients: dict[int, Proc] = {}
        self.incarnations: Counter[str] = Counter()
        self.crash_streak: Counter[str] = Counter()
        self.closed: set[str] = set()  # acknowledged ids seen closed by a drain
        self.all_procs: list[Proc] = []
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), self.env.get("PYTHONPATH", "")) if p)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env["KM_LOG_DIR"] = str(self.acts)

    # ------------------------------------------------------------------ processes

    def _start(self, role: str, slot: int) -> Proc:
        n = self.incarnations[f"{role}{slot}"] = self.incarnations[f"{role}{slot}"] + 1
        if role == "w":
            argv = [str(WORKER_SCRIPT), self.cfg.store, TASK_QUEUE, str(self.acts)]
        else:
            ack = self.acks / f"c{slot}-{n}.txt"
            argv = [str(CLIENT_SCRIPT), self.cfg.store, TASK_QUEUE, str(ack),
                    str(self.cfg.rate / self.cfg.clients), str(self.cfg.concurrency)]
        p = Proc(role, slot, n, argv, self.logs, self.env)
        self.all_procs.append(p)
        (self.workers if role == "w" else self.clients)[slot] = p
        return p

    def _kill(self, p: Proc) -> None:
        p.kill()
        if p.role == "w":
            self.report.worker_kills += 1
        else:
            self.report.client_kills += 1
        _log(self.cfg, f"killed {p.name}", 2)

    def _check_exits(self) -> None:
        """A process that exited by itself is a finding (its stderr goes into the report).

        It is restarted; one that keeps dying before it is ready (a broken import, say) ends the run.
        """
        for group in (self.workers, self.clients):
            for slot, p in list(group.items()):
                code = p.proc.poll()
                if code is None or p.killed:
                    continue
                p.killed = True  # counted once
                self.report.unexpected_exits += 1
                self._problem(f"{p.name} exited by itself with code {code}: {p.stderr_tail(1500)}")
                key = f"{p.role}{slot}"
                self.crash_streak[key] = 0 if p.ready() else self.crash_streak[key] + 1
                if self.crash_streak[key] >= 3:
                    raise RuntimeError(f"{key} died {self.crash_streak[key]} times in a row before it was ready; "
                                       f"last stderr:\n{p.stderr_tail()}")
                self._start(p.role, slot)

    def _problem(self, msg: str) -> None:
        if len(self.report.problems) < 200 and msg not in self.report.problems:
            self.report.problems.append(msg)

    def kill_everything(self) -> None:
        for p in self.all_procs:
            try:
                p.kill()
            except Exception:  # keep killing the others
                pass

    # ------------------------------------------------------------------ one round

    async def _chaos(self, seconds: float) -> None:
        cfg, rng = self.cfg, self.rng
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + seconds
        restarts: list[tuple[float, str, int]] = []
        killed_roles: set[str] = set()
        next_kill = start + rng.uniform(*cfg.kill_delay)
        while True:
            now = loop.time()
            for item in [r for r in restarts if r[0] <= now]:
                restarts.remove(item)
                self._start(item[1], item[2])
            self._check_exits()
            if now >= end:
                break
            if now >= next_kill:
                live = {r: [p for p in g.values() if p.proc.poll() is None]
                        for r, g in (("w", self.workers), ("c", self.clients))}
                # A role not killed yet this round is chosen once half the round is over.
                missing = [r for r in ("w", "c") if r not in killed_roles and live[r]]
                if missing and now - start > seconds / 2:
                    role = missing[0]
                else:
                    choices = [r for r in ("w", "w", "w", "c", "c") if live[r]]
                    role = rng.choice(choices) if choices else ""
                if role:
                    victims = [rng.choice(live[role])]
                    if role == "w" and rng.random() < cfg.kill_all_workers_p:
                        victims = live["w"]
                        self.report.all_worker_kills += 1
                    for p in victims:
                        self._kill(p)
                        restarts.append((now + rng.uniform(*cfg.restart_delay), p.role, p.slot))
                    killed_roles.add(role)
                next_kill = now + rng.uniform(*cfg.kill_delay)
            wake = min([end, next_kill, now + 0.05] + [r[0] for r in restarts])
            await asyncio.sleep(max(0.0, wake - loop.time()))  # the chaos schedule's random moments
        for _, role, slot in restarts:
            self._start(role, slot)
        for role, group in (("w", self.workers), ("c", self.clients)):
            if role not in killed_roles:  # the round was too short for a random kill of this role
                p = self.rng.choice(list(group.values()))
                self._kill(p)
                self._start(p.role, p.slot)

    async def _wait_ready(self, *groups: dict[int, Proc]) -> None:
        """Wait until the current process of every slot of ``groups`` is ready (replacements included)."""
        def procs() -> list[Proc]:
            return [p for g in groups for p in g.values()]

        async def all_ready() -> bool:
            self._check_exits()
            return all(p.ready() for p in procs() if p.proc.poll() is None)

        if not await wait_until(all_ready, READY_TIMEOUT_S):
            raise RuntimeError(f"processes not ready within {READY_TIMEOUT_S}s:\n"
                               + "\n".join(p.describe() for p in procs() if not p.ready()))

    async def _drain(self, client: duro.Client) -> None:
        """Stop the load, restore every worker, wait until every run in the store is closed."""
        for p in self.clients.values():
            p.kill()  # the end of the load: not counted as a chaos kill
        for slot in range(self.cfg.workers):
            if slot not in self.workers or self.workers[slot].proc.poll() is not None:
                self._start("w", slot)
        await self._wait_ready(self.workers)
        t0 = time.monotonic()
        acked = self._read_acks().acked
        pending = set(acked) - self.closed

        async def all_closed() -> bool:
            for wfid in list(pending):
                try:
                    desc = await client.get_handle(wfid).describe()
                except duro.WorkflowNotFoundError:
                    pending.discard(wfid)  # lost: counted by the check
                    continue
                if desc.status != "running":
                    pending.discard(wfid)
                    self.closed.add(wfid)
            if pending:
                return False
            self._check_exits()
            return not await client.list_workflows(status="running", limit=1)

        ok = await wait_until(all_closed, self.cfg.drain_timeout)
        took = time.monotonic() - t0
        self.report.drain_seconds_max = max(self.report.drain_seconds_max, round(took, 2))
        if not ok:
            running = [d.workflow_id for d in await client.list_workflows(status="running", limit=20)]
            self._problem(
                f"round {self.report.rounds}: after {self.cfg.drain_timeout}s with every worker up, "
                f"{len(pending)} acknowledged runs still open (e.g. {sorted(pending)[:5]}); running: {running}")
            for p in self.workers.values():  # their asyncio stacks go to their stderr files
                if p.proc.poll() is None:
                    os.kill(p.pid, signal.SIGUSR1)
        rep = self.report
        _log(self.cfg, f"round {rep.rounds}/{self.cfg.rounds}: so far {rep.worker_kills} worker kills, "
                       f"{rep.client_kills} client kills, {len(acked)} starts acknowledged; every run closed "
                       f"{took:.1f}s after the load stopped" + ("" if ok else " (NOT: deadline passed)"))

    # ------------------------------------------------------------------ the check

    def _read_acks(self) -> Acks:
        """What the clients recorded (a line torn by a kill was never a complete acknowledgement)."""
        acks = Acks()
        for path in sorted(self.acks.glob("*.txt")):
            for line in path.read_text(errors="replace").splitlines(keepends=True):
                if not line.endswith("\n"):
                    continue
                kind, wfid, rest = [*line.rstrip("\n").split(" ", 2), "", ""][:3]
                if kind == "A":
                    acks.acked[wfid] = rest
                elif kind == "R":
                    acks.results[wfid] = json.loads(rest)
                elif kind == "X":
                    acks.start_errors.append(f"start of {wfid} raised {rest}"[:300])
                elif kind == "Y":
                    acks.result_errors.append(f"result of {wfid} raised {rest}"[:300])
        return acks

    def _read_activity_logs(self) -> dict[tuple[str, int], list[tuple[str, int, int, int]]]:
        """(run id, activity id) -> [(kind, attempt, time µs, pid)] for every logged execution event."""
        out: dict[tuple[str, int], list[tuple[str, int, int, int]]] = defaultdict(list)
        for path in self.acts.glob("act-*.log"):
            for line in path.read_text(errors="replace").splitlines(keepends=True):
                if not line.endswith("\n"):
                    continue
                kind, _wfid, run_id, act_id, attempt, _step, t_us, pid = line.split()
                out[(run_id, int(act_id))].append((kind, int(attempt), int(t_us), int(pid)))
        return out

    async def check(self, client: duro.Client) -> None:
        rep = self.report
        acks = self._read_acks()
        acked, client_results = acks.acked, acks.results
        rep.acknowledged = len(acked)
        rep.start_errors = len(acks.start_errors)
        rep.result_wait_errors = len(acks.result_errors)
        for msg in acks.start_errors + acks.result_errors:
            self._problem(msg)
        executions = self._read_activity_logs()
        replayer = duro.testing.Replayer(workflows=[km_workflow])
        in_store = {d.workflow_id for d in await client.list_workflows(limit=LIST_ALL)}
        rep.unacknowledged_started = len(in_store - set(acked))

        def problem(kind: str, wfid: str, msg: str) -> None:
            setattr(rep, kind, getattr(rep, kind) + 1)
            self._problem(f"{kind}: {wfid}: {msg}")

        for wfid, result in client_results.items():
            rep.results_seen_by_clients += 1
            if result != expected_result(wfid):
                problem("wrong_results", wfid, f"a client was given {result}, expected {expected_result(wfid)}")

        for wfid in sorted(set(acked) | in_store):
            is_acked = wfid in acked
            handle = client.get_handle(wfid)
            try:
                desc = await handle.describe()
            except duro.WorkflowNotFoundError:
                problem("lost", wfid, "acknowledged, not in the store")
                continue
            if is_acked and desc.run_id != acked[wfid]:
                problem("duplicated", wfid, f"acknowledged run {acked[wfid]}, the store's latest run is {desc.run_id}")
            if desc.status != "completed":
                problem("lost" if is_acked else "stranded", wfid, f"status {desc.status!r} after the drain")
                continue
            if is_acked:
                rep.completed += 1
            history = await handle.fetch_history()
            types = Counter(e.event_type for e in history)
            if types["WorkflowExecutionStarted"] != 1 or types["WorkflowExecutionCompleted"] != 1:
                problem("duplicated", wfid, f"{types['WorkflowExecutionStarted']} starts, "
                                            f"{types['WorkflowExecutionCompleted']} completions")
            scheduled = Counter(e.ref for e in history if e.event_type == "ActivityTaskScheduled")
            completed: dict[int, tuple[int, int]] = {}
            for e, core in zip(history, history.core_events, strict=True):
                if e.event_type != "ActivityTaskCompleted":
                    continue
                if e.ref in completed:
                    problem("duplicated", wfid, f"activity {e.ref} completed twice")
                completed[e.ref] = (core.timestamp_us, e.attempt)
            if any(n > 1 for n in scheduled.values()):
                problem("duplicated", wfid, f"activities scheduled more than once: {dict(scheduled)}")
            if set(completed) != set(scheduled) or len(scheduled) != 4:
                problem("wrong_results", wfid, f"scheduled {sorted(scheduled)}, completed {sorted(completed)}")
            try:
                result = await handle.result(timeout=10)
            except Exception as e:
                problem("wrong_results", wfid, f"result() raised {type(e).__name__}: {e}")
            else:
                if result != expected_result(wfid):
                    problem("wrong_results", wfid, f"result {result}, expected {expected_result(wfid)}")
            for ref, (ts_us, attempt) in completed.items():
                runs = executions.get((desc.run_id, ref), [])
                starts = [x for x in runs if x[0] == "S"]
                ends = [x for x in runs if x[0] == "E"]
                rep.activity_attempts += len(starts)
                rep.activity_retries += sum(1 for x in starts if x[1] > 1)
                rep.activity_attempts_cut += sum(1 for s in starts if not any(e[1] == s[1] and e[3] == s[3]
                                                                              for e in ends))
                if not any(x[1] == attempt for x in ends):
                    problem("wrong_results", wfid, f"activity {ref}: completion of attempt {attempt} recorded, "
                                                   f"but no execution of that attempt returned: {runs}")
                late = [x for x in starts if x[2] > ts_us or x[1] > attempt]
                if late:
                    problem("rerun_after_recorded", wfid,
                            f"activity {ref} completed by attempt {attempt} at {ts_us} µs, then started again: {late}")
            try:
                await replayer.replay(history)
            except Exception as e:
                problem("replay_failures", wfid, f"{type(e).__name__}: {e}")

    # ------------------------------------------------------------------ the whole matrix

    async def run(self) -> Report:
        cfg = self.cfg
        t0 = time.monotonic()
        per_round = cfg.seconds / cfg.rounds
        try:
            async with duro.Client.connect(cfg.store) as client:
                if await client.list_workflows(limit=1):
                    raise RuntimeError(f"{_redacted(cfg.store)} already holds workflows: the matrix needs a new "
                                       "or empty store")
                for slot in range(cfg.workers):
                    self._start("w", slot)
                await self._wait_ready(self.workers)
                for r in range(cfg.rounds):
                    self.report.rounds = r + 1
                    for slot in range(cfg.clients):
                        self._start("c", slot)
                    await self._wait_ready(self.clients)
                    await self._chaos(per_round)
                    await self._drain(client)
                for p in self.workers.values():
                    p.kill()  # nothing runs while the store is checked
                _log(cfg, "checking every run, history and activity execution")
                await self.check(client)
        except RuntimeError as e:  # processes that cannot start or get ready: nothing can be checked
            self.report.aborted = str(e)[:4000]
        finally:
            self.kill_everything()
        self.report.seconds = round(time.monotonic() - t0, 2)
        return self.report


def parse_args(argv: list[str] | None = None) -> Config:
    ap = argparse.ArgumentParser(prog="python -m tests.integration.killmatrix", description=__doc__.split("\n")[0])
    ap.add_argument("--store", default=None, help="lmdb://DIR, a new or empty directory (default: a temp dir), "
                                                  "or postgresql://...?schema=NAME, a new or empty schema")
    ap.add_argument("--rounds", type=int, default=0, help="rounds (default: one per 20 s of --seconds)")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of kills in all rounds together")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--rate", type=float, default=60.0, help="workflow starts per second, all clients together")
    ap.add_argument("--concurrency", type=int, default=4, help="concurrent starts in each client")
    ap.add_argument("--drain-timeout", type=float, default=90.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--work-dir", default=None, help="acks, activity logs, process logs (default: DIR.km)")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="progress on stderr (-vv: every kill)")
    a = ap.parse_args(argv)
    if a.seconds <= 0 or a.workers < 1 or a.clients < 1 or a.rate <= 0 or a.concurrency < 1 or a.rounds < 0:
        ap.error("--seconds, --workers, --clients, --rate, --concurrency must be positive")
    temp_root = None
    if a.store is None:
        temp_root = tempfile.mkdtemp(prefix="duro-killmatrix-")
        a.store = f"lmdb://{temp_root}/store"
    elif _is_postgres(a.store):
        if a.work_dir is None:  # acks and logs need a directory; removed when the run passes
            temp_root = tempfile.mkdtemp(prefix="duro-killmatrix-")
            a.work_dir = temp_root
    elif not a.store.startswith("lmdb://"):
        ap.error(f"--store must be lmdb://DIR or postgresql://..., got {_redacted(a.store)!r}")
    elif (Path(_store_dir(a.store)) / "data.mdb").exists():
        ap.error(f"{a.store} already holds a store: the matrix needs a new or empty directory")
    rounds = a.rounds or max(1, round(a.seconds / 20))
    return Config(store=a.store, rounds=rounds, seconds=a.seconds, workers=a.workers, clients=a.clients,
                  rate=a.rate, concurrency=a.concurrency, drain_timeout=a.drain_timeout, seed=a.seed,
                  work_dir=a.work_dir, verbose=a.verbose, temp_root=temp_root)


def _store_dir(url: str) -> str:
    return url[len("lmdb://"):].split("?", 1)[0]


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _redacted(url: str) -> str:
    """``url`` without a password (for messages)."""
    if not _is_postgres(url):
        return url
    scheme, rest = url.split("://", 1)
    auth, at, host = rest.rpartition("@")
    return f"{scheme}://{auth.split(':', 1)[0]}:***@{host}" if at and ":" in auth else url


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    report = asyncio.run(KillMatrix(cfg).run())
    doc = asdict(report)
    problems = doc.pop("problems")
    for line in problems[:50]:
        print(f"killmatrix: {line}", file=sys.stderr)
    if report.aborted:
        print(f"killmatrix: aborted: {report.aborted}", file=sys.stderr)
    failed = report.failures() > 0
    if cfg.temp_root is not None:
        if failed:
            print(f"killmatrix: the store, acknowledgements and logs are kept in {cfg.temp_root}", file=sys.stderr)
        else:
            shutil.rmtree(cfg.temp_root, ignore_errors=True)
            doc["work_dir"] = ""
    print(json.dumps(doc), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
