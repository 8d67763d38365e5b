"""One way to run long work: a worker thread with a stop Event, keyed by the visitor's session.

    job = jobs.start(work, name="finetune-train", key=session)   # background: the page polls job.status
    with jobs.running(work, name="prompting-generate", key=session) as job:   # the caller streams meanwhile
        ...
    result = jobs.run(work, name="prompting-icl", key=session)    # block until done; its error re-raised
    jobs.stop(session, "prompting-")                               # what every Stop button calls

`work(stop)` receives the job's stop Event and must return soon after it is set (check it once per step,
token or batch). Every Stop button both sets that event (`jobs.stop`) and cancels its Gradio event
(`cancels=`): cancelling alone ends a streaming handler but not the thread under it.

- A job's error is kept on the job with its trace. `run` and `running` re-raise it in the caller's thread
  (where @visitor_errors turns it into a message); a background job logs the trace when it fails, because
  nobody waits for it.
- `active()` counts the jobs running now, by name prefix and session, so tests can see that Stop ended one.
- Logic functions report progress as `progress(fraction, text)` (the `Progress` type below);
  `shared/ui.py:gradio_progress` turns a `gr.Progress` into one.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("playground.jobs")

Progress = Callable[[float, str], None]  # progress(fraction done in [0, 1], what is happening)
NO_SESSION = "no-session"


def no_progress(fraction: float, text: str) -> None:
    """The progress callback for callers that show none."""


@dataclass
class Job:
    name: str  # what it is, prefixed by its page: "prompting-generate", "finetune-train"
    key: str  # the visitor's session (Stop stops only that visitor's jobs)
    id: int
    stop: threading.Event = field(default_factory=threading.Event)
    status: str = "running"  # running | done | stopped | failed
    result: Any = None
    error: BaseException | None = None
    trace: str = ""  # the formatted traceback of `error`
    started: float = field(default_factory=time.time)
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end; True when it has."""
        if self.thread is not None:
            self.thread.join(timeout)
        return self.finished

    def outcome(self) -> Any:
        """The work's return value, or its error raised here."""
        if self.error is not None:
            raise self.error
        return self.result


_ids = itertools.count(1)
_lock = threading.Lock()
_jobs: dict[int, Job] = {}  # running jobs only


def _launch(work: Callable[[threading.Event], Any], name: str, key: str, log_errors: bool,
            stop: threading.Event | None = None) -> Job:
    job = Job(name=name, key=key or NO_SESSION, id=next(_ids), stop=stop or threading.Event())

    def body() -> None:
        try:
            job.result = work(job.stop)
            job.status = "stopped" if job.stop.is_set() else "done"
        except BaseException as error:  # kept for the caller, or logged: never lost
            job.error, job.trace, job.status = error, traceback.format_exc(), "failed"
            if log_errors:
                log.error("job %s (%s) failed:\n%s", job.name, job.key, job.trace)
        finally:
            with _lock:
                _jobs.pop(job.id, None)

    # The worker runs in a copy of the caller's context: gr.Progress (and anything else keyed on context
    # variables) finds the caller's event from inside the work.
    job.thread = threading.Thread(target=contextvars.copy_context().run, args=(body,), name=f"{name}-{job.id}",
                                  daemon=True)
    with _lock:
        _jobs[job.id] = job
    job.thread.start()
    return job


def start(work: Callable[[threading.Event], Any], name: str, key: str = "") -> Job:
    """Run `work(stop)` in the background and return at once; its error is logged with the trace and kept
    on the job (`job.error`, `job.trace`) for the page to show."""
    return _launch(work, name, key, log_errors=True)


@contextlib.contextmanager
def running(work: Callable[[threading.Event], Any], name: str, key: str = "",
            stop: threading.Event | None = None) -> Iterator[Job]:
    """Run `work(stop)` in a worker while the block runs (streaming what it makes). Leaving the block early
    (an error, or a generator closed by a cancelled event) sets the stop event; the worker is always
    joined, and its error is re-raised here once the block ends. `stop` shares an event the caller made."""
    job = _launch(work, name, key, log_errors=False, stop=stop)
    try:
        yield job
    except BaseException:
        job.stop.set()
        raise
    finally:
        job.join()
    job.outcome()


def run(work: Callable[[threading.Event], Any], name: str, key: str = "") -> Any:
    """Run `work(stop)` in a worker and wait for it: its return value, or its error re-raised here."""
    with running(work, name, key) as job:
        pass
    return job.result


def stop(key: str, prefix: str = "") -> int:
    """Set the stop event of every running job of session `key` whose name starts with `prefix`; returns how many."""
    with _lock:
        chosen = [j for j in _jobs.values() if j.key == (key or NO_SESSION) and j.name.startswith(prefix)]
    for job in chosen:
        job.stop.set()
    return len(chosen)


def active(prefix: str = "", key: str | None = None) -> int:
    """How many jobs run now whose name starts with `prefix` (of session `key`, or of any session)."""
    with _lock:
        return sum(1 for j in _jobs.values() if j.name.startswith(prefix) and (key is None or j.key == key))
