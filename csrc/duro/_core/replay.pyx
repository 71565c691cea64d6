# cython: language_level=3
"""Replay matcher: splits a recorded history into workflow activations and checks that the
commands the code produces now are the commands that were recorded.

A history is a sequence of *inputs* (things that happened to the run: started, activity results,
timers fired, signals) and *commands* (what the code decided). Every workflow task ends with a
WorkflowTaskCompleted marker whose ``ref`` is the id of the last input the code had seen, followed
immediately (same commit) by the commands it produced. Inputs recorded between the last processed
input and the marker arrived while the task ran; they belong to the next activation.
"""

from duro._core.codec cimport Event

from duro._core import codec
from duro.errors import NonDeterminismError

cdef int T_MARKER = codec.WORKFLOW_TASK_COMPLETED
cdef int T_EXTERNAL_SIGNAL = codec.EXTERNAL_SIGNAL
cdef int T_EXTERNAL_CANCEL = codec.EXTERNAL_CANCEL
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


def is_command(int event_type):
    """Whether an event type is a command (decided by workflow code)."""
    return event_type in COMMAND_TYPES


def split_activations(list events):
    """Split a history into activations.

    Returns a list of ``(inputs, marker, commands)`` tuples, one per completed workflow task, and
    a final ``(pending_inputs, None, [])`` holding the inputs no task has processed yet. Terminal
    events (terminated, timed out) and workflow-task failures are not inputs and are skipped.
    """
    cdef list out = []
    cdef list buffered = []
    cdef list take, keep, commands
    cdef Event ev, b
    cdef Py_ssize_t i = 0, n = len(events)
    cdef unsigned long long last = 0
    while i < n:
        ev = <Event>events[i]
        if ev.event_id <= last:
            raise NonDeterminismError(
                f"history is out of order: event {ev.event_id} follows event {last}", event_id=ev.event_id)
        last = ev.event_id
        i += 1
        if ev.type == T_MARKER:
            take = []
            keep = []
            for b in buffered:
                if b.event_id <= ev.ref:
                    take.append(b)
                else:
                    keep.append(b)
            buffered = keep
            commands = []
            while i < n and (<Event>events[i]).type in COMMAND_TYPES:
                b = <Event>events[i]
                if b.event_id <= last:
                    raise NonDeterminismError(
                        f"history is out of order: event {b.event_id} follows event {last}", event_id=b.event_id)
                commands.append(b)
                last = b.event_id
                i += 1
            out.append((take, ev, commands))
        elif ev.type in COMMAND_TYPES:
            raise NonDeterminismError(
                f"history has command event {ev.event_id} ({ev.type_name}) outside a workflow task",
                event_id=ev.event_id)
        elif ev.type not in TERMINAL_TYPES:
            buffered.append(ev)
    out.append((buffered, None, []))
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

    cdef list _recorded
    cdef Py_ssize_t _i
    cdef object _marker
    cdef str _workflow_type

    def __init__(self, str workflow_type):
        self._workflow_type = workflow_type
        self._recorded = []
        self._i = 0
        self._marker = None

    cpdef begin(self, list recorded, object marker):
        """Expect ``recorded`` (the commands of one recorded workflow task) next."""
        self._recorded = recorded
        self._i = 0
        self._marker = marker

    cpdef bint matches(self, Event produced):
        """Whether ``produced`` is the next recorded command; advances past it when it is."""
        cdef Event r
        if self._i >= len(self._recorded):
            return False
        r = <Event>self._recorded[self._i]
        if not same_command(produced.type, produced.ref, produced.name, r):
            return False
        self._i += 1
        return True

    cpdef bint matches_parts(self, int type, unsigned long long ref, str name):
        """``matches`` for a command given by its parts: no Event is built when it matches."""
        cdef Event r
        if self._i >= len(self._recorded):
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
        if self._i < len(self._recorded):
            r = <Event>self._recorded[self._i]
            if r.type == codec.MARKER and r.name == name:
                self._i += 1
                return True
        return False

    def take_marker_payload(self, str name):
        """If the next recorded command is MarkerRecorded ``name``, consume it and return its payload.

        How a local activity's recorded result comes back in replay (None: not recorded there).
        """
        cdef Event r
        if self._i < len(self._recorded):
            r = <Event>self._recorded[self._i]
            if r.type == codec.MARKER and r.name == name:
                self._i += 1
                return r.payload
        return None

    def mismatch(self, Event produced, object location):
        """The NonDeterminismError for ``produced`` not matching (call after ``matches`` said no)."""
        cdef list rest = self._recorded[self._i:]
        try:
            match_commands([produced], rest[:1], [location], self._workflow_type, self._marker)
        except NonDeterminismError as e:
            return e
        return NonDeterminismError(f"workflow {self._workflow_type!r}: unexpected command {describe(produced)}")

    cpdef finish(self):
        """Raise NonDeterminismError if recorded commands of this task were not asked for."""
        if self._i < len(self._recorded):
            match_commands([], self._recorded[self._i:], [], self._workflow_type, self._marker)


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
        activate(act[0])
        divergence = inst._divergence
        if divergence is not None:
            raise divergence
        matcher.finish()
        last = (<Event>recorded[len(recorded) - 1]).event_id if recorded else marker.event_id
    return last
