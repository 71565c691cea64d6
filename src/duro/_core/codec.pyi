"""Binary encoding of workflow history events (the on-disk envelope, version 1)."""

from typing import Final, final

from typing_extensions import Buffer

VERSION: Final[int]
HEADER_SIZE: Final[int]
CYTHON_VERSION: Final[str]

WORKFLOW_STARTED: Final[int]
WORKFLOW_TASK_COMPLETED: Final[int]
WORKFLOW_TASK_FAILED: Final[int]
WORKFLOW_COMPLETED: Final[int]
WORKFLOW_FAILED: Final[int]
WORKFLOW_TERMINATED: Final[int]
WORKFLOW_CANCEL_REQUESTED: Final[int]
WORKFLOW_CANCELED: Final[int]
WORKFLOW_CONTINUED_AS_NEW: Final[int]
WORKFLOW_TIMED_OUT: Final[int]
ACTIVITY_SCHEDULED: Final[int]
ACTIVITY_COMPLETED: Final[int]
ACTIVITY_FAILED: Final[int]
ACTIVITY_CANCEL_REQUESTED: Final[int]
ACTIVITY_CANCELED: Final[int]
TIMER_STARTED: Final[int]
TIMER_FIRED: Final[int]
TIMER_CANCELED: Final[int]
SIGNAL_RECEIVED: Final[int]
UPDATE_ACCEPTED: Final[int]
UPDATE_COMPLETED: Final[int]
CHILD_STARTED: Final[int]
CHILD_COMPLETED: Final[int]
CHILD_FAILED: Final[int]
EXTERNAL_SIGNAL: Final[int]
EXTERNAL_CANCEL: Final[int]
CHILD_CANCELED: Final[int]
MARKER: Final[int]

EVENT_NAMES: Final[dict[int, str]]

@final
class Event:
    """One immutable entry of a workflow run's history."""

    def __init__(
        self,
        type: int,
        event_id: int,
        timestamp_us: int,
        ref: int = 0,
        attempt: int = 0,
        name: str = "",
        payload: bytes = b"",
        flags: int = 0,
    ) -> None: ...
    @property
    def type(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def event_id(self) -> int: ...
    @property
    def timestamp_us(self) -> int: ...
    @property
    def ref(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def type_name(self) -> str: ...
    @property
    def timestamp(self) -> float: ...
    def encode(self) -> bytes: ...
    def with_id(self, event_id: int) -> Event: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

def encode_event(
    type: int,
    event_id: int,
    timestamp_us: int,
    ref: int,
    attempt: int,
    name: str,
    payload: bytes,
) -> bytes: ...
def decode_event(buffer: Buffer) -> Event: ...
