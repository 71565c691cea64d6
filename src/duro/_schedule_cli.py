r"""``duro schedule ...``: the schedule subcommands of the ``duro`` command (``duro.cli`` wires them in).

::

    duro [--store URL] schedule list [--json]
    duro [--store URL] schedule describe ID [--json]
    duro [--store URL] schedule create ID TYPE [JSON_ARG ...] --task-queue Q (--cron EXPR | --every SECONDS)
                                       [--overlap P] [--jitter SECONDS] [--start-at T] [--end-at T]
                                       [--time-zone TZ] [--paused] [--note TEXT]
    duro [--store URL] schedule pause ID [--note TEXT]
    duro [--store URL] schedule unpause ID [--note TEXT]
    duro [--store URL] schedule trigger ID [--overlap P] [--json]
    duro [--store URL] schedule backfill ID --start T --end T [--overlap P] [--json]
    duro [--store URL] schedule delete ID

Exit status as for every ``duro`` command (``duro.cli.ExitCode``): 2 for bad input (a malformed cron
expression, an interval that is not positive, end before start...), 1 when the operation failed (an
unknown schedule id, an id that exists already). ``--json`` prints one JSON object: ``list`` gives
``{"items": [...], "next_page_token": null}`` as ``duro list`` does, ``describe`` the schedule
(``schedule_dict``), ``trigger`` ``{"schedule_id", "workflow_id"}`` (null when the overlap policy
started nothing), ``backfill`` ``{"schedule_id", "workflow_ids"}``.
"""

from __future__ import annotations

import argparse
import datetime
from typing import TYPE_CHECKING, Any

from duro._cli_output import Output, to_json
from duro.errors import DuroError
from duro.schedules import OVERLAP_POLICIES, ScheduleDescription

if TYPE_CHECKING:
    from duro.cli import ExitCode
    from duro.client import Client

__all__ = ["add_schedule_parser", "run_schedule", "schedule_dict"]


def add_schedule_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``schedule`` and its subcommands to the ``duro`` parser's subparsers ``sub``."""
    from duro import cli

    name = cli._name
    p = sub.add_parser("schedule", parents=[common], help="create, look at and drive schedules",
                       description="Schedules start a workflow on a cron expression or at a fixed interval; a "
                       "worker of the schedule's task queue fires them.")
    ssub = p.add_subparsers(dest="schedule_command", metavar="SUBCOMMAND", required=True)

    s = ssub.add_parser("list", parents=[common], help="list the schedules")
    s.add_argument("--json", action="store_true", help='print {"items": [...], "next_page_token": null}')

    s = ssub.add_parser("describe", parents=[common], help="a schedule's spec, next runs and recent runs")
    s.add_argument("schedule_id", metavar="ID", type=name("schedule id"))
    s.add_argument("--json", action="store_true", help="print a JSON object")

    s = ssub.add_parser("create", parents=[common], help="create a schedule",
                        description="Create schedule ID that starts workflow TYPE (its registered name) with each "
                        "JSON_ARG as an argument, on a cron expression (UTC unless --time-zone) or every SECONDS.")
    s.add_argument("schedule_id", metavar="ID", type=name("schedule id"))
    s.add_argument("workflow_type", metavar="TYPE", type=name("workflow type"))
    s.add_argument("json_args", nargs="*", metavar="JSON_ARG")
    s.add_argument("--task-queue", required=True, metavar="Q", type=name("task queue"),
                   help="the task queue whose workers fire it and run its workflows")
    when = s.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="a cron expression, e.g. '0 3 * * *' (03:00 every day)")
    when.add_argument("--every", type=cli._seconds, metavar="SECONDS", help="an interval in seconds")
    s.add_argument("--overlap", choices=OVERLAP_POLICIES, default="skip",
                   help="what a fire does while a run it started is open (default skip)")
    s.add_argument("--jitter", type=cli._seconds, metavar="SECONDS", help="delay each fire by up to this")
    s.add_argument("--start-at", type=cli._when, metavar="TIME", help="no run before TIME (ISO 8601, UTC by default)")
    s.add_argument("--end-at", type=cli._when, metavar="TIME", help="no run after TIME")
    s.add_argument("--time-zone", metavar="TZ", help="the IANA time zone of the cron expression (default UTC)")
    s.add_argument("--paused", action="store_true", help="create it paused")
    s.add_argument("--note", default="", metavar="TEXT", help="a note shown by describe")

    for command, what in (("pause", "stop firing (runs already started go on)"),
                          ("unpause", "fire again, from the next due time after now")):
        s = ssub.add_parser(command, parents=[common], help=what)
        s.add_argument("schedule_id", metavar="ID", type=name("schedule id"))
        s.add_argument("--note", default="", metavar="TEXT", help="why (shown by describe)")

    s = ssub.add_parser("trigger", parents=[common], help="fire now, once, under the overlap policy",
                        description="Fire the schedule now, besides its due times. The schedule's overlap policy "
                        "applies unless --overlap names another (with 'skip', nothing starts while one of its runs "
                        "is open).")
    s.add_argument("schedule_id", metavar="ID", type=name("schedule id"))
    s.add_argument("--overlap", choices=OVERLAP_POLICIES, help="the policy for this fire (default: the schedule's)")
    s.add_argument("--json", action="store_true", help='print {"schedule_id", "workflow_id" (or null)}')

    s = ssub.add_parser("backfill", parents=[common], help="fire every due time of a past range",
                        description="Fire every due time of the schedule in [--start, --end), as if it had run then "
                        "(at most 1000); a time whose run exists is not started again.")
    s.add_argument("schedule_id", metavar="ID", type=name("schedule id"))
    s.add_argument("--start", required=True, type=cli._when, metavar="TIME", help="the first time (inclusive)")
    s.add_argument("--end", required=True, type=cli._when, metavar="TIME", help="the end (exclusive)")
    s.add_argument("--overlap", choices=OVERLAP_POLICIES, help="the policy for these fires (default: the schedule's)")
    s.add_argument("--json", action="store_true", help='print {"schedule_id", "workflow_ids"}')

    s = ssub.add_parser("delete", parents=[common], help="delete a schedule (its runs go on)")
    s.add_argument("schedule_id", metavar="ID", type=name("schedule id"))


def _utc(t: datetime.datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t is not None else "-"


def _spec_text(d: ScheduleDescription) -> str:
    spec = d.spec
    text = f"cron {spec.cron!r}" + (f" in {spec.time_zone}" if spec.time_zone else "") if spec.cron else (
        f"every {spec.every.total_seconds():g}s" if spec.every else "-")
    if spec.jitter:
        text += f", jitter {spec.jitter.total_seconds():g}s"
    return text


def schedule_dict(d: ScheduleDescription) -> dict[str, Any]:
    """A schedule as ``--json`` prints it (times ISO 8601 UTC, durations in seconds)."""
    spec = d.spec

    def iso(t: datetime.datetime | None) -> str | None:
        return t.isoformat() if t is not None else None

    return {
        "id": d.id, "workflow_type": d.workflow_type, "task_queue": d.task_queue, "args": d.args,
        "spec": {"cron": spec.cron, "every": spec.every.total_seconds() if spec.every else None,
                 "time_zone": spec.time_zone, "start_at": iso(spec.start_at), "end_at": iso(spec.end_at),
                 "jitter": spec.jitter.total_seconds() if spec.jitter else None},
        "overlap": d.overlap, "paused": d.paused, "note": d.note,
        "next_run_times": [iso(t) for t in d.next_run_times], "next_fire_time": iso(d.next_fire_time),
        "recent_runs": [{"scheduled_time": iso(a.scheduled_time), "started_at": iso(a.started_at),
                         "workflow_id": a.workflow_id, "run_id": a.run_id, "trigger": a.trigger}
                        for a in d.recent_runs],
        "running_workflow_ids": d.running_workflow_ids, "buffered": [iso(t) for t in d.buffered],
        "fired": d.fired_count, "skipped": d.skipped_count, "missed": d.missed_count,
        "created_at": iso(d.created_at), "updated_at": iso(d.updated_at),
    }


def _describe(out: Output, d: ScheduleDescription) -> None:
    fields = [("schedule", d.id), ("workflow", f"{d.workflow_type} {to_json(d.args)}"), ("task queue", d.task_queue),
              ("spec", _spec_text(d)), ("overlap", d.overlap),
              ("state", "paused" if d.paused else "active"), ("note", d.note or "-"),
              ("next runs", ", ".join(_utc(t) for t in d.next_run_times) or "-"),
              ("runs", f"{d.fired_count} started, {d.skipped_count} skipped, {d.missed_count} missed")]
    if d.spec.start_at or d.spec.end_at:
        fields.append(("window", f"{_utc(d.spec.start_at)} .. {_utc(d.spec.end_at)}"))
    if d.running_workflow_ids:
        fields.append(("open", ", ".join(d.running_workflow_ids)))
    if d.buffered:
        fields.append(("buffered", ", ".join(_utc(t) for t in d.buffered)))
    out.fields(fields, styled=("state",))
    if d.recent_runs:
        out.line("recent runs:", "bold")
        for a in d.recent_runs:
            out.line(f"  {_utc(a.scheduled_time)}  {a.workflow_id}  ({a.trigger})")


async def run_schedule(client: Client, args: argparse.Namespace) -> ExitCode:
    """Run one ``duro schedule`` subcommand; bad values the client refuses are bad input (exit 2)."""
    from duro import cli

    try:
        return await _run(client, args)
    except (ValueError, TypeError) as e:
        if isinstance(e, DuroError):
            raise  # a store's own error (a URL, a limit): main reports it as it does for every command
        raise cli.UsageError(str(e)) from None


async def _run(client: Client, args: argparse.Namespace) -> ExitCode:
    from duro.cli import ExitCode

    out: Output = args.output
    command = args.schedule_command
    if command == "list":
        found = await client.list_schedules()
        if args.json:
            out.json(to_json({"items": [schedule_dict(d) for d in found], "next_page_token": None}, indent=2))
        elif not found:
            out.line("no schedules")
        else:
            rows = [[d.id, d.workflow_type, d.task_queue, _spec_text(d), d.overlap, "paused" if d.paused else "active",
                     _utc(d.next_run_times[0] if d.next_run_times else None), str(d.fired_count)] for d in found]
            out.table(["schedule", "type", "task queue", "spec", "overlap", "state", "next run", "runs"], rows,
                      right=(7,), styled=(5,))
        return ExitCode.OK
    if command == "create":
        handle = await client.create_schedule(
            args.schedule_id, args.workflow_type, *args.values, task_queue=args.task_queue, cron=args.cron,
            every=args.every, overlap=args.overlap, jitter=args.jitter, start_at=args.start_at, end_at=args.end_at,
            time_zone=args.time_zone, paused=args.paused, note=args.note)
        desc = await handle.describe()
        first = desc.next_run_times[0] if desc.next_run_times else None
        out.line(f"created schedule {args.schedule_id!r}" + (" (paused)" if desc.paused else
                                                              f"; next run {_utc(first)}"))
        return ExitCode.OK
    handle = client.get_schedule_handle(args.schedule_id)
    if command == "describe":
        desc = await handle.describe()
        if args.json:
            out.json(to_json(schedule_dict(desc), indent=2))
        else:
            _describe(out, desc)
    elif command == "pause":
        await handle.pause(args.note)
        out.line(f"paused schedule {args.schedule_id!r}")
    elif command == "unpause":
        await handle.unpause(args.note)
        out.line(f"unpaused schedule {args.schedule_id!r}")
    elif command == "trigger":
        started = await handle.trigger(overlap=args.overlap)
        if args.json:
            out.json(to_json({"schedule_id": args.schedule_id, "workflow_id": started or None}, indent=2))
        else:
            out.line(f"started workflow {started}" if started else
                     f"schedule {args.schedule_id!r} started nothing now: a run of it is open and its overlap "
                     "policy skips or buffers (pass --overlap allow_all to start one anyway)")
    elif command == "backfill":
        ids = await handle.backfill(args.start, args.end, overlap=args.overlap)
        if args.json:
            out.json(to_json({"schedule_id": args.schedule_id, "workflow_ids": list(ids)}, indent=2))
        else:
            out.line(f"started {len(ids)} run(s)" + (": " + ", ".join(ids) if ids else ""))
    else:
        await handle.delete()
        out.line(f"deleted schedule {args.schedule_id!r}")
    return ExitCode.OK
