"""A damaged store is an error that names the file, never a crash; ``duro check`` says what is damaged.

Stores are made with the public API (a Client and a Worker in this process), closed, then damaged on
disk. Whatever might map a damaged file runs in a subprocess: a regression shows up as the
subprocess dying of SIGBUS, not as pytest dying.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import duro
from duro._core import mdb
from duro.stores import lmdb_files
from duro.stores.check import check_store
from duro.stores.lmdb_files import check_lmdb_files, inspect_lmdb_files
from tests.engine import wfs

REPO = Path(__file__).resolve().parents[2]
QUEUE = "damage"
WORKFLOWS = 6  # completed long_workflow runs wf-0..wf-5, plus one running signal_workflow "waiting"

# ------------------------------------------------------------------------------------ helpers


async def fill(url: str) -> None:
    """Six completed workflows and one waiting for a signal; the store is closed on return."""
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue=QUEUE, workflows=[wfs.long_workflow, wfs.signal_workflow],
                               activities=[wfs.echo]):
            for i in range(WORKFLOWS):
                assert await client.execute_workflow(wfs.long_workflow, 3, id=f"wf-{i}", task_queue=QUEUE) == 3
            waiting = await client.start_workflow(wfs.signal_workflow, 2, id="waiting", task_queue=QUEUE)
            for _ in range(1000):  # its first workflow task done: it now waits for signals
                if (await waiting.describe()).history_length >= 2:
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError("the waiting workflow never ran its first task")


@pytest.fixture
async def store_dir(tmp_path: Path) -> Path:
    """A closed, healthy store with some history."""
    path = tmp_path / "store"
    await fill(f"lmdb://{path}")
    return path


def python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args...`` with duro importable; the result, whatever the exit status."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    env.pop("DURO_STORE", None)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)


def duro_cli(store: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return python("import sys; from duro.cli import main; sys.exit(main(sys.argv[1:]))",
                  "--store", f"lmdb://{store}", *argv)


def not_killed(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode >= 0, (
        f"the subprocess was killed by {signal.Signals(-proc.returncode).name}; stderr:\n{proc.stderr}")


OPEN_DIRECT = """
import sys
from duro.stores.lmdb_files import check_lmdb_files
try:
    check_lmdb_files(sys.argv[1])
except Exception as e:
    print(type(e).__name__, getattr(e, "path", ""), e, sep="|")
else:
    print("opened")
"""

OPEN_CLIENT = """
import asyncio, sys
import duro

async def main():
    async with duro.Client.connect("lmdb://" + sys.argv[1]) as client:
        await client.list_workflows()

try:
    asyncio.run(main())
except Exception as e:
    print(type(e).__name__, getattr(e, "path", ""), e, sep="|")
else:
    print("opened")
"""


def expect_corrupted(proc: subprocess.CompletedProcess[str], data: Path, *fragments: str) -> None:
    """The subprocess exited normally after printing StoreCorruptedError naming ``data``."""
    not_killed(proc)
    assert proc.returncode == 0, proc.stderr
    name, path, message = proc.stdout.strip().split("|", 2)
    assert (name, path) == ("StoreCorruptedError", str(data)), proc.stdout
    assert str(data) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def truncate_to_half(store: Path) -> Path:
    data = store / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    return data


class Env:
    """The store's LMDB environment opened directly, to damage records (the store itself is closed)."""

    def __init__(self, store: Path) -> None:
        self.env = mdb.Environment(str(store), map_size=1 << 36, max_dbs=16, max_readers=1024)
        self.dbs = {n: self.env.open_db(n) for n in (b"history", b"runs", b"wf", b"timer", b"wtask")}

    def run_key(self, workflow_id: str) -> bytes:
        with self.env.begin() as txn:
            raw = txn.get(workflow_id.encode(), db=self.dbs[b"wf"])
        assert raw is not None
        return bytes.fromhex(orjson.loads(raw)["run"])

    def put(self, db: bytes, key: bytes, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key, value, db=self.dbs[db])

    def get(self, db: bytes, key: bytes) -> bytes:
        with self.env.begin() as txn:
            raw = txn.get(key, db=self.dbs[db])
        assert raw is not None
        return raw

    def delete(self, db: bytes, key: bytes) -> None:
        with self.env.begin(write=True) as txn:
            assert txn.delete(key, db=self.dbs[db])

    def close(self) -> None:
        self.env.close()


def event_key(run_key: bytes, event_id: int) -> bytes:
    return run_key + event_id.to_bytes(8, "big")


# ------------------------------------------------------------------------------------ at open


def test_truncated_to_half_is_refused_before_mapping(store_dir: Path) -> None:
    data = truncate_to_half(store_dir)
    expect_corrupted(python(OPEN_DIRECT, str(store_dir)), data, "truncated", "missing")


def test_truncated_store_through_client_connect(store_dir: Path) -> None:
    data = truncate_to_half(store_dir)
    expect_corrupted(python(OPEN_CLIENT, str(store_dir)), data, "truncated")


def test_cli_on_a_truncated_store_says_what_to_do(store_dir: Path) -> None:
    data = truncate_to_half(store_dir)
    proc = duro_cli(store_dir, "list")
    not_killed(proc)
    assert proc.returncode == 1 and proc.stdout == "", proc
    (line,) = proc.stderr.splitlines()
    assert line.startswith("duro: error: ") and str(data) in line and "truncated" in line
    assert f"duro --store lmdb://{store_dir} check" in line


def test_empty_data_file_next_to_a_lock_file_is_refused(store_dir: Path) -> None:
    data = store_dir / "data.mdb"
    os.truncate(data, 0)
    assert (store_dir / "lock.mdb").exists()
    with pytest.raises(duro.StoreCorruptedError) as info:
        check_lmdb_files(str(store_dir))
    assert info.value.path == str(data) and str(data) in str(info.value) and "empty (0 bytes)" in str(info.value)
    expect_corrupted(python(OPEN_DIRECT, str(store_dir)), data, "empty")


def test_empty_data_file_being_created_by_another_opener_is_waited_for(
        store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LMDB writes the meta pages of a new file under its own lock: a 0-byte file may be a moment old."""
    data = store_dir / "data.mdb"
    content = data.read_bytes()
    os.truncate(data, 0)
    polls = []

    def opener_finishes(seconds: float) -> None:  # instead of waiting, the "other process" writes the file
        polls.append(seconds)
        data.write_bytes(content)

    monkeypatch.setattr(lmdb_files.time, "sleep", opener_finishes)
    meta = inspect_lmdb_files(str(store_dir))
    assert meta is not None and meta.file_size == len(content)
    assert len(polls) == 1


def test_new_and_empty_stores_are_not_damage(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert inspect_lmdb_files(str(fresh)) is None  # no data.mdb: a new store
    (fresh / "data.mdb").write_bytes(b"")  # no lock.mdb: nobody has opened it; LMDB initializes it
    assert inspect_lmdb_files(str(fresh)) is None


@pytest.mark.parametrize("damage", ["both", "page0", "page1"])
def test_garbage_meta_pages_are_refused(store_dir: Path, damage: str) -> None:
    data = store_dir / "data.mdb"
    page = 4096
    rng = random.Random(damage)
    with open(data, "r+b") as f:
        if damage in ("both", "page0"):
            f.seek(0)
            f.write(rng.randbytes(page))
        if damage in ("both", "page1"):
            f.seek(page)
            f.write(rng.randbytes(page))
    with pytest.raises(duro.StoreCorruptedError) as info:
        check_lmdb_files(str(store_dir))
    assert info.value.path == str(data)
    expected = {"both": "not an LMDB environment", "page0": "meta page 0", "page1": "meta page 1"}[damage]
    assert expected in str(info.value)
    expect_corrupted(python(OPEN_DIRECT, str(store_dir)), data, expected)


def test_a_file_shorter_than_its_meta_pages_is_refused(store_dir: Path) -> None:
    data = store_dir / "data.mdb"
    os.truncate(data, 5000)
    with pytest.raises(duro.StoreCorruptedError, match="shorter than LMDB's two meta pages"):
        check_lmdb_files(str(store_dir))


def test_only_missing_free_pages_are_not_damage(tmp_path: Path) -> None:
    """LMDB may leave the file shorter than its last page when the pages past the end are free.

    A page allocated and freed within one transaction is never written, so the file can end a few
    pages before ``last_pg``: that is healthy (LMDB never reads a free page; it writes it when it
    reuses it). Cutting free pages off is harmless; cutting a page in use is damage.
    """
    path = tmp_path / "env"
    path.mkdir()
    env = mdb.Environment(str(path), map_size=1 << 30, max_dbs=4, sync=False)
    db = env.open_db(b"t")
    rng = random.Random(7)
    keys: list[bytes] = []
    short = 0
    for _ in range(1500):
        with env.begin(write=True) as txn:
            for _ in range(rng.randint(1, 100)):
                if keys and rng.random() < 0.5:
                    txn.delete(keys.pop(rng.randrange(len(keys))), db=db)
                else:
                    keys.append(rng.randbytes(rng.randint(4, 40)))
                    txn.put(keys[-1], rng.randbytes(rng.choice([10, 100, 1000, 3000, 9000])), db=db)
        meta = inspect_lmdb_files(str(path))  # never raises on this healthy environment
        assert meta is not None
        short += meta.file_size < (meta.last_pg + 1) * meta.page_size
    env.close()
    assert short > 0, "the seed no longer produces a file that ends on free pages; pick another"

    data = path / "data.mdb"
    content = data.read_bytes()
    meta = inspect_lmdb_files(str(path))
    assert meta is not None
    detected = []
    for cut in range(1, 40):
        data.write_bytes(content[: len(content) - cut * meta.page_size])
        try:
            check_lmdb_files(str(path))
        except duro.StoreCorruptedError:
            detected.append(cut)
    # Once a page in use is cut off, every deeper cut is damage too.
    assert detected and detected == list(range(detected[0], 40)), detected


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may read any file")
def test_unreadable_data_file_is_a_permission_error(store_dir: Path) -> None:
    data = store_dir / "data.mdb"
    data.chmod(0)
    try:
        with pytest.raises(duro.StorePermissionError) as info:
            check_lmdb_files(str(store_dir))
        assert str(data) in str(info.value)
    finally:
        data.chmod(0o600)


def test_a_store_file_this_user_may_not_write_is_a_permission_error(
        store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root every file is writable, so the refusal is simulated where the check asks the OS."""
    data = store_dir / "data.mdb"
    real = os.access
    monkeypatch.setattr(lmdb_files.os, "access", lambda p, mode: False if str(p) == str(data) else real(p, mode))
    with pytest.raises(duro.StorePermissionError) as info:
        check_lmdb_files(str(store_dir))
    assert str(data) in str(info.value) and "read and write access" in str(info.value)


def test_the_open_check_reads_two_meta_pages_only(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[tuple[int, int]] = []
    real = lmdb_files._pread

    def counting(fd: int, size: int, offset: int) -> bytes:
        reads.append((size, offset))
        return real(fd, size, offset)

    monkeypatch.setattr(lmdb_files, "_pread", counting)
    meta = inspect_lmdb_files(str(store_dir))
    assert meta is not None
    assert reads == [(lmdb_files._META_BYTES, 0), (lmdb_files._META_BYTES, meta.page_size)]


# ------------------------------------------------------------------------------------ duro check


def test_check_on_a_healthy_store(store_dir: Path) -> None:
    data = store_dir / "data.mdb"
    before = data.read_bytes()
    report = check_store(f"lmdb://{store_dir}")
    assert report.ok, report.problems
    assert report.runs == report.runs_ok == WORKFLOWS + 1 and report.workflows == WORKFLOWS + 1
    assert report.events > 10 * WORKFLOWS

    proc = duro_cli(store_dir, "check")
    assert proc.returncode == 0 and proc.stderr == "", proc
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"store {store_dir}: {WORKFLOWS + 1} runs, {report.events} events") and \
        line.endswith("no problems found")
    proc = duro_cli(store_dir, "check", "--json")
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["records_checked"] is True and doc["runs"] == WORKFLOWS + 1
    assert doc["problems"] == []
    assert data.read_bytes() == before  # checking writes nothing


def test_check_names_a_corrupted_event_and_passes_the_other_runs(store_dir: Path) -> None:
    env = Env(store_dir)
    run_key = env.run_key("wf-3")
    good = env.get(b"history", event_key(run_key, 3))
    env.put(b"history", event_key(run_key, 3), b"\x7f" + good[1:])  # an envelope version that does not exist
    env.close()
    run_id = run_key.hex()

    report = check_store(str(store_dir))  # a plain path works too
    assert not report.ok and report.damaged_runs == {run_id}
    (problem,) = report.problems
    assert (problem.run_id, problem.workflow_id, problem.event_id) == (run_id, "wf-3", 3)
    assert "cannot be decoded" in problem.message

    proc = duro_cli(store_dir, "check")
    not_killed(proc)
    assert proc.returncode == 1 and proc.stderr == "", proc
    lines = proc.stdout.splitlines()
    assert lines[0] == f"problems in the store at {store_dir}:"
    assert lines[1].startswith(f"  run {run_id} (workflow 'wf-3') event 3: the event cannot be decoded")
    assert lines[2].startswith(f"store {store_dir}: {WORKFLOWS + 1} runs ({WORKFLOWS} fine, 1 with problems)")
    assert lines[2].endswith(": 1 problem") and len(lines) == 3
    doc = json.loads(duro_cli(store_dir, "check", "--json").stdout)
    assert doc["ok"] is False and doc["runs_ok"] == WORKFLOWS
    assert [(p["run_id"], p["workflow_id"], p["event_id"]) for p in doc["problems"]] == [(run_id, "wf-3", 3)]

    # The other commands still work on the healthy runs; the damaged one is an error that points to check.
    proc = duro_cli(store_dir, "describe", "wf-2")
    assert proc.returncode == 0, proc
    proc = duro_cli(store_dir, "history", "wf-3")
    assert proc.returncode == 1 and proc.stdout == "", proc
    (line,) = proc.stderr.splitlines()
    assert line.startswith("duro: error: ") and "event 3" in line and f"duro --store lmdb://{store_dir} check" in line


def test_check_finds_broken_records_and_indexes(store_dir: Path) -> None:
    env = Env(store_dir)
    keys = {wid: env.run_key(wid) for wid in ("wf-0", "wf-1", "wf-2", "wf-4")}
    # wf-0: its last event is gone (the run record's next id no longer follows the history)
    with env.env.begin() as txn:
        last = orjson.loads(txn.get(keys["wf-0"], db=env.dbs[b"runs"]) or b"")["next"] - 1
    env.delete(b"history", event_key(keys["wf-0"], last))
    # wf-1: an event in the middle is gone (a gap)
    env.delete(b"history", event_key(keys["wf-1"], 2))
    # wf-2: the run record is not JSON
    env.put(b"runs", keys["wf-2"], b"{not json")
    # an index entry for a run that does not exist, and a timer of a run that does not exist
    env.put(b"wf", b"ghost", orjson.dumps({"run": "ab" * 16, "status": "running"}))
    env.put(b"timer", (1).to_bytes(8, "big") + bytes.fromhex("cd" * 16) + (0).to_bytes(8, "big"), b"")
    # wf-4: the index says running, the run record says completed
    env.put(b"wf", b"wf-4", orjson.dumps({**orjson.loads(env.get(b"wf", b"wf-4")), "status": "running"}))
    env.close()

    report = check_store(f"lmdb://{store_dir}")
    text = "\n".join(map(str, report.problems))
    assert f"run {keys['wf-0'].hex()} (workflow 'wf-0'): the run record's next event id is {last + 1}, " \
        f"but the history ends at event {last - 1}" in text
    assert f"run {keys['wf-1'].hex()} (workflow 'wf-1') event 3: event 1 is followed by event 3" in text
    assert f"run {keys['wf-2'].hex()}: the run record is not a JSON object" in text
    assert f"run {'ab' * 16} (workflow 'ghost'): workflow index: the latest run does not exist" in text
    assert f"run {'cd' * 16}: timer #0: no such run" in text
    assert "(workflow 'wf-4'): workflow index says 'running' but the run record says 'completed'" in text
    assert len(report.problems) == 6, text
    assert report.runs_ok == WORKFLOWS + 1 - 4


async def test_check_finds_a_run_with_input_but_no_workflow_task(store_dir: Path) -> None:
    """The signature of a run nothing will move: a signal recorded, the workflow task that would process it gone."""
    async with duro.Client.connect(f"lmdb://{store_dir}") as client:  # no worker: the task stays queued
        await client.get_handle("waiting").signal("item", 1)
    assert check_store(str(store_dir)).ok  # the queued task is there: healthy
    env = Env(store_dir)
    run_key = env.run_key("waiting")
    env.delete(b"wtask", QUEUE.encode() + b"\x00" + run_key)
    env.close()

    report = check_store(str(store_dir))
    (problem,) = report.problems
    assert (problem.run_id, problem.workflow_id) == (run_key.hex(), "waiting")
    assert problem.message == (
        "the run is running and its newest input, event 3, was never processed (its last workflow task processed "
        "through event 1), but it has no workflow task: no worker will take it up")


def test_check_reports_file_damage_without_opening(store_dir: Path) -> None:
    data = truncate_to_half(store_dir)
    proc = duro_cli(store_dir, "check")
    not_killed(proc)
    assert proc.returncode == 1, proc
    assert f"the store file {data} is damaged" in proc.stdout and "truncated" in proc.stdout
    assert proc.stdout.splitlines()[-1] == f"store {store_dir}: its records were not checked: 1 problem"
    doc = json.loads(duro_cli(store_dir, "check", "--json").stdout)
    assert doc["ok"] is False and doc["records_checked"] is False and len(doc["problems"]) == 1

    shutil.rmtree(store_dir)
    store_dir.mkdir()
    (store_dir / "data.mdb").write_bytes(b"")
    proc = duro_cli(store_dir, "check")
    assert proc.returncode == 1 and "empty (0 bytes)" in proc.stdout, proc
    assert (store_dir / "data.mdb").stat().st_size == 0  # not initialized by the check


async def test_checks_while_the_store_is_being_written(tmp_path: Path) -> None:
    """Neither check mistakes a busy store for a damaged one: ``duro check`` in another process and the
    file check and ``check_store`` here run while this process commits workflows."""
    path = tmp_path / "store"
    url = f"lmdb://{path}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue=QUEUE, workflows=[wfs.fanout_workflow], activities=[wfs.echo]):
            stop = asyncio.Event()
            done = 0

            async def load() -> None:
                nonlocal done
                while not stop.is_set():
                    await asyncio.gather(*(client.execute_workflow(wfs.fanout_workflow, 5, id=f"load-{done}-{i}",
                                                                   task_queue=QUEUE) for i in range(10)))
                    done += 1

            loader = asyncio.create_task(load())
            try:
                for _ in range(3000):
                    if done >= 2:
                        break
                    await asyncio.sleep(0.01)
                assert done >= 2, "the load did not get going"
                for _ in range(3):
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "duro.cli", "--store", url, "check", cwd=REPO, env=env,
                        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                    out, err = await asyncio.wait_for(proc.communicate(), 60)
                    assert proc.returncode == 0, (out.decode(), err.decode())
                    assert out.decode().rstrip().endswith("no problems found")
                    for _ in range(20):
                        assert await asyncio.to_thread(inspect_lmdb_files, str(path)) is not None
                report = await asyncio.to_thread(check_store, url)  # shares this process's environment
                assert report.ok, report.problems
                assert report.runs >= 20
            finally:
                stop.set()
                await loader
