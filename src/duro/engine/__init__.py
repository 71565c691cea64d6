"""The run state machine, written once for every store.

``records`` holds the typed records a store keeps, ``effects`` what a transition asks the store to
do after its commit is durable, ``tx`` the small transaction interface a store gives the machine,
and ``machine`` the transitions themselves: start, signal, cancel, terminate, workflow-task
completion and failure, activity completion with retries, heartbeats, lease take-over, timers,
children and parent-close policies, continue-as-new and id reuse.
"""
