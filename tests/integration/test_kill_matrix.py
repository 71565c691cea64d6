"""The kill -9 matrix (``killmatrix.py``) at a small scale: nothing acknowledged is lost, nothing runs twice.

Two rounds of random SIGKILLs of worker and client processes under load on one LMDB store on disk,
then every acknowledged start, history and activity execution is checked. ``make soak`` runs the
same matrix for as long as asked. A second part proves the checker itself catches what it counts:
the same store checked again, with a forged re-run and a forged acknowledgement of a missing run.
A smaller matrix (one round, three workers) runs the same way on a PostgreSQL schema.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import pytest

import duro
from tests.integration.killmatrix import FAILURE_COUNTS, Config, KillMatrix, Report
from tests.integration.pg_open_runs import open_runs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def _assert_clean(report: Report) -> str:
    """Assert that no failure count is set; return the report as JSON (for further messages)."""
    doc = asdict(report)
    problems = "\n".join(doc.pop("problems"))
    summary = json.dumps(doc)
    assert not report.aborted, f"{report.aborted}\n{summary}"
    assert {name: doc[name] for name in FAILURE_COUNTS} == dict.fromkeys(FAILURE_COUNTS, 0), \
        f"{summary}\n{problems}"
    return summary


async def test_kill_matrix_on_postgres(pg_url: str, tmp_path: Path) -> None:
    """The same matrix on a PostgreSQL schema, at a smaller scale (one round) to keep the file short."""
    # A drain normally takes about a second; 20 s (not 60) keeps the file short when a run is stuck.
    cfg = Config(store=f"{pg_url}&lease_s=5", rounds=1, seconds=8.0, workers=3, clients=2, rate=30.0,
                 kill_delay=(0.2, 1.2), drain_timeout=20.0, work_dir=str(tmp_path / "km"))
    matrix = KillMatrix(cfg)
    try:
        report = await matrix.run()
    finally:
        matrix.kill_everything()
    assert all(p.proc.returncode is not None for p in matrix.all_procs)
    if report.lost and not report.aborted:
        async with duro.Client.connect(cfg.store) as client:
            without_task, others = await open_runs(client, cfg.store)
        report.problems.append(f"open runs with no task after a recorded activity result: {without_task[:5]}; "
                               f"others: {others[:5]}")
    summary = _assert_clean(report)
    assert report.rounds == 1
    assert report.worker_kills >= 1 and report.client_kills >= 1, summary
    assert report.acknowledged > 30 and report.completed == report.acknowledged, summary
    assert report.activity_attempts >= 4 * report.completed, summary


async def test_kill_matrix_loses_nothing_and_reruns_nothing(tmp_path: Path) -> None:
    cfg = Config(store=f"lmdb://{tmp_path / 'store'}", rounds=2, seconds=14.0, workers=2, clients=2, rate=30.0,
                 kill_delay=(0.2, 1.2), drain_timeout=60.0, work_dir=str(tmp_path / "km"))
    matrix = KillMatrix(cfg)
    try:
        report = await matrix.run()
    finally:
        matrix.kill_everything()  # run() does too; whatever happened, no process outlives the test
    assert all(p.proc.returncode is not None for p in matrix.all_procs)

    summary = _assert_clean(report)
    assert report.rounds == 2
    assert report.worker_kills >= 1 and report.client_kills >= 1, summary
    assert report.acknowledged > 50 and report.completed == report.acknowledged, summary
    # Every completed activity was executed (and logged) at least once per run that completed.
    assert report.activity_attempts >= 4 * report.completed, summary

    # The checker sees what it counts: forge one re-run after a recorded completion, and one
    # acknowledgement of a run that is not in the store, then check the same store again.
    async with duro.Client.connect(cfg.store) as client:
        done = await client.list_workflows(status="completed", limit=1)
        history = await client.get_handle(done[0].workflow_id).fetch_history()
        completed = next(e for e in history if e.event_type == "ActivityTaskCompleted")
        late_us = time.time_ns() // 1000 + 1_000_000
        forged = (f"S {history.workflow_id} {history.run_id} {completed.ref} {completed.attempt} 0 "
                  f"{late_us} {os.getpid()}\n")
        (matrix.acts / "act-forged.log").write_text(forged)
        (matrix.acks / "forged.txt").write_text("A never-started-id run-x\n")
        matrix.report = Report()
        await matrix.check(client)
    assert matrix.report.rerun_after_recorded == 1, matrix.report.problems
    assert matrix.report.lost == 1, matrix.report.problems
    assert matrix.report.duplicated == matrix.report.wrong_results == 0, matrix.report.problems
