"""shared/jobs.py: work in a worker thread, stopped by session and name, joined, its error re-raised or logged.

The workers here wait on events, never on the clock: each test's outcome is the same on a slow or fast CPU.
"""

from __future__ import annotations

import logging
import threading
import traceback

import pytest

from shared import jobs

HANG_GUARD = 30  # seconds; only ever reached when the code under test is broken


def until_stopped(started: threading.Event):
    """Work that runs until its stop event is set; returns how it ended."""

    def work(stop: threading.Event) -> str:
        started.set()
        assert stop.wait(HANG_GUARD), "never stopped"
        return "ended by stop"

    return work


def test_stop_ends_only_the_named_jobs_of_that_session():
    started = [threading.Event() for _ in range(3)]
    mine = jobs.start(until_stopped(started[0]), name="page-train", key="visitor-a")
    other_name = jobs.start(until_stopped(started[1]), name="page-eval", key="visitor-a")
    other_visitor = jobs.start(until_stopped(started[2]), name="page-train", key="visitor-b")
    assert all(event.wait(HANG_GUARD) for event in started)
    assert jobs.active("page-", key="visitor-a") == 2 and jobs.active("page-train") == 2
    assert jobs.stop("visitor-a", "page-train") == 1
    assert mine.join(HANG_GUARD) and mine.status == "stopped" and mine.result == "ended by stop"
    assert not other_name.finished and not other_visitor.finished
    assert jobs.stop("visitor-a", "page-") == 1 and jobs.stop("visitor-b") == 1
    assert other_name.join(HANG_GUARD) and other_visitor.join(HANG_GUARD)
    assert jobs.active("page-") == 0 and jobs.stop("visitor-a") == 0


def test_run_returns_the_result_or_reraises_the_error_with_its_trace():
    assert jobs.run(lambda stop: 6 * 7, name="page-answer") == 42

    def fail(stop: threading.Event) -> None:
        raise ValueError("N must be even, got 5")

    with pytest.raises(ValueError, match="N must be even, got 5") as raised:
        jobs.run(fail, name="page-fail")
    assert "in fail" in "".join(traceback.format_tb(raised.value.__traceback__))
    assert jobs.active("page-") == 0


def test_a_background_failure_is_logged_with_its_trace_and_kept(caplog):
    def fail(stop: threading.Event) -> None:
        raise RuntimeError("out of memory at step 3")

    with caplog.at_level(logging.ERROR, logger="playground.jobs"):
        job = jobs.start(fail, name="page-background", key="visitor-c")
        assert job.join(HANG_GUARD)
    assert job.status == "failed" and isinstance(job.error, RuntimeError)
    assert "Traceback" in job.trace and "out of memory at step 3" in job.trace
    assert "job page-background (visitor-c) failed" in caplog.text and "in fail" in caplog.text


def test_leaving_a_running_block_early_stops_and_joins_the_worker():
    started = threading.Event()
    with pytest.raises(KeyError):
        with jobs.running(until_stopped(started), name="page-stream", key="visitor-d") as job:
            assert started.wait(HANG_GUARD) and jobs.active("page-stream", key="visitor-d") == 1
            raise KeyError("the visitor left")  # as a generator closed by a cancelled event
    assert job.finished and job.status == "stopped" and jobs.active("page-stream") == 0


def test_running_reraises_the_workers_error_when_the_block_ends():
    def fail(stop: threading.Event) -> None:
        raise MemoryError("no memory for the next step")

    with pytest.raises(MemoryError, match="no memory"):
        with jobs.running(fail, name="page-stream") as job:
            job.join(HANG_GUARD)
    assert jobs.active("page-stream") == 0


def test_a_caller_made_stop_event_reaches_the_work():
    stop = threading.Event()
    stop.set()
    with jobs.running(lambda event: event is stop and event.is_set(), name="page-shared", stop=stop) as job:
        pass
    assert job.result is True and job.status == "stopped"


def test_the_work_sees_the_callers_context_variables():
    """gr.Progress finds its event through context variables: a worker must run in the caller's context."""
    import contextvars

    event_id = contextvars.ContextVar("event_id", default=None)
    event_id.set("event-42")
    assert jobs.run(lambda stop: event_id.get(), name="page-context") == "event-42"
