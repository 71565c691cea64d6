"""Binary encoding of workflow history events (the on-disk envelope, version 1)."""

# Envelope, version 1. Every integer is little-endian; the header is 38 bytes and unaligned reads
# are fine because fields are assembled byte by byte (compilers fold this into single loads/stores).
#
#   off  size  field
#     0  u8    version (= 1)
#     1  u8    event type (any 0..255; unknown types decode for forward compatibility)
#     2  u16   flags (reserved: encoded as 0 by encode_event, kept as-is by decode)
#     4  u32   attempt
#     8  u64   event_id
#    16  i64   timestamp, microseconds since the Unix epoch (UTC)
#    24  u64   ref (activity/timer/child sequence number; for WorkflowTaskCompleted the id of the
#              last input event processed)
#    32  u16   name_len
#    34  u32   payload_len
#    38  name (UTF-8, name_len bytes), then payload (payload_len bytes, opaque)
#
# A valid envelope is exactly 38 + name_len + payload_len bytes long.
#
# Every function here holds the GIL: encoding and decoding build Python objects, and each call is
# far shorter than the cost of releasing and re-taking it.

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.long cimport PyLong_Check
from cpython.number cimport PyNumber_Index
from cpython.unicode cimport PyUnicode_Check, PyUnicode_CheckExact
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from duro.errors import CorruptHistoryError


cdef extern from "Python.h":
    # Declared here without an exception clause so that the callers below decide what an
    # overflow means (a ValueError naming the field) instead of Cython raising OverflowError.
    unsigned long long PyLong_AsUnsignedLongLong(object value)
    long long PyLong_AsLongLong(object value)
    # Returns the str's cached UTF-8 form: no copy for ASCII strings, one cached copy otherwise.
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    # Re-declared with const sources: both copy `size` bytes from `data`.
    bytes PyBytes_FromStringAndSize(const char* data, Py_ssize_t size)
    str PyUnicode_DecodeUTF8(const char* data, Py_ssize_t size, const char* errors)
    # Returns an exact str with the contents of a str subclass instance.
    str PyUnicode_FromObject(object text)


cdef enum:
    _VERSION = 1
    _HEADER_SIZE = 38
    _MAX_NAME_LEN = 0xFFFF

cdef uint64_t _MAX_U64 = 0xFFFFFFFFFFFFFFFFULL
cdef uint64_t _MAX_U32 = 0xFFFFFFFFULL

VERSION = _VERSION
HEADER_SIZE = _HEADER_SIZE
# The Cython release this module was compiled with (fixed at compile time).
CYTHON_VERSION = cython.__version__

WORKFLOW_STARTED = EV_WORKFLOW_STARTED
WORKFLOW_TASK_COMPLETED = EV_WORKFLOW_TASK_COMPLETED
WORKFLOW_TASK_FAILED = EV_WORKFLOW_TASK_FAILED
WORKFLOW_COMPLETED = EV_WORKFLOW_COMPLETED
WORKFLOW_FAILED = EV_WORKFLOW_FAILED
WORKFLOW_TERMINATED = EV_WORKFLOW_TERMINATED
WORKFLOW_CANCEL_REQUESTED = EV_WORKFLOW_CANCEL_REQUESTED
WORKFLOW_CANCELED = EV_WORKFLOW_CANCELED
WORKFLOW_CONTINUED_AS_NEW = EV_WORKFLOW_CONTINUED_AS_NEW
WORKFLOW_TIMED_OUT = EV_WORKFLOW_TIMED_OUT
ACTIVITY_SCHEDULED = EV_ACTIVITY_SCHEDULED
ACTIVITY_COMPLETED = EV_ACTIVITY_COMPLETED
ACTIVITY_FAILED = EV_ACTIVITY_FAILED
ACTIVITY_CANCEL_REQUESTED = EV_ACTIVITY_CANCEL_REQUESTED
ACTIVITY_CANCELED = EV_ACTIVITY_CANCELED
TIMER_STARTED = EV_TIMER_STARTED
TIMER_FIRED = EV_TIMER_FIRED
TIMER_CANCELED = EV_TIMER_CANCELED
SIGNAL_RECEIVED = EV_SIGNAL_RECEIVED
UPDATE_ACCEPTED = EV_UPDATE_ACCEPTED
UPDATE_COMPLETED = EV_UPDATE_COMPLETED
CHILD_STARTED = EV_CHILD_STARTED
CHILD_COMPLETED = EV_CHILD_COMPLETED
CHILD_FAILED = EV_CHILD_FAILED
EXTERNAL_SIGNAL = EV_EXTERNAL_SIGNAL
EXTERNAL_CANCEL = EV_EXTERNAL_CANCEL
CHILD_CANCELED = EV_CHILD_CANCELED
MARKER = EV_MARKER

EVENT_NAMES = {
    EV_WORKFLOW_STARTED: "WorkflowExecutionStarted",
    EV_WORKFLOW_TASK_COMPLETED: "WorkflowTaskCompleted",
    EV_WORKFLOW_TASK_FAILED: "WorkflowTaskFailed",
    EV_WORKFLOW_COMPLETED: "WorkflowExecutionCompleted",
    EV_WORKFLOW_FAILED: "WorkflowExecutionFailed",
    EV_WORKFLOW_TERMINATED: "WorkflowExecutionTerminated",
    EV_WORKFLOW_CANCEL_REQUESTED: "WorkflowExecutionCancelRequested",
    EV_WORKFLOW_CANCELED: "WorkflowExecutionCanceled",
    EV_WORKFLOW_CONTINUED_AS_NEW: "WorkflowExecutionContinuedAsNew",
    EV_WORKFLOW_TIMED_OUT: "WorkflowExecutionTimedOut",
    EV_ACTIVITY_SCHEDULED: "ActivityTaskScheduled",
    EV_ACTIVITY_COMPLETED: "ActivityTaskCompleted",
    EV_ACTIVITY_FAILED: "ActivityTaskFailed",
    EV_ACTIVITY_CANCEL_REQUESTED: "ActivityTaskCancelRequested",
    EV_ACTIVITY_CANCELED: "ActivityTaskCanceled",
    EV_TIMER_STARTED: "TimerStarted",
    EV_TIMER_FIRED: "TimerFired",
    EV_TIMER_CANCELED: "TimerCanceled",
    EV_SIGNAL_RECEIVED: "WorkflowExecutionSignaled",
    EV_UPDATE_ACCEPTED: "WorkflowExecutionUpdateAccepted",
    EV_UPDATE_COMPLETED: "WorkflowExecutionUpdateCompleted",
    EV_CHILD_STARTED: "StartChildWorkflowExecutionInitiated",
    EV_CHILD_COMPLETED: "ChildWorkflowExecutionCompleted",
    EV_CHILD_FAILED: "ChildWorkflowExecutionFailed",
    EV_EXTERNAL_SIGNAL: "SignalExternalWorkflowExecutionInitiated",
    EV_EXTERNAL_CANCEL: "RequestCancelExternalWorkflowExecutionInitiated",
    EV_CHILD_CANCELED: "ChildWorkflowExecutionCanceled",
    EV_MARKER: "MarkerRecorded",
}


# ---- little-endian loads and stores (p may be unaligned) ----

cdef inline uint16_t _load16(const unsigned char* p) noexcept nogil:
    return <uint16_t>p[0] | (<uint16_t>p[1] << 8)

cdef inline uint32_t _load32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
            | (<uint32_t>p[3] << 24))

cdef inline uint64_t _load64(const unsigned char* p) noexcept nogil:
    return <uint64_t>_load32(p) | (<uint64_t>_load32(p + 4) << 32)

cdef inline void _store16(unsigned char* p, uint16_t v) noexcept nogil:
    p[0] = <unsigned char>v
    p[1] = <unsigned char>(v >> 8)

cdef inline void _store32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>v
    p[1] = <unsigned char>(v >> 8)
    p[2] = <unsigned char>(v >> 16)
    p[3] = <unsigned char>(v >> 24)

cdef inline void _store64(unsigned char* p, uint64_t v) noexcept nogil:
    _store32(p, <uint32_t>v)
    _store32(p + 4, <uint32_t>(v >> 32))


# ---- argument validation: clear ValueError/TypeError instead of OverflowError ----

cdef object _as_int(object value, str what):
    """Accept int-like objects (with __index__, e.g. numpy integers); reject floats and the rest."""
    try:
        return PyNumber_Index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None


cdef uint64_t _to_uint(object value, uint64_t maximum, str what) except? 0xFFFFFFFFFFFFFFFFULL:
    """Convert a Python int to an unsigned C integer in 0..maximum or raise naming the field."""
    cdef uint64_t result
    if not PyLong_Check(value):
        value = _as_int(value, what)
    result = PyLong_AsUnsignedLongLong(value)
    if result == _MAX_U64 and PyErr_Occurred() != NULL:
        PyErr_Clear()
        if value < 0:
            raise ValueError(f"{what} must not be negative, got {value}")
        raise ValueError(f"{what} must be at most {maximum}, got {value}")
    if result > maximum:
        raise ValueError(f"{what} must be at most {maximum}, got {value}")
    return result


cdef int64_t _to_timestamp(object value) except? -1:
    """Convert a Python int to a signed 64-bit microsecond timestamp or raise."""
    cdef int64_t result
    if not PyLong_Check(value):
        value = _as_int(value, "timestamp_us")
    result = PyLong_AsLongLong(value)
    if result == -1 and PyErr_Occurred() != NULL:
        PyErr_Clear()
        raise ValueError(f"timestamp_us must fit in a signed 64-bit integer, got {value}")
    return result


cdef const char* _utf8_name(object name, Py_ssize_t* size) except NULL:
    """Return the UTF-8 bytes of an event name (owned by the str) after checking type and length."""
    cdef const char* utf8
    if not PyUnicode_Check(name):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    utf8 = PyUnicode_AsUTF8AndSize(name, size)
    if size[0] > _MAX_NAME_LEN:
        raise ValueError(f"name must be at most {_MAX_NAME_LEN} bytes as UTF-8, got {size[0]}")
    return utf8


cdef int _check_payload(object payload) except -1:
    """Check that a payload is bytes (or a bytes subclass) of at most 2**32-1 bytes."""
    if not PyBytes_Check(payload):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    if <uint64_t>PyBytes_GET_SIZE(payload) > _MAX_U32:
        raise ValueError(f"payload must be at most {_MAX_U32} bytes, got {PyBytes_GET_SIZE(payload)}")
    return 0


# ---- encoding ----

cdef bytes _pack(int type_, int flags, uint32_t attempt, uint64_t event_id, int64_t timestamp_us,
                 uint64_t ref, const char* name, Py_ssize_t name_len, object payload):
    """Build the envelope as one bytes object from validated fields (payload is a bytes instance)."""
    cdef Py_ssize_t payload_len = PyBytes_GET_SIZE(payload)
    # The bytes object is created uninitialised and filled before anyone else can see it.
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _HEADER_SIZE + name_len + payload_len)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    p[0] = _VERSION
    p[1] = <unsigned char>type_
    _store16(p + 2, <uint16_t>flags)
    _store32(p + 4, attempt)
    _store64(p + 8, event_id)
    _store64(p + 16, <uint64_t>timestamp_us)
    _store64(p + 24, ref)
    _store16(p + 32, <uint16_t>name_len)
    _store32(p + 34, <uint32_t>payload_len)
    if name_len:
        memcpy(p + _HEADER_SIZE, name, name_len)
    if payload_len:
        memcpy(p + _HEADER_SIZE + name_len, PyBytes_AS_STRING(payload), payload_len)
    return out


def encode_event(type, event_id, timestamp_us, ref, attempt, name, payload):
    """Encode one event straight from its fields, without building an Event.

    Args:
        type: event type number, 0..255 (see the module constants).
        event_id: the event's id within its run, 0..2**64-1.
        timestamp_us: microseconds since the Unix epoch (UTC), signed 64-bit.
        ref: what the event refers to (activity/timer/child sequence number), 0..2**64-1.
        attempt: attempt number, 0..2**32-1.
        name: a str of at most 65535 bytes once encoded as UTF-8.
        payload: opaque bytes, at most 2**32-1 of them.

    Returns:
        The version-1 envelope, with flags 0.

    Raises:
        TypeError: a field has the wrong type (payload must be bytes, name a str, ints ints).
        ValueError: a field is out of range.
    """
    cdef uint64_t type_ = _to_uint(type, 0xFF, "event type")
    cdef uint64_t id_ = _to_uint(event_id, _MAX_U64, "event_id")
    cdef int64_t ts = _to_timestamp(timestamp_us)
    cdef uint64_t ref_ = _to_uint(ref, _MAX_U64, "ref")
    cdef uint64_t attempt_ = _to_uint(attempt, _MAX_U32, "attempt")
    cdef Py_ssize_t name_len
    cdef const char* name_utf8 = _utf8_name(name, &name_len)
    _check_payload(payload)
    return _pack(<int>type_, 0, <uint32_t>attempt_, id_, ts, ref_, name_utf8, name_len, payload)


# ---- decoding ----

cdef Event event_from_buffer(const unsigned char* data, Py_ssize_t size):
    cdef uint64_t name_len, payload_len, expected
    cdef Event event
    if size < 1:
        raise CorruptHistoryError("empty event envelope (0 bytes)")
    if data[0] != _VERSION:
        raise CorruptHistoryError(
            f"unsupported event envelope version {data[0]} (this build reads version {_VERSION})"
        )
    if size < _HEADER_SIZE:
        raise CorruptHistoryError(
            f"truncated event envelope: expected at least {_HEADER_SIZE} header bytes, got {size}"
        )
    name_len = _load16(data + 32)
    payload_len = _load32(data + 34)
    expected = _HEADER_SIZE + name_len + payload_len
    if expected != <uint64_t>size:
        raise CorruptHistoryError(
            f"event envelope length mismatch: expected {expected} bytes ({_HEADER_SIZE} header + "
            f"{name_len} name + {payload_len} payload), got {size}"
        )
    event = Event.__new__(Event)
    event.type = data[1]
    event.flags = _load16(data + 2)
    event.attempt = _load32(data + 4)
    event.event_id = _load64(data + 8)
    event.timestamp_us = <int64_t>_load64(data + 16)
    event.ref = _load64(data + 24)
    if name_len == 0:
        event.name = ""
    else:
        try:
            event.name = PyUnicode_DecodeUTF8(<const char*>data + _HEADER_SIZE, name_len, NULL)
        except UnicodeDecodeError as exc:
            raise CorruptHistoryError(f"event name is not valid UTF-8: {exc}") from exc
    event.payload = PyBytes_FromStringAndSize(<const char*>data + _HEADER_SIZE + name_len, payload_len)
    return event


cpdef Event decode_event(object buffer):
    """Decode one envelope from bytes, a bytearray or a memoryview (e.g. straight from LMDB's map).

    The buffer is read in place; only the name (str) and payload (bytes) are copied out, so the
    returned Event stays valid after the buffer is released.

    Args:
        buffer: any object exporting a contiguous buffer holding exactly one envelope.

    Returns:
        The decoded Event; unknown event types decode too.

    Raises:
        CorruptHistoryError: the bytes are truncated, too long, of another version, or the name is
            not valid UTF-8.
        TypeError: ``buffer`` does not support the buffer protocol.
    """
    cdef Py_buffer view
    if PyBytes_CheckExact(buffer):
        return event_from_buffer(<const unsigned char*>PyBytes_AS_STRING(buffer),
                                 PyBytes_GET_SIZE(buffer))
    PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    try:
        return event_from_buffer(<const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


# ---- the event ----

@cython.final
@cython.freelist(32)
cdef class Event:
    """One immutable entry of a workflow run's history.

    Args:
        type: event type number, 0..255 (see the module constants).
        event_id: the event's id within its run (ids start at 1), 0..2**64-1.
        timestamp_us: microseconds since the Unix epoch (UTC), signed 64-bit.
        ref: what the event refers to: an activity/timer/child sequence number, or for
            WorkflowTaskCompleted the id of the last input event processed.
        attempt: attempt number (activities), 0..2**32-1.
        name: activity/timer/signal/marker name; at most 65535 bytes as UTF-8.
        payload: opaque bytes (arguments, result or failure, as the converter encoded them).
        flags: reserved, 0..65535.

    Raises:
        TypeError: a field has the wrong type (payload must be bytes, name a str, ints ints).
        ValueError: a field is out of range.
    """

    def __init__(self, type, event_id, timestamp_us, ref=0, attempt=0, name="", payload=b"", flags=0):
        cdef Py_ssize_t name_len
        self.type = <int>_to_uint(type, 0xFF, "event type")
        self.event_id = _to_uint(event_id, _MAX_U64, "event_id")
        self.timestamp_us = _to_timestamp(timestamp_us)
        self.ref = _to_uint(ref, _MAX_U64, "ref")
        self.attempt = <uint32_t>_to_uint(attempt, _MAX_U32, "attempt")
        _utf8_name(name, &name_len)
        _check_payload(payload)
        # The attributes hold exact str/bytes: subclasses (a StrEnum member, say) are copied.
        self.name = name if PyUnicode_CheckExact(name) else PyUnicode_FromObject(name)
        self.payload = (payload if PyBytes_CheckExact(payload)
                        else PyBytes_FromStringAndSize(PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload)))
        self.flags = <int>_to_uint(flags, 0xFFFF, "flags")

    cpdef bytes encode(self):
        """Return the version-1 envelope of this event (flags included)."""
        cdef Py_ssize_t name_len
        cdef const char* name_utf8 = PyUnicode_AsUTF8AndSize(self.name, &name_len)
        return _pack(self.type, self.flags, self.attempt, self.event_id, self.timestamp_us,
                     self.ref, name_utf8, name_len, self.payload)

    def with_id(self, event_id):
        """Return a copy of this event carrying another id (the store assigns ids at commit).

        Args:
            event_id: the new id, 0..2**64-1.

        Returns:
            A new Event equal to this one except for ``event_id``.
        """
        cdef Event copy = Event.__new__(Event)
        copy.event_id = _to_uint(event_id, _MAX_U64, "event_id")
        copy.type = self.type
        copy.flags = self.flags
        copy.attempt = self.attempt
        copy.timestamp_us = self.timestamp_us
        copy.ref = self.ref
        copy.name = self.name
        copy.payload = self.payload
        return copy

    @property
    def type_name(self):
        """The readable (Temporal-style) name of the type, or ``Unknown(N)`` for unknown types."""
        name = EVENT_NAMES.get(self.type)
        return name if name is not None else f"Unknown({self.type})"

    @property
    def timestamp(self):
        """The timestamp in seconds since the Unix epoch, as a float."""
        return <double>self.timestamp_us / 1e6

    def __eq__(self, other):
        if not isinstance(other, Event):
            return NotImplemented
        cdef Event o = <Event>other
        return (self.type == o.type and self.event_id == o.event_id
                and self.timestamp_us == o.timestamp_us and self.ref == o.ref
                and self.attempt == o.attempt and self.flags == o.flags
                and self.name == o.name and self.payload == o.payload)

    def __hash__(self):
        return hash((self.type, self.event_id, self.timestamp_us, self.ref, self.attempt,
                     self.flags, self.name, self.payload))

    def __repr__(self):
        flags = f" flags={self.flags:#06x}" if self.flags else ""
        return (f"Event({self.type_name} id={self.event_id} ref={self.ref} attempt={self.attempt} "
                f"name={self.name!r} payload={len(self.payload)}B{flags})")

    def __reduce__(self):
        return (Event, (self.type, self.event_id, self.timestamp_us, self.ref, self.attempt,
                        self.name, self.payload, self.flags))
