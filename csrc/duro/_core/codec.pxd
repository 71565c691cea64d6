# C-level interface of duro._core.codec, cimported by log.pyx and replay.pyx.

# Event type numbers. The single source of truth: codec.pyx re-exports each one as a Python int
# without the EV_ prefix. On disk a type is one byte, so any value in 0..255 is valid and types this
# build does not know still decode (forward compatibility).
cdef enum EventType:
    EV_WORKFLOW_STARTED = 1
    EV_WORKFLOW_TASK_COMPLETED = 2
    EV_WORKFLOW_COMPLETED = 3
    EV_WORKFLOW_FAILED = 4
    EV_WORKFLOW_TERMINATED = 5
    EV_WORKFLOW_CANCEL_REQUESTED = 6
    EV_WORKFLOW_CANCELED = 7
    EV_WORKFLOW_CONTINUED_AS_NEW = 8
    EV_WORKFLOW_TIMED_OUT = 9
    EV_ACTIVITY_SCHEDULED = 10
    EV_ACTIVITY_COMPLETED = 11
    EV_ACTIVITY_FAILED = 12
    EV_ACTIVITY_CANCEL_REQUESTED = 13
    EV_ACTIVITY_CANCELED = 14
    EV_WORKFLOW_TASK_FAILED = 15
    EV_TIMER_STARTED = 20
    EV_TIMER_FIRED = 21
    EV_TIMER_CANCELED = 22
    EV_SIGNAL_RECEIVED = 30
    EV_UPDATE_ACCEPTED = 31
    EV_UPDATE_COMPLETED = 32
    EV_CHILD_STARTED = 40
    EV_CHILD_COMPLETED = 41
    EV_CHILD_FAILED = 42
    EV_EXTERNAL_SIGNAL = 43
    # Added in 0.2: before them a cancel request to another run was an EV_EXTERNAL_SIGNAL with
    # flags bit 0 set, and a child that ended cancelled an EV_CHILD_FAILED named "canceled";
    # replay accepts those older forms (replay.pyx).
    EV_EXTERNAL_CANCEL = 44
    EV_CHILD_CANCELED = 45
    EV_MARKER = 50


cdef class Event:
    # Immutable: every field is set once, by __init__, event_from_buffer or with_id.
    cdef readonly int type                  # u8 on disk
    cdef readonly int flags                 # u16 on disk, reserved
    cdef readonly unsigned int attempt      # u32 on disk
    cdef readonly unsigned long long event_id
    cdef readonly long long timestamp_us    # microseconds since the Unix epoch, UTC
    cdef readonly unsigned long long ref
    cdef readonly str name                  # at most 65535 bytes once encoded as UTF-8
    cdef readonly bytes payload             # opaque, at most 2**32 - 1 bytes

    cpdef bytes encode(self)


# Decode one envelope from the `size` bytes at `data`. The caller keeps that memory alive for the
# duration of the call only: the returned Event owns copies of the name and payload and never
# points into `data`. Raises CorruptHistoryError for anything that is not a valid version-1
# envelope. Holds the GIL (it builds Python objects).
cdef Event event_from_buffer(const unsigned char* data, Py_ssize_t size)

cpdef Event decode_event(object buffer)
