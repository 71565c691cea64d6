"""duro: durable execution for Python — Temporal-style workflows, embedded on LMDB."""

from importlib import metadata as _metadata

from duro import testing as testing
from duro._async_completion import AsyncActivityHandle, CompleteAsync
from duro.activity import ActivityContext, ActivityInfo, RetryPolicy, activity
from duro.client import Client, WorkflowExecution, WorkflowHandle, WorkflowUpdateHandle, WorkflowUpdateStage
from duro.converter import DataConverter, JsonConverter
from duro.engine.records import VersioningBehavior
from duro.errors import (
    ActivityError,
    ApplicationError,
    CancelledError,
    CorruptHistoryError,
    DuroError,
    NonDeterminismError,
    PayloadTooLargeError,
    ScheduleAlreadyExistsError,
    ScheduleNotFoundError,
    StoreCorruptedError,
    StoreError,
    StoreFullError,
    StoreLimitError,
    StorePermissionError,
    StoreURLError,
    TaskTokenError,
    TerminatedError,
    TimeoutError,
    WorkflowAlreadyStartedError,
    WorkflowClosedError,
    WorkflowFailedError,
    WorkflowIOError,
    WorkflowNotFoundError,
)
from duro.history import History, HistoryEvent
from duro.saga import Saga, SagaError
from duro.schedules import ScheduleAction, ScheduleDescription, ScheduleHandle, ScheduleSpec
from duro.worker import Worker
from duro.workflow import ExternalWorkflowHandle, WorkflowContext, WorkflowInfo, workflow

try:  # the one version source is pyproject.toml, read back from the installed distribution's metadata
    __version__: str = _metadata.version("duro")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed (no metadata)
    __version__ = "0+unknown"

__all__ = [
    "ActivityContext",
    "ActivityError",
    "ActivityInfo",
    "ApplicationError",
    "AsyncActivityHandle",
    "CancelledError",
    "Client",
    "CompleteAsync",
    "CorruptHistoryError",
    "DataConverter",
    "DuroError",
    "ExternalWorkflowHandle",
    "History",
    "HistoryEvent",
    "JsonConverter",
    "NonDeterminismError",
    "PayloadTooLargeError",
    "RetryPolicy",
    "Saga",
    "SagaError",
    "ScheduleAction",
    "ScheduleAlreadyExistsError",
    "ScheduleDescription",
    "ScheduleHandle",
    "ScheduleNotFoundError",
    "ScheduleSpec",
    "StoreCorruptedError",
    "StoreError",
    "StoreFullError",
    "StoreLimitError",
    "StorePermissionError",
    "StoreURLError",
    "TaskTokenError",
    "TerminatedError",
    "TimeoutError",
    "VersioningBehavior",
    "Worker",
    "WorkflowAlreadyStartedError",
    "WorkflowClosedError",
    "WorkflowContext",
    "WorkflowExecution",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowIOError",
    "WorkflowInfo",
    "WorkflowNotFoundError",
    "WorkflowUpdateHandle",
    "WorkflowUpdateStage",
    "activity",
    "testing",
    "workflow",
]
