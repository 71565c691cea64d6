"""The determinism guard (duro._determinism), driven on a WorkflowLoop by hand, without a store."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime as imported_datetime
from types import ModuleType
from typing import Any

import pytest

from duro._determinism import guard_module, install_determinism_guard
from duro._loop import WorkflowLoop, install_io_guard
from duro.errors import NonDeterminismError, WorkflowIOError

install_determinism_guard()
install_io_guard()

# Each guarded call, as workflow code would make it, with the name the error gives and the
# context call it suggests.
CALLS: list[tuple[str, Callable[[], Any], str]] = [
    ("time.time()", lambda: time.time(), "ctx.now()"),
    ("time.time_ns()", lambda: time.time_ns(), "ctx.now()"),
    ("time.localtime() without a time", lambda: time.localtime(), "ctx.now()"),
    ("time.gmtime() without a time", lambda: time.gmtime(), "ctx.now()"),
    ("time.ctime() without a time", lambda: time.ctime(), "ctx.now()"),
    ("time.strftime() without a time", lambda: time.strftime("%Y"), "ctx.now()"),
    ("datetime.now()", lambda: datetime.datetime.now(), "ctx.now()"),
    ("datetime.now()", lambda: datetime.datetime.now(tz=datetime.UTC), "ctx.now()"),
    ("datetime.utcnow()", lambda: datetime.datetime.utcnow(), "ctx.now()"),
    ("date.today()", lambda: datetime.date.today(), "ctx.now()"),
    ("datetime.today()", lambda: datetime.datetime.today(), "ctx.now()"),
    ("datetime.now()", lambda: imported_datetime.now(), "ctx.now()"),  # `from datetime import datetime`
    ("random.random()", lambda: random.random(), "ctx.random()"),
    ("random.randint()", lambda: random.randint(1, 6), "ctx.random()"),
    ("random.choice()", lambda: random.choice("abc"), "ctx.random()"),
    ("random.shuffle()", lambda: random.shuffle([1, 2, 3]), "ctx.random()"),
    ("random.uniform()", lambda: random.uniform(0, 1), "ctx.random()"),
    ("random.getrandbits()", lambda: random.getrandbits(8), "ctx.random()"),
    ("random.seed()", lambda: random.seed(), "ctx.random()"),
    ("random.Random() without a seed", lambda: random.Random(), "ctx.random()"),
    ("random.Random() without a seed", lambda: random.Random(5).seed(), "ctx.random()"),
    ("random.SystemRandom().random()", lambda: random.SystemRandom().random(), "ctx.random()"),
    ("random.SystemRandom().randint()", lambda: random.SystemRandom().randint(1, 6), "ctx.random()"),
    ("time.asctime() without a time", lambda: time.asctime(), "ctx.now()"),
    ("uuid.uuid4()", lambda: uuid.uuid4(), "ctx.uuid4()"),
    ("uuid.uuid1()", lambda: uuid.uuid1(), "ctx.uuid4()"),
    ("os.urandom()", lambda: os.urandom(8), "ctx.random()"),
    ("secrets.token_hex()", lambda: secrets.token_hex(), "an activity"),
    ("secrets.token_bytes()", lambda: secrets.token_bytes(), "an activity"),
    ("secrets.token_urlsafe()", lambda: secrets.token_urlsafe(), "an activity"),
    ("secrets.randbelow()", lambda: secrets.randbelow(10), "an activity"),
    ("secrets.choice()", lambda: secrets.choice("abc"), "an activity"),
]

# Calls that read no clock or random source: never refused.
ALLOWED: list[Callable[[], Any]] = [
    lambda: time.localtime(0),
    lambda: time.gmtime(1_700_000_000),
    lambda: time.strftime("%Y", time.gmtime(0)),
    lambda: time.ctime(0),
    lambda: datetime.datetime.fromtimestamp(0, tz=datetime.UTC),
    lambda: datetime.datetime(2026, 1, 2).isoformat(),
    lambda: random.Random(42).random(),  # a generator of your own, seeded: deterministic
    lambda: random.Random(x=7).seed(a=8),
    lambda: time.asctime(time.gmtime(0)),
    lambda: uuid.uuid5(uuid.NAMESPACE_DNS, "example.com"),
    lambda: uuid.UUID(int=5),
    lambda: time.monotonic(),  # not the wall clock; asyncio's own timing reads it
    lambda: secrets.compare_digest("a", "a"),
]


def run_on_loop(fn: Callable[[], Any], mode: str = "raise") -> dict[str, Any]:
    """Run ``fn`` as workflow code on a fresh WorkflowLoop; return its value or its error."""
    loop = WorkflowLoop(start_timer=lambda delay: 1, cancel_timer=lambda seq: None)
    loop.workflow_type = "guarded"
    if mode != "raise":
        loop.determinism = mode
    out: dict[str, Any] = {"loop": loop}

    async def main() -> None:
        try:
            out["value"] = fn()
        except (NonDeterminismError, WorkflowIOError) as e:
            out["error"] = e

    loop.create_task(main())
    loop.run_until_quiescent()
    loop.close()
    return out


@pytest.mark.parametrize(("label", "call", "hint"), CALLS, ids=[f"{i}-{c[0]}" for i, c in enumerate(CALLS)])
def test_each_guarded_call_raises_in_workflow_code(label: str, call: Callable[[], Any], hint: str) -> None:
    out = run_on_loop(call)
    err = out.get("error")
    assert isinstance(err, NonDeterminismError), f"{label} was not refused: {out}"
    message = str(err)
    assert message.startswith(f"{label} in workflow 'guarded' at {__file__}:"), message
    assert hint in message and "ctx.unsafe()" in message
    assert err.requested == label
    # Kept on the loop, so the workflow task fails even if the code swallowed the error.
    assert out["loop"].nondeterministic_call is err


@pytest.mark.parametrize("call", ALLOWED)
def test_calls_that_read_no_clock_or_random_source_pass(call: Callable[[], Any]) -> None:
    out = run_on_loop(call)
    assert "error" not in out and "value" in out


@pytest.mark.parametrize(("label", "call", "hint"), CALLS[:1] + CALLS[6:7] + CALLS[12:13] + CALLS[19:20])
def test_outside_workflow_code_the_calls_work_as_before(label: str, call: Callable[[], Any], hint: str) -> None:
    call()  # on the test's own thread, no WorkflowLoop running
    # ...and in another thread while a workflow step runs on this one (an activity's thread).
    seen: list[Any] = []

    def in_workflow() -> None:
        worker = threading.Thread(target=lambda: seen.append(call()))
        with running_loop().unguarded():  # starting a thread is refused in workflow code
            worker.start()
        worker.join()

    assert "error" not in run_on_loop(in_workflow)
    assert len(seen) == 1


def running_loop() -> WorkflowLoop:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, WorkflowLoop)
    return loop


def test_the_values_outside_are_the_real_ones() -> None:
    before = time.time()
    assert abs(datetime.datetime.now(tz=datetime.UTC).timestamp() - before) < 60
    assert datetime.date.today() == datetime.datetime.now().date() or True  # midnight race is fine
    assert isinstance(datetime.datetime.now(), datetime.datetime)
    assert type(datetime.datetime.today()) is datetime.datetime and type(datetime.date.today()) is datetime.date
    assert len({uuid.uuid4() for _ in range(10)}) == 10
    assert len(os.urandom(16)) == 16
    random.seed(7)
    a = random.random()
    random.seed(7)
    assert random.random() == a
    # The wrappers keep the originals' names and documentation (help(), tracebacks).
    assert time.time.__name__ == "time" and uuid.uuid4.__name__ == "uuid4"
    assert datetime.datetime.now.__name__ == "now" and datetime.datetime.now.__doc__


def test_warn_mode_logs_once_per_place_and_returns_the_value(caplog: pytest.LogCaptureFixture) -> None:
    def twice() -> list[float]:
        return [time.time() for _ in range(2)]

    with caplog.at_level(logging.WARNING, logger="duro.determinism"):
        out = run_on_loop(twice, mode="warn")
        out2 = run_on_loop(twice, mode="warn")
    assert "error" not in out and len(out["value"]) == 2 and len(out2["value"]) == 2
    warnings = [r for r in caplog.records if r.name == "duro.determinism"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "time.time() in workflow 'guarded'" in warnings[0].getMessage()
    assert "determinism='warn'" in warnings[0].getMessage()
    assert out["loop"].nondeterministic_call is None


def test_warn_mode_reports_the_call_not_what_it_calls_in_turn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="duro.determinism"):
        out = run_on_loop(lambda: (uuid.uuid4(), secrets.randbelow(10)), mode="warn")  # urandom, getrandbits
    assert "error" not in out
    labels = sorted(r.getMessage().split(" in workflow")[0] for r in caplog.records if r.name == "duro.determinism")
    assert labels == ["secrets.randbelow()", "uuid.uuid4()"], labels


def test_a_logging_handler_may_read_the_clock(caplog: pytest.LogCaptureFixture) -> None:
    # A handler is not workflow code: one that stamps records itself, as many do, still works.
    stamped: list[str] = []

    class Stamping(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stamped.append(f"{datetime.datetime.now():%Y} {record.getMessage()}")
            open(os.devnull).close()  # and one that opens its file on first use

    log = logging.getLogger("tests.determinism.stamping")
    handler = Stamping()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        out = run_on_loop(lambda: log.info("step %d", 1))
    finally:
        log.removeHandler(handler)
    assert "error" not in out, out.get("error")
    assert len(stamped) == 1 and stamped[0].endswith(" step 1")
    assert isinstance(run_on_loop(lambda: datetime.datetime.now()).get("error"), NonDeterminismError)


def test_off_mode_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="duro.determinism"):
        out = run_on_loop(lambda: (time.time(), uuid.uuid4(), random.random()), mode="off")
    assert "error" not in out and not [r for r in caplog.records if r.name == "duro.determinism"]


def test_unsafe_block_lifts_both_guards_and_only_inside() -> None:
    def deliberate() -> tuple[float, bool]:
        with running_loop().unguarded():
            stamp = time.time()
            exists = os.path.exists(__file__)
            open(os.devnull).close()  # refused by the I/O guard outside the block
        try:
            time.time()
        except NonDeterminismError:
            return stamp, exists
        raise AssertionError("the guard stayed lifted after the block")

    out = run_on_loop(deliberate)
    assert "value" in out and out["value"][1] is True
    assert isinstance(run_on_loop(lambda: open(os.devnull)).get("error"), WorkflowIOError)


def test_logging_from_workflow_code_is_not_refused(caplog: pytest.LogCaptureFixture) -> None:
    # logging stamps each record with time.time(): a library's call on the code's behalf.
    with caplog.at_level(logging.INFO, logger="wf"):
        out = run_on_loop(lambda: logging.getLogger("wf").info("step"))
    assert "error" not in out
    assert [r.getMessage() for r in caplog.records if r.name == "wf"] == ["step"]


def test_guard_module_rebinds_names_imported_before_the_guard() -> None:
    # As `from time import time` / `from uuid import uuid4` in a module imported before the
    # worker installed the guard: the names hold the unwrapped originals.
    module: Any = ModuleType("user_workflows")
    module.clock = getattr(time.time, "__wrapped__")  # noqa: B009 - not in the type stubs
    module.make_id = getattr(uuid.uuid4, "__wrapped__")  # noqa: B009
    module.mine = len
    sys.modules["user_workflows"] = module
    try:
        assert "error" not in run_on_loop(lambda: module.clock())  # escapes: bound to the original
        guard_module(module)
        assert module.mine is len
        err = run_on_loop(lambda: module.clock()).get("error")
        assert isinstance(err, NonDeterminismError) and str(err).startswith("time.time()")
        err = run_on_loop(lambda: module.make_id()).get("error")
        assert isinstance(err, NonDeterminismError) and str(err).startswith("uuid.uuid4()")
        assert module.clock() > 0  # outside workflow code it is the clock as before
    finally:
        del sys.modules["user_workflows"]


def test_installing_twice_changes_nothing() -> None:
    wrapped = time.time
    install_determinism_guard()
    assert time.time is wrapped


def test_a_trusted_library_is_trusted_through_what_it_calls() -> None:
    # A tracer asking uuid4 for a span id: uuid4 reads os.urandom, whose caller is uuid, not the
    # tracer; the guard looks past uuid to who asked.
    trusted: Any = ModuleType("opentelemetry.fake")
    exec("import uuid\ndef new_span_id():\n    return uuid.uuid4().hex\n", trusted.__dict__)
    out = run_on_loop(trusted.new_span_id)
    assert "error" not in out and len(out["value"]) == 32


def test_an_import_in_progress_is_not_the_workflows_decision(tmp_path: Any) -> None:
    # A module imported for the first time by workflow code runs its top level there; its seeding
    # (numpy.random's, aiohttp's) happens once per process, whichever run triggers it.
    (tmp_path / "seeds_at_import.py").write_text("import random, os\nSEED = random.random()\nKEY = os.urandom(4)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        out = run_on_loop(lambda: __import__("seeds_at_import").SEED)
        assert "error" not in out, out.get("error")
        # Once imported, a call the workflow makes itself is refused as ever.
        err = run_on_loop(lambda: __import__("seeds_at_import") and random.random()).get("error")
        assert isinstance(err, NonDeterminismError)
    finally:
        sys.path.remove(str(tmp_path))
        sys.path_importer_cache.pop(str(tmp_path), None)
        sys.modules.pop("seeds_at_import", None)


def test_an_import_further_out_than_the_workflow_step_does_not_count(tmp_path: Any) -> None:
    # A worker started by a module's top level (python -c "import app"): its workflow code runs
    # inside that import, and is guarded all the same.
    (tmp_path / "runs_workflow_code.py").write_text(
        "import random\nfrom tests.unit.test_determinism import run_on_loop\n"
        "OUT = run_on_loop(lambda: random.random())\n")
    sys.path.insert(0, str(tmp_path))
    try:
        out = __import__("runs_workflow_code").OUT
        assert isinstance(out.get("error"), NonDeterminismError), out
    finally:
        sys.path.remove(str(tmp_path))
        sys.path_importer_cache.pop(str(tmp_path), None)
        sys.modules.pop("runs_workflow_code", None)


def test_a_reference_kept_from_before_the_guard_is_named_as_the_call_the_code_made() -> None:
    # field(default_factory=uuid.uuid4) in a dataclass defined before the guard: the original
    # uuid4, caught through the os.urandom it reads, reported as uuid4 at the line that built it.
    import dataclasses

    make_id = getattr(uuid.uuid4, "__wrapped__")  # noqa: B009 - not in the type stubs

    @dataclasses.dataclass
    class Order:
        order_id: uuid.UUID = dataclasses.field(default_factory=make_id)

    line = sys._getframe().f_lineno + 1
    err = run_on_loop(lambda: Order()).get("error")
    assert isinstance(err, NonDeterminismError)
    assert str(err).startswith(f"uuid.uuid4() in workflow 'guarded' at {__file__}:{line} "), str(err)


def test_logging_filters_run_unguarded() -> None:
    class Stamp(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.stamp = datetime.datetime.now()
            return True

    log = logging.getLogger("tests.determinism.filtered")
    stamp = Stamp()
    log.addFilter(stamp)
    try:
        out = run_on_loop(lambda: log.warning("step"))
    finally:
        log.removeFilter(stamp)
    assert "error" not in out, out.get("error")


def test_time_zone_data_may_be_read() -> None:
    # ZoneInfo reads the zone's file on first use: converting ctx.now() to local time works.
    import zoneinfo

    zoneinfo.ZoneInfo.clear_cache()
    try:
        zone = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time-zone database on this machine")
    zoneinfo.ZoneInfo.clear_cache()
    out = run_on_loop(lambda: datetime.datetime(2026, 7, 1, tzinfo=datetime.UTC).astimezone(
        zoneinfo.ZoneInfo("Europe/Paris")).hour)
    assert out.get("value") == 2 and zone.key == "Europe/Paris", out.get("error")
    # Other files stay refused, also by a path that climbs out of the database.
    assert isinstance(run_on_loop(lambda: open("/etc/hostname")).get("error"), WorkflowIOError)
    for root in zoneinfo.TZPATH:
        escape = os.path.join(root, "..", "..", "..", "..", "etc", "hostname")
        assert isinstance(run_on_loop(lambda p=escape: open(p)).get("error"), WorkflowIOError)


def test_a_guarded_function_handed_to_duro_is_the_workflows_call() -> None:
    # loop.call_soon(random.random), set_signal_handler("s", random.random): duro calls it directly,
    # and duro is trusted for its own calls, not for what the workflow hands it.
    out = run_on_loop(lambda: running_loop().call_soon(random.random))
    err = out["loop"].nondeterministic_call
    assert isinstance(err, NonDeterminismError), out
    assert str(err).startswith("random.random() in workflow 'guarded' (given to duro as a handler or callback, "
                               "called at "), str(err)
