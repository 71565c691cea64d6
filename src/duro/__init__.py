"""duro: durable execution for Python — Temporal-style workflows, embedded on LMDB."""

from duro import testing as testing
from duro.activity import ActivityContext, ActivityInfo, RetryPolicy, activity
from duro.client import Client, WorkflowExecution, WorkflowHandle
from duro.converter import DataConverter, JsonConverter
from duro.errors import (
    ActivityError,
    ApplicationError,
    CancelledError,
    CorruptHistoryError,
    DuroError,
    NonDeterminismError,
    PayloadTooLargeError,
    StoreCorruptedError,
    StoreError,
    StoreFullError,
    StoreLimitError,
    StorePermissionError,
    StoreURLError,
    TerminatedError,
    TimeoutError,
    WorkflowAlreadyStartedError,
    WorkflowFailedError,
    WorkflowIOError,
    WorkflowNotFoundError,
)
from duro.history import History, HistoryEvent
from duro.saga import Saga, SagaError
from duro.worker import Worker
from duro.workflow import ExternalWorkflowHandle, WorkflowContext, WorkflowInfo, workflow

__version__ = "0.1.0"

__all__ = [
    "ActivityContext",
    "ActivityError",
    "ActivityInfo",
    "ApplicationError",
    "CancelledError",
    "Client",
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
    "StoreCorruptedError",
    "StoreError",
    "StoreFullError",
    "StoreLimitError",
    "StorePermissionError",
    "StoreURLError",
    "TerminatedError",
    "TimeoutError",
    "Worker",
    "WorkflowAlreadyStartedError",
    "WorkflowContext",
    "WorkflowExecution",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowIOError",
    "WorkflowInfo",
    "WorkflowNotFoundError",
    "activity",
    "testing",
    "workflow",
]
