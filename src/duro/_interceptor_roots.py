"""The innermost links of a workflow's interceptor chains: what the instance does without interceptors."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from duro.interceptor import (
    ExecuteWorkflowInput,
    HandleQueryInput,
    HandleSignalInput,
    HandleUpdateInput,
    SignalExternalWorkflowInput,
    StartActivityInput,
    StartChildWorkflowInput,
    WorkflowInboundInterceptor,
    WorkflowOutboundInterceptor,
)

if TYPE_CHECKING:
    from duro._child import ChildWorkflowHandle
    from duro._instance import WorkflowInstance
    from duro.workflow import WorkflowContext

__all__ = ["InboundRoot", "OutboundRoot"]


class _OnInstance:
    """A root link: it acts on its workflow instance, and its ``ctx`` is the instance's."""

    def __init__(self, inst: WorkflowInstance) -> None:
        self._inst = inst

    @property
    def ctx(self) -> WorkflowContext:
        return self._inst.ctx


class InboundRoot(_OnInstance, WorkflowInboundInterceptor):
    """The innermost inbound link: what the instance does without interceptors."""

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        self._inst._outbound = outbound

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        return await input.fn(self._inst.ctx, *input.args)

    def handle_signal(self, input: HandleSignalInput) -> None:
        self._inst._deliver_signal(input.signal, input.args)

    def handle_query(self, input: HandleQueryInput) -> Any:
        return self._inst._answer_query(input.query, input.args)

    def handle_update_validator(self, input: HandleUpdateInput) -> None:
        self._inst._validate_update(input.update, input.args)

    async def handle_update(self, input: HandleUpdateInput) -> Any:
        return await self._inst._call_update(input.update, input.args)


class OutboundRoot(_OnInstance, WorkflowOutboundInterceptor):
    """The innermost outbound link: records the commands, headers included."""

    def start_activity(self, input: StartActivityInput) -> asyncio.Future[Any]:
        return self._inst.schedule_activity(
            input.activity, input.args, input.start_to_close_timeout, input.schedule_to_close_timeout,
            input.heartbeat_timeout, input.retry_policy, input.task_queue, input.headers, input.result_type,
            input.cancellation_type)

    def start_child_workflow(self, input: StartChildWorkflowInput) -> ChildWorkflowHandle:
        return self._inst.start_child(input.workflow, input.args, input.id, input.task_queue,
                                      input.parent_close_policy, input.headers, input.result_type)

    def signal_external_workflow(self, input: SignalExternalWorkflowInput) -> None:
        self._inst.request_external("signal", input.workflow_id, input.run_id, input.signal, input.args,
                                    input.headers)
