"""The determinism guard: workflow code that asks the clock or a random source gets a clear error.

Workflow code must make the same decisions each time it replays, so it takes time and randomness
from the context (``ctx.now()``, ``ctx.random()``, ``ctx.uuid4()``, ``ctx.sleep``). A sandbox that
re-imports modules per run would catch the rest at a large cost per step; duro instead wraps the
usual sources once per process, and the wrappers check one thing on every call: whether the
calling thread is running a ``WorkflowLoop`` right now (``_loop._armed_threads``, the I/O guard's
map). Outside workflow code that check is a read of a dict that is empty, or holds only the
threads inside a workflow step; only a call made *by* workflow code pays for more.

What is wrapped (``install_determinism_guard``):

- ``time.time``/``time_ns``, and ``time.localtime``/``gmtime``/``ctime``/``asctime``/``strftime``
  when they are not given a time (they read the clock then);
- ``datetime.datetime.now``/``utcnow`` and ``datetime.date.today`` (so ``datetime.today`` too).
  These live on C types, which refuse new attributes from Python; the guard replaces them in the
  type's own dictionary, so ``from datetime import datetime`` is covered as well;
- every function of the ``random`` module (its hidden shared generator; a ``random.Random(seed)``
  of your own is deterministic and untouched, ``random.Random()`` without a seed and
  ``random.SystemRandom`` are not), ``uuid.uuid1``/``uuid4``, ``os.urandom`` (and
  ``os.getrandom``) and the ``secrets`` functions.

Module attributes are replaced, so ``time.time()`` is caught anywhere; a name bound with
``from time import time`` before the guard was installed still points at the original. The worker
therefore also rebinds such names in each module that defines one of its workflows
(``guard_module``).

Calls made by trusted library code on behalf of workflow code pass: ``logging`` stamps records
with ``time.time()``, duro reads its own clocks. The duro modules that call what workflow code
hands them (handlers, callbacks) are not trusted that way: ``set_signal_handler("s", random.random)``
is refused when the signal comes. A call passes on to whoever asked through the
modules that only forward it (``uuid4`` reading ``os.urandom``, ``random``'s methods): trust and
the reported line are those of the asker. A module imported for the first time inside a workflow
step runs its top-level code there; that is not the workflow's decision (it happens once per
process, whichever run triggers it), so calls made while an import is in progress pass. Logging
(filters and handlers) runs with the guard lifted (it is not workflow code), and so does what a
guarded function calls in "warn" mode, so each place is reported once. What escapes: a reference
to ``time.time`` or ``datetime.now`` taken before the guard was installed and kept somewhere other
than a workflow module's globals (``field(default_factory=datetime.now)`` in a dataclass defined
before the worker started, ``now=time.time`` as a default argument). A ``uuid.uuid4`` kept that way
is still caught, through the ``os.urandom`` it reads.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import gc
import logging
import os
import random
import secrets
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

from duro._loop import WorkflowLoop, _armed_threads

if TYPE_CHECKING:
    from duro.workflow import WorkflowDefinition
from duro.errors import NonDeterminismError

__all__ = ["MODES", "check_mode", "guard_module", "guard_workflow", "install_determinism_guard"]

#: What a workflow may ask of the guard: raise NonDeterminismError, log a warning, or nothing.
MODES = ("raise", "warn", "off")

logger = logging.getLogger("duro.determinism")

_get_ident = threading.get_ident
_running_loop = asyncio.events._get_running_loop
_install_lock = threading.Lock()
_installed = False
# id(original) -> (original, wrapper): what guard_module rebinds. The original is kept so that
# its id stays unique for the life of the process.
_wrapped: dict[int, tuple[object, object]] = {}
# Workflow modules guard_workflow has rebound (weakly: a module may be dropped and made again).
_guarded_modules: weakref.WeakSet[ModuleType] = weakref.WeakSet()
# (workflow type, call, file, line) already warned about: "warn" logs each place once.
_warned: set[tuple[str, str, str, int]] = set()

# Modules whose calls are not workflow decisions: a library reading the clock or a random source
# on workflow code's behalf (a log record's time, a span's id), and duro itself.
_TRUSTED = frozenset(("logging", "structlog", "loguru", "duro", "opentelemetry"))
# Modules that reach a guarded function on the caller's behalf (Random() seeds itself, SystemRandom's
# randint calls getrandbits, uuid4 reads os.urandom): the caller is whoever called into them.
_PASS_THROUGH = frozenset(("random", "uuid", "secrets"))
# duro's modules that call what workflow code hands them (signal and update handlers, callbacks
# on the loop, wait_condition predicates, interceptors' roots, saga compensations) and make no
# guarded call of their own: a guarded function handed over as such (set_signal_handler("s",
# random.random)) is the workflow's call, not duro's.
_RUNS_WORKFLOW_CODE = frozenset(("duro._instance", "duro._loop", "duro.workflow", "duro._child",
                                 "duro._interceptor_roots", "duro.saga", "duro._updates"))
# This file's frames (the wrappers) are passed over too: a wrapper that let a call through is not
# the caller of what that call reaches.
_HERE = __file__

_TIME_HINT = "ctx.now() (the workflow's clock, the same in every replay), or ctx.sleep() to wait"
_RANDOM_HINT = "ctx.random() or ctx.uuid4() (seeded by the run: a replay draws the same values)"
_SECRET_HINT = "an activity (its result is recorded, so a replay reuses it)"


def check_mode(what: str, mode: str | None, *, allow_none: bool = False) -> str | None:
    """``mode`` if it is one of MODES (or None when allowed); a ValueError naming them otherwise."""
    if mode is None and allow_none:
        return None
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"{what} must be one of {', '.join(repr(m) for m in MODES)}, not {mode!r}")
    return mode


def _module(frame: Any) -> str:
    name = frame.f_globals.get("__name__", "")
    return name.split(".", 1)[0] if isinstance(name, str) else ""


def _asker(frame: FrameType) -> tuple[FrameType, FrameType | None] | None:
    """Who asked for the guarded call ``frame`` made, and the outermost forwarding frame on the way.

    None when the call is not the workflow's decision: the asker is trusted (a duro module that
    calls what workflow code hands it is not: the handed function is the asker then), or the call
    was made while a module is being imported inside the workflow step.
    """
    via = None
    while frame.f_back is not None and (_module(frame) in _PASS_THROUGH or frame.f_code.co_filename == _HERE):
        if frame.f_code.co_filename != _HERE:
            via = frame
        frame = frame.f_back
    if _module(frame) in _TRUSTED and frame.f_globals.get("__name__") not in _RUNS_WORKFLOW_CODE:
        return None
    # An import in progress between the asker and the engine (duro's frame that runs the workflow
    # step, or closes its loop): imports further out (a worker started by a module's top level)
    # are not the workflow's and do not count.
    outer: FrameType | None = frame
    while outer is not None and _module(outer) != "duro":
        if _module(outer) == "importlib":  # importlib._bootstrap: a module's first import runs here
            return None
        outer = outer.f_back
    return frame, via


def _label(label: str, via: FrameType | None) -> str:
    """The public call that led to ``label``: ``uuid.uuid4()`` rather than the ``os.urandom()`` it read."""
    if via is None or via.f_code.co_name.startswith("_"):  # Random.__init__, _randbelow: keep the label
        return label
    name = via.f_code.co_name
    code = via.f_code
    if code.co_argcount and code.co_varnames[0] == "self":
        return f"{_module(via)}.{type(via.f_locals['self']).__name__}().{name}()"
    return f"{_module(via)}.{name}()"


def _nondeterministic(label: str, hint: str) -> WorkflowLoop | None:
    """Called by ``_checked_call`` when a thread running workflow code called ``label``; raises or logs.

    Returns the loop when it logged a warning: the wrapper then runs the original with the guard
    lifted, so what the original calls in turn (``uuid4`` reads ``os.urandom``) is not reported again.
    """
    loop = _running_loop()
    if not isinstance(loop, WorkflowLoop) or loop.unsafe_depth or loop.determinism == "off":
        return None
    asked = _asker(sys._getframe(1))  # _checked_call's frame: _asker passes over this file's frames
    if asked is None:
        return None
    caller, via = asked
    label = _label(label, via)
    while caller.f_code.co_filename == "<string>" and caller.f_back is not None:
        caller = caller.f_back  # generated code (a dataclass's __init__): name the line that ran it
    where = f"at {caller.f_code.co_filename}:{caller.f_lineno}"
    if caller.f_globals.get("__name__") in _RUNS_WORKFLOW_CODE:
        where = f"(given to duro as a handler or callback, called {where})"
    message = (f"{label} in workflow {loop.workflow_type!r} {where} is not deterministic: a replay of the "
               f"workflow would get a different value and could take another path. Use {hint}; for a "
               f"deliberate call, wrap it in `with ctx.unsafe():`")
    if loop.determinism == "warn":
        key = (loop.workflow_type, label, caller.f_code.co_filename, caller.f_lineno)
        if key not in _warned:
            _warned.add(key)
            logger.warning("%s (determinism='warn': logged once per place, not raised)", message)
        return loop
    err = NonDeterminismError(message, requested=label)
    if loop.nondeterministic_call is None:
        # Kept on the loop: the task fails even if the workflow code catches the exception.
        loop.nondeterministic_call = err
    raise err


def _checked_call(original: Callable[..., Any], label: str, hint: str, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
    """``original(*args, **kwargs)`` made by workflow code: refused, or warned about and run unguarded."""
    warned = _nondeterministic(label, hint)
    if warned is None:
        return original(*args, **kwargs)
    with warned.unguarded():
        return original(*args, **kwargs)


def _wrap(original: Callable[..., Any], label: str, hint: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if _armed_threads and _get_ident() in _armed_threads:
            return _checked_call(original, label, hint, args, kwargs)
        return original(*args, **kwargs)

    return guarded


def _wrap_unseeded(original: Callable[..., Any], label: str, index: int, hint: str,
                   keyword: str = "") -> Callable[..., Any]:
    """A wrapper of a function that reads the clock or a random source only when not given a value.

    The value is its argument at ``index`` (or named ``keyword``): ``time.localtime()`` and
    ``Random().seed()`` read them, ``time.localtime(ts)`` and ``Random(42)`` do not.
    """

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if (_armed_threads and _get_ident() in _armed_threads
                and (args[index] if len(args) > index else kwargs.get(keyword)) is None):
            return _checked_call(original, label, hint, args, kwargs)
        return original(*args, **kwargs)

    return guarded


def _logging_unguarded(handle: Callable[[logging.Logger, logging.LogRecord], Any]
                       ) -> Callable[[logging.Logger, logging.LogRecord], Any]:
    """``Logger.handle`` with both guards lifted while workflow code logs.

    Logging from workflow code is allowed, and its filters and handlers are not workflow code: they
    may stamp the time themselves (``datetime.now()`` in a formatter or a filter), open a file on
    first use, or send a record over a socket. ``ctx.logger`` lifts the I/O guard the same way.
    """

    @functools.wraps(handle)
    def guarded_handle(self: logging.Logger, record: logging.LogRecord) -> Any:
        if _armed_threads and _get_ident() in _armed_threads:
            loop = _running_loop()
            if isinstance(loop, WorkflowLoop):
                with loop.unguarded():
                    return handle(self, record)
        return handle(self, record)

    return guarded_handle


def _replace(owner: ModuleType, name: str, wrapper: Callable[..., Any]) -> None:
    original = getattr(owner, name)
    _wrapped[id(original)] = (original, wrapper)
    setattr(owner, name, wrapper)


def _set_type_attribute(cls: type, name: str, value: object) -> None:
    """Set ``cls.name`` on a C type that refuses it from Python (``datetime.datetime.now``).

    The type's ``__dict__`` is a read-only proxy of the dictionary the interpreter looks methods
    up in; the dictionary itself is the proxy's one referent. After changing it, the type's method
    caches must be told (PyType_Modified), as ``setattr`` on a Python class does.
    """
    import ctypes

    (namespace,) = gc.get_referents(cls.__dict__)
    namespace[name] = value
    modified = ctypes.pythonapi.PyType_Modified
    modified.argtypes = [ctypes.py_object]
    modified.restype = None
    modified(cls)


def _wrap_classmethod(cls: type, name: str, label: str) -> None:
    descriptor = cls.__dict__[name]  # a C classmethod descriptor; bound to the class it is called on
    bound = descriptor.__get__(None, cls)  # bound once for the common case, ``cls`` itself

    def guarded(klass: type, *args: Any, **kwargs: Any) -> Any:
        # A subclass gets its own type back: the method bound to it.
        fn = bound if klass is cls else descriptor.__get__(None, klass)
        if _armed_threads and _get_ident() in _armed_threads:
            return _checked_call(fn, label if klass is cls else f"{klass.__name__}.{name}()", _TIME_HINT, args,
                                 kwargs)
        return fn(*args, **kwargs)

    guarded.__name__ = guarded.__qualname__ = name
    guarded.__doc__ = getattr(descriptor, "__doc__", None)
    _set_type_attribute(cls, name, classmethod(guarded))


def install_determinism_guard() -> None:
    """Wrap the nondeterministic functions workflow code might call (once per process).

    Idempotent and thread-safe; called by ``Worker``, ``Replayer``, and a client that answers a
    query by replaying a run itself. A process that does none of these keeps the originals.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        for name in ("time", "time_ns"):
            _replace(time, name, _wrap(getattr(time, name), f"time.{name}()", _TIME_HINT))
        for name, index in (("localtime", 0), ("gmtime", 0), ("ctime", 0), ("asctime", 0), ("strftime", 1)):
            _replace(time, name, _wrap_unseeded(getattr(time, name), f"time.{name}() without a time", index,
                                                _TIME_HINT))
        _wrap_classmethod(datetime.datetime, "now", "datetime.now()")
        _wrap_classmethod(datetime.datetime, "utcnow", "datetime.utcnow()")
        _wrap_classmethod(datetime.date, "today", "date.today()")
        shared = random._inst
        for name in random.__all__:
            fn = getattr(random, name)
            if getattr(fn, "__self__", None) is shared:  # the module's functions: methods of its generator
                _replace(random, name, _wrap(fn, f"random.{name}()", _RANDOM_HINT))
        # A generator of your own is deterministic when seeded: Random() without a seed (seeded from
        # os.urandom in C) and SystemRandom (os.urandom on every call) are not.
        cls: Any = random.Random
        cls.seed = _wrap_unseeded(cls.seed, "random.Random() without a seed", 1, _RANDOM_HINT, keyword="a")
        system: Any = random.SystemRandom
        for name in ("random", "getrandbits", "randbytes"):
            setattr(system, name, _wrap(getattr(system, name), f"random.SystemRandom().{name}()", _RANDOM_HINT))
        for name in ("uuid1", "uuid4"):
            _replace(uuid, name, _wrap(getattr(uuid, name), f"uuid.{name}()", "ctx.uuid4()"))
        for name in ("urandom", "getrandom"):
            if hasattr(os, name):
                _replace(os, name, _wrap(getattr(os, name), f"os.{name}()", _RANDOM_HINT))
        for name in ("token_bytes", "token_hex", "token_urlsafe", "randbelow", "randbits", "choice"):
            _replace(secrets, name, _wrap(getattr(secrets, name), f"secrets.{name}()", _SECRET_HINT))
        logger_class: Any = logging.Logger
        logger_class.handle = _logging_unguarded(logger_class.handle)
        _installed = True


def guard_workflow(defn: WorkflowDefinition, default_mode: str = "raise") -> None:
    """Set the guard up for a workflow about to run: unless its mode (else ``default_mode``) is "off".

    Installs the guard and rebinds its module's names (``guard_module``), once per module: after
    the guard is installed a module can only bind the wrappers, so looking again finds nothing.
    """
    if (defn.determinism or default_mode) == "off":
        return
    module = sys.modules.get(defn.fn.__module__)
    if module is None or module in _guarded_modules:
        return
    guard_module(module)
    _guarded_modules.add(module)


def guard_module(module: ModuleType | None) -> None:
    """Rebind names in ``module`` that still point at an unwrapped function (``from time import time``).

    Installs the guard first if needed. Only names bound to exactly an original that the guard
    wraps are touched; the wrappers behave like the originals outside workflow code.
    """
    if module is None:
        return
    install_determinism_guard()
    namespace = vars(module)
    for name, value in list(namespace.items()):
        entry = _wrapped.get(id(value))
        if entry is not None and entry[0] is value:
            namespace[name] = entry[1]
