# cython: language_level=3
"""Replay matcher: splits a recorded history into workflow activations and checks that the
commands the code produces now are the commands that were recorded.

A history is a sequence of *inputs* (things that happened to the run: started, activity results,
timers fired, signals) and *commands* (what the code decided). Every workflow task ends with a
WorkflowTaskCompleted marker whose ``ref`` is the id of the last input the code had seen, followed
immediately (same commit) by the commands it produced. Inputs recorded between the last processed
input and the marker arrived while the task ran; they belong to the next activation.

It also holds the per-activation loops of the instance (``replay_history`` drives every task of a
history, ``apply_inputs`` hands one activation's inputs to the instance, live too): they run once
per workflow task, and most of their work is reading Event fields, which costs least here.
"""

cimport cython

from duro._core.codec cimport Event

from duro._core import codec
from duro.errors import NonDeterminismError

cdef int T_MARKER = codec.WORKFLOW_TASK_COMPLETED
cdef int T_EXTERNAL_SIGNAL = codec.EXTERNAL_SIGNAL
cdef int T_EXTERNAL_CANCEL = codec.EXTERNAL_CANCEL
cdef int T_MARKER_RECORDED = codec.MARKER
cdef int T_ACTIVITY_COMPLETED = codec.ACTIVITY_COMPLETED
# Flags bit 0 of a SignalExternalWorkflowExecutionInitiated recorded before duro 0.2 had
# RequestCancelExternalWorkflowExecutionInitiated: the event is a cancel request (with no name).
cdef int LEGACY_CANCEL_FLAG = 1

# Event types that a workflow's code decides (commands) — everything the worker appends after a
# WorkflowTaskCompleted marker.
cdef frozenset COMMAND_TYPES = frozenset((
    codec.WORKFLOW_COMPLETED, codec.WORKFLOW_FAILED, codec.WORKFLOW_CONTINUED_AS_NEW,
    codec.WORKFLOW_CANCELED, codec.ACTIVITY_SCHEDULED, codec.ACTIVITY_CANCEL_REQUESTED,
    codec.TIMER_STARTED, codec.TIMER_CANCELED, codec.UPDATE_COMPLETED, codec.CHILD_STARTED,
    codec.EXTERNAL_SIGNAL, codec.EXTERNAL_CANCEL, codec.MARKER,
))

# Events that are not inputs of the code: those that end a run without the code deciding it, and
# WorkflowTaskFailed (a task that raised and was retried: a record for people, not for replay).
cdef frozenset TERMINAL_TYPES = frozenset((codec.WORKFLOW_TERMINATED, codec.WORKFLOW_TIMED_OUT,
                                           codec.WORKFLOW_TASK_FAILED))

# The two sets by event type (an Event's type is 0..255): what split_activations reads per event.
cdef bint IS_COMMAND[256]
cdef bint IS_TERMINAL[256]
for _t in COMMAND_TYPES:
    IS_COMMAND[_t] = True
for _t in TERMINAL_TYPES:
    IS_TERMINAL[_t] = True


def is_command(int event_type):
    """Whether an event type is a command (decided by workflow code)."""
    return event_type in COMMAND_TYPES


cdef int check_history(list events) except -1:
    """Raise the NonDeterminismError of a history that cannot be split into workflow tasks.

    Event ids must increase, and a command must follow a WorkflowTaskCompleted marker (or another
    command of the same task). The first problem in event order is the one reported.
    """
    cdef Event ev
    cdef Py_ssize_t i, n = len(events)
    cdef unsigned long long last = 0
    cdef bint in_task = False  # right after a marker, or a command that follows one
    for i in range(n):
        ev = <Event>events[i]
        if ev.event_id <= last:
            raise NonDeterminismError(
                f"history is out of order: event {ev.event_id} follows event {last}", event_id=ev.event_id)
        last = ev.event_id
        if ev.type == T_MARKER:
            in_task = True
        elif IS_COMMAND[ev.type]:
            if not in_task:
                raise NonDeterminismError(
                    f"history has command event {ev.event_id} ({ev.type_name}) outside a workflow task",
                    event_id=ev.event_id)
        else:
            in_task = False
    return 0


@cython.final
cdef class _Tasks:
    """Walks a checked history (``check_history``) one completed workflow task at a time.

    After ``next()`` returned True: ``inputs`` are the task's inputs (the buffered inputs up to its
    marker's ``ref``), ``marker`` its WorkflowTaskCompleted, and ``events[cmd_start:cmd_end]`` its
    commands. Terminal events and workflow-task failures are not inputs and are skipped.
    """

    cdef list events
    cdef Py_ssize_t pos, n
    cdef list buffered  # inputs no task has processed yet, in id order (None: none)
    cdef list inputs
    cdef Event marker
    cdef Py_ssize_t cmd_start, cmd_end

    def __cinit__(self, list events):
        self.events = events
        self.n = len(events)

    cdef bint next(self) except -1:
        cdef Event ev
        cdef Py_ssize_t k, nb
        while self.pos < self.n:
            ev = <Event>self.events[self.pos]
            self.pos += 1
            if ev.type == T_MARKER:
                # Buffered inputs are in id order, so those the task saw (id <= ref) are a prefix:
                # usually all of them.
                if self.buffered is None:
                    self.inputs = []
                else:
                    nb = len(self.buffered)
                    k = 0
                    while k < nb and (<Event>self.buffered[k]).event_id <= ev.ref:
                        k += 1
                    if k == nb:
                        self.inputs = self.buffered
                        self.buffered = None
                    else:
                        self.inputs = self.buffered[:k]
                        self.buffered = self.buffered[k:]
                self.marker = ev
                self.cmd_start = self.pos
                while self.pos < self.n and IS_COMMAND[(<Event>self.events[self.pos]).type]:
                    self.pos += 1
                self.cmd_end = self.pos
                return True
            if not IS_TERMINAL[ev.type]:  # an input (commands outside a task were refused)
                if self.buffered is None:
                    self.buffered = [ev]
                else:
                    self.buffered.append(ev)
        return False

    cdef list pending(self):
        """The inputs no task has processed (once ``next()`` returned False)."""
        return [] if self.buffered is None else self.buffered


def split_activations(list events):
    """Split a history into activations.

    Returns a list of ``(inputs, marker, commands)`` tuples, one per completed workflow task, and
    a final ``(pending_inputs, None, [])`` holding the inputs no task has processed yet. Terminal
    events (terminated, timed out) and workflow-task failures are not inputs and are skipped.
    """
    check_history(events)
    cdef list out = []
    cdef _Tasks tasks = _Tasks(events)
    while tasks.next():
        out.append((tasks.inputs, tasks.marker, events[tasks.cmd_start:tasks.cmd_end]))
    out.append((tasks.pending(), None, []))
    return out


cdef inline bint is_legacy_cancel(Event r):
    return r.type == T_EXTERNAL_SIGNAL and (r.flags & LEGACY_CANCEL_FLAG) != 0


cdef inline bint same_command(int type, unsigned long long ref, str name, Event r):
    """Whether a command the code asks for (type, ref, name) is the recorded command ``r``.

    A cancel request to another run matches its older recorded form too (``LEGACY_CANCEL_FLAG``),
    and that older form matches nothing else, so histories recorded before and after the change
    both replay against the same code.
    """
    if ref != r.ref or name != r.name:
        return False
    if is_legacy_cancel(r):
        return type == T_EXTERNAL_CANCEL
    return type == r.type


cdef str describe(Event ev):
    if is_legacy_cancel(ev):
        return f"{ev.type_name}(seq={ev.ref}, a cancel request)"
    if ev.name:
        return f"{ev.type_name}(seq={ev.ref}, name={ev.name!r})"
    return f"{ev.type_name}(seq={ev.ref})"


def match_commands(list produced, list recorded, list locations, str workflow_type, object marker):
    """Check that ``produced`` commands equal the ``recorded`` ones (type, sequence number, name).

    ``locations`` holds, for each produced command, the "file:line" of the workflow code that
    asked for it. Raises NonDeterminismError naming the event, what was recorded, what the code
    asked for now and where.
    """
    cdef Py_ssize_t i, n = len(produced), m = len(recorded)
    cdef Event p, r
    cdef Event mk = <Event>marker
    for i in range(min(n, m)):
        p = <Event>produced[i]
        r = <Event>recorded[i]
        if not same_command(p.type, p.ref, p.name, r):
            where = locations[i] if i < len(locations) else "?"
            raise NonDeterminismError(
                f"workflow {workflow_type!r} diverged from its history at event {r.event_id}: "
                f"recorded {describe(r)}, but the code now asks for {describe(p)} at {where}",
                event_id=r.event_id, recorded=describe(r), requested=f"{describe(p)} at {where}")
    if n > m:
        p = <Event>produced[m]
        where = locations[m] if m < len(locations) else "?"
        raise NonDeterminismError(
            f"workflow {workflow_type!r} diverged from its history after event {mk.event_id}: "
            f"nothing more was recorded for that workflow task, but the code now asks for {describe(p)} "
            f"at {where}",
            event_id=mk.event_id, recorded="(nothing)", requested=f"{describe(p)} at {where}")
    if m > n:
        r = <Event>recorded[n]
        raise NonDeterminismError(
            f"workflow {workflow_type!r} diverged from its history at event {r.event_id}: recorded "
            f"{describe(r)}, but the code now asks for nothing more in that workflow task",
            event_id=r.event_id, recorded=describe(r), requested="(nothing)")


cdef class CommandMatcher:
    """Checks commands one by one, as the workflow code asks for them during replay.

    Matching at the moment of the call (rather than after the activation) lets the caller take
    the code location from the live stack only when there is a mismatch, so a replay that matches
    costs no stack inspection at all.
    """

    # The recorded commands of the current task are _recorded[_i:_end]; _i moves past each match.
    cdef list _recorded
    cdef Py_ssize_t _i, _end
    cdef object _marker
    cdef str _workflow_type

    def __init__(self, str workflow_type):
        self._workflow_type = workflow_type
        self._recorded = []
        self._i = 0
        self._end = 0
        self._marker = None

    cpdef begin(self, list recorded, object marker):
        """Expect ``recorded`` (the commands of one recorded workflow task) next."""
        self._recorded = recorded
        self._i = 0
        self._end = len(recorded)
        self._marker = marker

    cdef void begin_range(self, list events, Py_ssize_t start, Py_ssize_t end, object marker) noexcept:
        """``begin(events[start:end], marker)`` without the copy."""
        self._recorded = events
        self._i = start
        self._end = end
        self._marker = marker

    cpdef bint matches(self, Event produced):
        """Whether ``produced`` is the next recorded command; advances past it when it is."""
        cdef Event r
        if self._i >= self._end:
            return False
        r = <Event>self._recorded[self._i]
        if not same_command(produced.type, produced.ref, produced.name, r):
            return False
        self._i += 1
        return True

    cpdef bint matches_parts(self, int type, unsigned long long ref, str name):
        """``matches`` for a command given by its parts: no Event is built when it matches."""
        cdef Event r
        if self._i >= self._end:
            return False
        r = <Event>self._recorded[self._i]
        if not same_command(type, ref, name, r):
            return False
        self._i += 1
        return True

    def take_marker(self, str name):
        """If the next recorded command is MarkerRecorded ``name``, consume it and return True.

        How ``ctx.patched`` learns whether the recorded run took the patched branch: a run recorded
        before the patch has no marker there.
        """
        cdef Event r
        if self._i < self._end:
            r = <Event>self._recorded[self._i]
            if r.type == T_MARKER_RECORDED and r.name == name:
                self._i += 1
                return True
        return False

    def take_marker_payload(self, str name):
        """If the next recorded command is MarkerRecorded ``name``, consume it and return its payload.

        How a local activity's recorded result comes back in replay (None: not recorded there).
        """
        cdef Event r
        if self._i < self._end:
            r = <Event>self._recorded[self._i]
            if r.type == T_MARKER_RECORDED and r.name == name:
                self._i += 1
                return r.payload
        return None

    def mismatch(self, Event produced, object location):
        """The NonDeterminismError for ``produced`` not matching (call after ``matches`` said no)."""
        cdef list rest = self._recorded[self._i:self._end]
        try:
            match_commands([produced], rest[:1], [location], self._workflow_type, self._marker)
        except NonDeterminismError as e:
            return e
        return NonDeterminismError(f"workflow {self._workflow_type!r}: unexpected command {describe(produced)}")

    cpdef finish(self):
        """Raise NonDeterminismError if recorded commands of this task were not asked for."""
        if self._i < self._end:
            match_commands([], self._recorded[self._i:self._end], [], self._workflow_type, self._marker)


def apply_inputs(object inst, list inputs, unsigned long long last):
    """Apply one activation's input events to ``inst``, in order.

    An activity's result goes to ``inst._activity_completed(seq, payload)``, any other event to
    ``inst._apply(event)``. Returns ``(t, last)``: the latest timestamp of the events in seconds
    (``Event.timestamp``; 0.0 when none is later) and the largest of ``last`` and their ids.
    """
    cdef Event ev
    cdef long long t_us = 0
    for ev in inputs:
        if ev.timestamp_us > t_us:
            t_us = ev.timestamp_us
        if ev.type == T_ACTIVITY_COMPLETED:
            inst._activity_completed(ev.ref, ev.payload)
        else:
            inst._apply(ev)
        if ev.event_id > last:
            last = ev.event_id
    return <double>t_us / 1e6, last


cdef inline unsigned long long task_last(list events, Py_ssize_t start, Py_ssize_t end, Event marker):
    """The id of a task's last event: its last command in ``events[start:end]``, else its marker."""
    return (<Event>events[end - 1]).event_id if end > start else marker.event_id


cdef inline int run_task(object inst, object activate, object inputs, CommandMatcher matcher) except -1:
    """Run one recorded workflow task (its commands given to ``matcher.begin``) on ``inst``."""
    activate(inputs)  # the code asks for commands, which the matcher checks as they come
    divergence = inst._divergence
    if divergence is not None:
        raise divergence
    matcher.finish()  # nothing recorded was left out
    return 0


def drive(object inst, list activations, CommandMatcher matcher):
    """Replay every completed workflow task of ``activations`` (from ``split_activations``) on ``inst``.

    For each task: expect its recorded commands, feed its inputs to ``inst.activate`` (the code
    asks for commands, which the matcher checks as they come), then check nothing recorded was
    left out. Returns the id of the last event replayed (0 when there was no completed task).
    The last element of ``activations`` (inputs no task has processed) is not replayed.
    """
    cdef Py_ssize_t i, n = len(activations) - 1
    cdef tuple act
    cdef list recorded
    cdef Event marker
    cdef unsigned long long last = 0
    activate = inst.activate
    for i in range(n):
        act = <tuple>activations[i]
        recorded = <list>act[2]
        marker = <Event>act[1]
        matcher.begin(recorded, marker)
        run_task(inst, activate, act[0], matcher)
        last = task_last(recorded, 0, len(recorded), marker)
    return last


def replay_history(object inst, list events, CommandMatcher matcher):
    """``drive(inst, split_activations(events), matcher)`` in one pass, without building the list.

    Returns ``(last, tasks, pending)``: the id of the last event replayed (0 when there was no
    completed task), how many workflow tasks were replayed, and the inputs no task has processed
    yet (the first element of ``split_activations``' last activation). A history that cannot be
    split raises before any task runs, as ``split_activations`` does.
    """
    check_history(events)
    cdef _Tasks tasks = _Tasks(events)
    cdef Py_ssize_t count = 0
    cdef unsigned long long last = 0
    activate = inst.activate
    while tasks.next():
        matcher.begin_range(events, tasks.cmd_start, tasks.cmd_end, tasks.marker)
        run_task(inst, activate, tasks.inputs, matcher)
        last = task_last(events, tasks.cmd_start, tasks.cmd_end, tasks.marker)
        count += 1
    return last, count, tasks.pending()
