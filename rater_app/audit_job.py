"""The blinding audit for the dashboard: run in a background thread, its last result cached.

`audit_study` re-reads every stored PNG and recomputes orders, which takes seconds to minutes
on a large study; a dashboard that refreshes every few seconds must not wait for it nor run it
again on each refresh. One `AuditJob` per study runs it at most once at a time and keeps the
last report with the time it finished, until the admin asks for a fresh run.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from histosynth.errors import StudyError
from rater_app.audit import AuditReport, audit_study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditState:
    """What the dashboard knows about the audit: the last report (if any), and whether a run is on."""

    report: AuditReport | None
    finished_at: float | None
    running: bool
    error: str | None  # the one-line reason when the last run could not complete


class AuditJob:
    """Runs `audit_study` for one study in a daemon thread and remembers the last result."""

    def __init__(self, db_path: str | Path, study: str) -> None:
        self.db_path = db_path
        self.study = study
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._report: AuditReport | None = None
        self._finished_at: float | None = None
        self._error: str | None = None

    def start(self) -> bool:
        """Start a run unless one is running; returns whether this call started it."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._thread = threading.Thread(target=self._run, name=f"audit-{self.study}", daemon=True)
            self._thread.start()
            return True

    def state(self) -> AuditState:
        """The current state; starts the first run when none has been made yet."""
        with self._lock:
            never_run = self._thread is None
        if never_run:
            self.start()
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            return AuditState(self._report, self._finished_at, running, self._error)

    def wait(self, timeout: float | None = None) -> AuditState:
        """Wait for the running audit (if any) to finish; for tests and scripts."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.state()

    def _run(self) -> None:
        try:
            report, error = audit_study(self.db_path, self.study), None
        except StudyError as failure:  # e.g. the database is being replaced; shown, not raised
            log.error("blinding audit of %s failed: %s", self.study, failure)
            report, error = None, str(failure)
        except Exception:  # a thread's exception would vanish, leaving the page waiting forever
            log.exception("blinding audit of %s failed", self.study)
            report, error = None, "unexpected error (see the server log)"
        with self._lock:
            if report is not None:
                self._report = report
            self._error = error
            self._finished_at = time.time()
