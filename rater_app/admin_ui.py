"""The admin's page: a dashboard that refreshes itself, the blinding audit, and the raters.

The admin panel is part of the one Blocks that every logged-in user loads (`ui.build_blocks`),
so a rater's browser receives its components (empty) and can call each of its events by
index with any inputs. Every handler here therefore starts with `_require_admin`, which
refuses anyone but the admin on the server; the page-load handler gives a rater nothing, and
the refresh timer is only switched on for the admin.

The dashboard (`rater_app.dashboard`) is redrawn by a `gr.Timer` every `REFRESH_SECONDS`
without a page reload; the Refresh button redraws it at once. Managing raters goes through
`rater_app.raters` with the actor "admin", so each change and its line in the admin record
land in one transaction. A new or reset secret is in that one response only: it is shown
once and never stored in plain text.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, timezone

import gradio as gr

from histosynth.errors import StudyError
from histosynth.urls import login_url
from rater_app import store
from rater_app.audit_job import AuditJob, AuditState
from rater_app.dashboard import RATE_EVIDENCE_SECONDS, Dashboard, RaterRow, dashboard
from rater_app.raters import ADMIN_NAME, NewRater, add_raters, admin_record, reset_secrets, set_disabled
from rater_app.store import connect

REFRESH_SECONDS = 5.0
RECORD_LINES = 10  # the most recent admin actions shown on the page
NOT_ADMIN = "Only the study's admin sees everyone's progress."


@dataclass(frozen=True)
class AdminView:
    """The admin panel's components, by name."""

    dashboard: gr.HTML
    audit: gr.HTML
    rerun_audit: gr.Button
    refresh: gr.Button
    timer: gr.Timer
    new_name: gr.Textbox
    add: gr.Button
    rater: gr.Dropdown
    reset: gr.Button
    disable: gr.Button
    enable: gr.Button
    login_line: gr.HTML  # a new or reset rater's login line, shown once
    record: gr.HTML

    def outputs(self) -> list[gr.components.Component]:
        """The components a handler may update (not the buttons)."""
        skip = {"rerun_audit", "refresh", "add", "reset", "disable", "enable"}
        return [getattr(self, field.name) for field in fields(self) if field.name not in skip]


def admin_view() -> AdminView:
    """Lay the admin panel out; every component starts empty, since raters receive them too."""
    gr.Markdown("## Study dashboard")
    board = gr.HTML(elem_id="dashboard")
    with gr.Row():
        refresh = gr.Button("Refresh", elem_id="refresh")
    gr.HTML('<p><a href="admin/votes.csv" download="votes.csv">Download votes (CSV)</a></p>')
    gr.Markdown("## Blinding audit")
    audit = gr.HTML(elem_id="audit")
    rerun_audit = gr.Button("Run audit again", elem_id="rerun-audit")
    gr.Markdown("## Raters")
    with gr.Row():
        new_name = gr.Textbox(label="New rater's name", elem_id="new-rater", max_length=64)
        add = gr.Button("Add rater", elem_id="add-rater")
    with gr.Row():
        # Custom values pass Gradio's check against the (page-load) choices; the handlers
        # check the name against the study's raters themselves.
        rater = gr.Dropdown(label="Rater", choices=[], elem_id="rater-choice", allow_custom_value=True)
        reset = gr.Button("Reset secret", elem_id="reset-rater")
        disable = gr.Button("Disable", elem_id="disable-rater", variant="stop")
        enable = gr.Button("Enable", elem_id="enable-rater")
    login_line = gr.HTML(elem_id="login-line")
    gr.Markdown("### Admin record")
    record = gr.HTML(elem_id="admin-record")
    return AdminView(
        dashboard=board,
        audit=audit,
        rerun_audit=rerun_audit,
        refresh=refresh,
        timer=gr.Timer(REFRESH_SECONDS, active=False),
        new_name=new_name,
        add=add,
        rater=rater,
        reset=reset,
        disable=disable,
        enable=enable,
        login_line=login_line,
        record=record,
    )


def wire_admin(blocks: gr.Blocks, page: AdminPage) -> None:
    """Attach the admin events: the dashboard on load, the timer, refresh, audit and raters."""
    view = page.view
    outputs = view.outputs()
    # Outside Gradio's queue, like the rating events: each is a short database call, and a
    # refusal's gr.Error text reaches the caller in the answer itself.
    quiet = {"api_visibility": "private", "show_progress": "hidden", "queue": False}
    blocks.load(page.open, None, outputs, **quiet)
    view.timer.tick(page.refresh, None, outputs, **quiet)
    view.refresh.click(page.refresh, None, outputs, **quiet)
    view.rerun_audit.click(page.rerun_audit, None, outputs, **quiet)
    managing = {"api_visibility": "private", "trigger_mode": "once", "queue": False}
    view.add.click(page.add, [view.new_name], outputs, **managing)
    view.reset.click(page.reset, [view.rater], outputs, **managing)
    view.disable.click(page.disabler(True), [view.rater], outputs, **managing)
    view.enable.click(page.disabler(False), [view.rater], outputs, **managing)


class AdminPage:
    """The admin events of one study's page; each returns updates keyed by `AdminView` component.

    `end_sessions(rater_id)` drops a rater's sessions from the server's cache, so a reset or
    disable from this page stops their next request at once (the database sessions are
    deleted in the same transaction as the change). `root_path` is the public sub-path behind a
    proxy that strips it: the request's own URL lacks it, the login links must not.
    """

    def __init__(
        self,
        db_path: str,
        study_id: int,
        view: AdminView,
        end_sessions: Callable[[int], None] | None = None,
        root_path: str = "",
    ) -> None:
        self.db_path = db_path
        self.study_id = study_id
        self.view = view
        self.end_sessions = end_sessions
        self.root_path = root_path
        with connect(db_path) as db:
            self.study = store.study_by_id(db, study_id).name
        self.audit = AuditJob(db_path, self.study)

    def open(self, request: gr.Request) -> dict:
        """Page load: for the admin the dashboard and a running timer; for a rater nothing."""
        if request.username != ADMIN_NAME:
            return {component: gr.skip() for component in self.view.outputs()}  # ({} is one value)
        return {**self._board(), self.view.rater: self._choices(), self.view.timer: gr.Timer(active=True)}

    def refresh(self, request: gr.Request) -> dict:
        """The timer's tick and the Refresh button."""
        _require_admin(request)
        return self._board()

    def rerun_audit(self, request: gr.Request) -> dict:
        """Start a fresh blinding audit (unless one is running); the dashboard shows it when done."""
        _require_admin(request)
        self.audit.start()
        return self._board()

    def add(self, name: str | None, request: gr.Request) -> dict:
        """Add a rater and show their login line once."""
        _require_admin(request)
        name = (name or "").strip()
        try:
            added = add_raters(self.db_path, self.study, [name], actor=ADMIN_NAME)
        except StudyError as error:
            return {**self._board(), self.view.login_line: _notice(str(error))}
        return {
            **self._board(),
            self.view.new_name: "",
            self.view.rater: self._choices(name),
            self.view.login_line: _login_line(added[0], self._base_url(request), "added"),
        }

    def reset(self, name: str | None, request: gr.Request) -> dict:
        """Give a rater a new secret (shown once); their sessions end."""
        _require_admin(request)
        try:
            renewed = reset_secrets(self.db_path, self.study, [name or ""], actor=ADMIN_NAME)
        except StudyError as error:
            return {**self._board(), self.view.login_line: _notice(str(error))}
        self._end_sessions(renewed[0].name)
        return {
            **self._board(),
            self.view.login_line: _login_line(renewed[0], self._base_url(request), "reset"),
        }

    def disabler(self, disabled: bool) -> Callable[[str | None, gr.Request], dict]:
        """The handler of Disable (True) or Enable (False) for the chosen rater."""

        def handler(name: str | None, request: gr.Request) -> dict:
            _require_admin(request)
            try:
                set_disabled(self.db_path, self.study, [name or ""], disabled, actor=ADMIN_NAME)
            except StudyError as error:
                return {**self._board(), self.view.login_line: _notice(str(error))}
            if disabled:
                self._end_sessions(name or "")
            done = "disabled: they cannot log in" if disabled else "enabled: they can log in again"
            return {**self._board(), self.view.login_line: _notice(f"{name} {done}.")}

        return handler

    def _board(self) -> dict:
        view = self.view
        return {
            view.dashboard: dashboard_html(dashboard(self.db_path, self.study_id)),
            view.audit: audit_html(self.audit.state()),
            view.record: record_html(admin_record(self.db_path, self.study)),
        }

    def _choices(self, value: str | None = None) -> dict:
        with connect(self.db_path) as db:
            names = store.rater_names(db, self.study_id)
        return gr.update(choices=names, value=value)

    def _base_url(self, request: gr.Request) -> str:
        """The app's address as the admin's browser reached it (WebGuard has vetted the host, a
        trusted proxy's X-Forwarded-Proto the scheme), under the public sub-path; just the
        sub-path (a path on the same site) where the request carries no URL."""
        starlette = request.request
        site = "" if starlette is None else str(starlette.base_url).rstrip("/")
        return site + self.root_path

    def _end_sessions(self, name: str) -> None:
        if self.end_sessions is None:
            return
        with connect(self.db_path) as db:
            found = store.rater_id(db, self.study_id, name)
        if found is not None:
            self.end_sessions(found)


def _require_admin(request: gr.Request) -> None:
    """Refuse anyone but the admin: a rater can call every event of the page by its index."""
    if request.username != ADMIN_NAME:
        raise gr.Error(NOT_ADMIN)


def dashboard_html(board: Dashboard) -> str:
    """The dashboard: the study's totals and settings, then one line per rater with a progress bar."""
    facts = board.study
    settings = [
        ("tiles", str(facts.n_items)),
        ("classes", str(facts.n_classes)),
        ("sources", str(facts.n_sources)),
        ("images per cell", "-" if facts.images_per_cell is None else str(facts.images_per_cell)),
        ("block by class", _yes(facts.block_by_class)),
        ("confidence", facts.confidence),
        ("changes allowed", _yes(facts.allow_changes)),
        ("repeats", str(facts.repeats)),
    ]
    pace = _per_hour(board.votes_per_hour, board.answered)
    summary = (
        f"<p id='study-summary'>{len(board.raters)} raters; <b>{board.answered} of {board.total}</b> "
        f"answered; {board.votes_last_hour} votes in the last hour, {pace} "
        f"overall; median reading time {_seconds(board.median_seconds)}. "
        f"{_idle_sentence(board)} Updated {_utc(board.now, seconds=True)} UTC.</p>"
    )
    facts_html = "; ".join(f"{html.escape(k)}: <b>{html.escape(v)}</b>" for k, v in settings)
    head = "".join(
        f"<th>{title}</th>"
        for title in (
            "rater",
            "progress",
            "answered",
            "last hour",
            "per hour",
            "median",
            "last vote",
            "state",
        )
    )
    rows = "".join(_rater_html(row, board) for row in board.raters)
    return (
        f"{summary}<p id='study-settings'>Settings: {facts_html}.</p>"
        f"<table id='rater-table'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )


def _rater_html(row: RaterRow, board: Dashboard) -> str:
    name = html.escape(row.name)
    state = "disabled" if row.disabled else "done" if row.done else "idle" if row.idle else ""
    shown_state = f"{state} (simulated)".strip() if row.simulated else state
    bar = f'<progress max="{row.total}" value="{row.answered}" aria-label="{name}: progress"></progress>'
    cells = (
        name,
        bar,
        f"{row.answered} / {row.total}",
        str(row.votes_last_hour),
        _per_hour(row.votes_per_hour, row.answered),
        _seconds(row.median_seconds),
        _utc(row.last_vote_at),
        shown_state,
    )
    return (
        f'<tr data-rater="{name}" data-state="{state}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
    )


def audit_html(state: AuditState) -> str:
    """The last audit's verdict, leaks and warnings, with its time; or that it is running."""
    parts = []
    if state.running:
        parts.append("<p id='audit-running'>Audit running...</p>")
    if state.error is not None:
        parts.append(f"<p class='error'>The last audit could not run: {html.escape(state.error)}</p>")
    report = state.report
    if report is not None:
        verdict = "PASSED" if report.passed else f"FAILED ({len(report.leaks)} leaks)"
        when = _utc(state.finished_at, seconds=True)
        items = [f"<li>LEAK: {html.escape(text)}</li>" for text in report.leaks]
        items += [f"<li>warning: {html.escape(text)}</li>" for text in report.warnings]
        parts.append(f"<p id='audit-verdict'><b>{verdict}</b> (finished {when} UTC)</p>")
        if items:
            parts.append(f"<ul id='audit-findings'>{''.join(items)}</ul>")
    return "".join(parts)


def record_html(actions: list[store.AdminAction]) -> str:
    """The most recent admin actions, newest first: who, what, to whom, when."""
    lines = [
        f"<li>{_utc(a.at, seconds=True)} UTC: {html.escape(a.actor)} {html.escape(a.action)}"
        f"{' ' + html.escape(a.target) if a.target else ''}</li>"
        for a in reversed(actions[-RECORD_LINES:])
    ]
    return f"<ul>{''.join(lines)}</ul>" if lines else "<p>No admin actions yet.</p>"


def _login_line(rater: NewRater, base: str, what: str) -> str:
    """A rater's login line (name, secret, link), tab-separated as `study raters add` prints it."""
    line = f"{rater.name}\t{rater.secret}\t{login_url(base, rater.name)}"
    return (
        f"<p>Rater {html.escape(rater.name)} {what}. Send them this line now: the secret is shown "
        f"only this once and is not stored.</p><pre id='login-line-text'>{html.escape(line)}</pre>"
    )


def _notice(text: str) -> str:
    return f"<p role='status'>{html.escape(text)}</p>"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _idle_sentence(board: Dashboard) -> str:
    """Who has been quiet for the idle time, and for how long; or that no one has."""
    limit = f"{board.idle_seconds / 60:g} min"
    if not board.idle:
        return f"No rater idle (no vote for {limit})."
    names = ", ".join(f"{html.escape(name)} ({_duration(quiet)})" for name, quiet in board.idle)
    return f"Idle (no vote for {limit}): {names}."


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"


def _per_hour(rate: float | None, votes: int) -> str:
    """A pace; before an hour of votes, when it will show; before any vote, a dash."""
    if rate is not None:
        return f"{rate:.0f}/h"
    return "-" if votes == 0 else f"after {RATE_EVIDENCE_SECONDS / 3600:g} h"


def _seconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def _utc(epoch: float | None, seconds: bool = False) -> str:
    if epoch is None:
        return ""
    pattern = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime(pattern)
