"""The Gradio page a rater (or the study's admin) sees after logging in.

The page holds no study data of its own: who is looking comes from the login
(`gr.Request.username`), where they are from the database, and `gr.State` (kept on the
server, per page session) only remembers which tile is on screen and since when. Every event
can be called directly with any inputs, so each one asks `voting.may_show` before it renders a
tile: a fresh session starts at the first unanswered tile and can walk back only over answered
ones, and only when the study allows changes. A tile is an <img> pointing at the app's own
`tiles/<token>.png` route (a random token per showing, so a repeated tile gets a new URL),
which serves the stored PNG with only its padding bytes renewed; the next tile is loaded by a
hidden <img> so the switch after a vote is instant.
"""

from __future__ import annotations

import functools
import html
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import gradio as gr

from histosynth.errors import StudyError
from rater_app.export import study_status
from rater_app.raters import ADMIN_NAME
from rater_app.store import connect, image_store_dir
from rater_app.voting import (
    CONFIDENCE_LEVELS,
    RaterSettings,
    Tile,
    VoteRefused,
    first_unanswered,
    may_show,
    rater_settings,
    record_vote,
    tile_at,
)

log = logging.getLogger(__name__)

TILE_DISPLAY_PX = 512  # native 256 px shown at 2x
STATE_LOST = "The app was restarted; your last answer was not saved. Please answer this tile again."
NOT_SAVED = "Your answer could not be saved. Please try again; if it persists, tell the study admin."
CONFIDENCE_LABELS = {1: "1 - a guess", 2: "2", 3: "3", 4: "4", 5: "5", 6: "6 - certain"}

KEYBOARD_JS = """
<script>
document.addEventListener("keydown", (event) => {
  if (event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" &&
      ["text", "password", "number", "search"].includes(target.type)))) return;
  const keys = {r: "vote-real", "1": "vote-real", s: "vote-synthetic", "2": "vote-synthetic",
                b: "go-back", arrowleft: "go-back"};
  const id = keys[event.key.toLowerCase()];
  const button = id && document.getElementById(id);
  if (button && !button.disabled && button.offsetParent !== null) {
    event.preventDefault();
    button.click();
  }
});
</script>
"""

CSS = f"""
#tile-frame {{ display: flex; justify-content: center; }}
#tile-frame img.tile {{ width: {TILE_DISPLAY_PX}px; height: {TILE_DISPLAY_PX}px; max-width: none; }}
#progress {{ text-align: center; }}
"""


@dataclass(frozen=True)
class Shown:
    """What is on a rater's screen: the place in their order (None when done) and since when."""

    position: int | None
    shown_at: float


def build_blocks(db_path: str, study_id: int) -> gr.Blocks:
    """The rating page and the admin page as one Blocks; the login decides which is visible."""
    with gr.Blocks(title="histosynth rating", analytics_enabled=False, fill_width=False) as blocks:
        shown = gr.State(None)
        who = gr.HTML(elem_id="who")
        with gr.Column(visible=False) as rater_panel:
            progress = gr.Markdown(elem_id="progress")
            tile = gr.HTML(elem_id="tile-frame")
            shown_item = gr.Textbox(visible=False)
            confidence = gr.Radio(
                choices=[(CONFIDENCE_LABELS[level], level) for level in CONFIDENCE_LEVELS],
                label="Confidence",
                visible=False,
                elem_id="confidence",
            )
            with gr.Row():
                back = gr.Button("Back (B)", elem_id="go-back", visible=False)
                real = gr.Button("Real (R / 1)", variant="primary", elem_id="vote-real")
                synthetic = gr.Button("Synthetic (S / 2)", variant="primary", elem_id="vote-synthetic")
                resume = gr.Button("To first unanswered", elem_id="resume", visible=False)
            message = gr.Markdown(elem_id="message")
        with gr.Column(visible=False) as admin_panel:
            gr.Markdown("## Study progress")
            status_table = gr.Dataframe(
                headers=["rater", "answered", "total", "done", "last vote (UTC)"],
                interactive=False,
                elem_id="status",
            )
            refresh = gr.Button("Refresh", elem_id="refresh")
            gr.HTML('<p><a href="admin/votes.csv" download="votes.csv">Download votes (CSV)</a></p>')
        gr.HTML('<p style="text-align:right"><a href="logout">Log out</a></p>')

        view = [tile, progress, shown_item, confidence, back, resume, real, synthetic, message, shown]

        def on_load(request: gr.Request):
            # Shown on the page so that a rater logged into someone else's account notices.
            logged_in = f'<p style="text-align:right">Logged in as <b>{html.escape(request.username)}</b></p>'
            if request.username == ADMIN_NAME:
                status = _status_rows(db_path, study_id)
                return gr.update(visible=False), gr.update(visible=True), status, logged_in
            return gr.update(visible=True), gr.update(visible=False), gr.update(), logged_in

        def show_start(request: gr.Request):
            if request.username == ADMIN_NAME:
                return [gr.update()] * len(view)
            settings = _settings_for(db_path, study_id, request.username)
            return _render(db_path, settings, None)

        def vote_handler(vote: str):
            def handler(token: str, level: int | None, current: Shown | None, request: gr.Request):
                settings = _settings_for(db_path, study_id, request.username)
                if current is None:  # the server restarted under this page: its shown time is gone
                    return _render(db_path, settings, None, note=STATE_LOST)
                if current.position is None:
                    return _render(db_path, settings, None)
                try:
                    record_vote(
                        db_path, settings.rater_id, current.position, token, vote, level, current.shown_at
                    )
                except VoteRefused as error:
                    return _render(db_path, settings, current.position, note=str(error), keep=current)
                except StudyError as error:
                    log.error(
                        "vote of %s at position %s not saved: %s", settings.name, current.position, error
                    )
                    return _render(db_path, settings, current.position, note=NOT_SAVED, keep=current)
                return _render(db_path, settings, None)

            return handler

        def go_back(current: Shown | None, request: gr.Request):
            settings = _settings_for(db_path, study_id, request.username)
            if current is None:  # a fresh session: no "back" from nowhere, start at the frontier
                position = None
            elif current.position is None:  # from the "all rated" screen to the last tile
                position = settings.total
            else:
                position = max(1, current.position - 1)
            return _render(db_path, settings, position)

        def refresh_status(request: gr.Request):
            if request.username != ADMIN_NAME:  # the event is callable by index, so check who asks
                raise gr.Error("Only the study's admin sees everyone's progress.")
            return _status_rows(db_path, study_id)

        def go_resume(request: gr.Request):
            settings = _settings_for(db_path, study_id, request.username)
            return _render(db_path, settings, None)

        blocks.load(on_load, None, [rater_panel, admin_panel, status_table, who], api_visibility="private")
        # The rating events skip Gradio's queue: one HTTP round trip instead of join + stream,
        # which halves the time from a key press to the next tile. They are short database calls.
        rating = {"api_visibility": "private", "trigger_mode": "once", "queue": False}
        blocks.load(show_start, None, view, **rating)
        for button, vote in ((real, "real"), (synthetic, "synthetic")):
            button.click(vote_handler(vote), [shown_item, confidence, shown], view, **rating)
        back.click(go_back, [shown], view, **rating)
        resume.click(go_resume, None, view, **rating)
        refresh.click(refresh_status, None, status_table, api_visibility="private")
    # Votes of different raters must not wait for each other in one Gradio worker: SQLite's
    # locking serialises the writes, everything else runs in parallel.
    blocks.queue(default_concurrency_limit=None)
    return blocks


def _render(
    db_path: str, settings: RaterSettings, position: int | None, note: str = "", keep: Shown | None = None
) -> list:
    """Updates for every component of the rater view, showing `position` if the rater may see it.

    Any other request (None, a position after the first unanswered one, or an earlier one in a
    study without changes) shows the first unanswered tile, or the "all rated" screen.
    """
    confidence_visible = settings.confidence != "none"
    frontier = first_unanswered(db_path, settings.rater_id)
    if position is None or not may_show(position, frontier, settings.allow_changes):
        position = frontier
    if keep is not None and keep.position != position:
        keep = None
    if position is None:
        done = f"**All {settings.total} tiles rated. Thank you!**"
        if settings.allow_changes:
            done += " You can still go back to review your answers."
        return [
            f'<div class="done">{done}</div>',
            f"{settings.total} of {settings.total} answered",
            "",
            gr.update(visible=False, value=None),
            gr.update(visible=settings.allow_changes),
            gr.update(visible=False),
            gr.update(interactive=False),
            gr.update(interactive=False),
            note,
            Shown(None, time.time()),
        ]
    tile = tile_at(db_path, settings.rater_id, position)
    available = (image_store_dir(db_path) / f"{tile.item_id}.png").is_file()
    if not available:
        log.error(
            "tile %s (position %d of %s) is missing from the image store",
            tile.item_id,
            position,
            settings.name,
        )
        note = "This tile could not be loaded from the study's image store. Please tell the study admin."
    at_frontier = tile.vote is None
    answer = f" - your answer: **{tile.vote}**" if tile.vote else ""
    return [
        _tile_html(tile),
        f"Tile **{tile.position} of {tile.total}** ({tile.answered} answered){answer}",
        tile.token,
        gr.update(visible=confidence_visible, value=tile.confidence),
        gr.update(visible=settings.allow_changes and tile.position > 1),
        gr.update(visible=not at_frontier),
        gr.update(interactive=available),
        gr.update(interactive=available),
        note,
        keep if keep is not None else Shown(tile.position, time.time()),
    ]


def _tile_html(tile: Tile) -> str:
    token = html.escape(tile.token)
    prefetch = ""
    if tile.next_token:
        prefetch = f'<img src="tiles/{html.escape(tile.next_token)}.png" alt="" style="display:none">'
    return (
        f'<img class="tile" id="tile-img" data-position="{tile.position}" src="tiles/{token}.png" '
        f'alt="tile {tile.position}" width="{TILE_DISPLAY_PX}" height="{TILE_DISPLAY_PX}">{prefetch}'
    )


@functools.lru_cache(maxsize=4096)
def _settings_for(db_path: str, study_id: int, name: str | None) -> RaterSettings:
    """A rater's settings; cached, since neither a rater's order nor the study's settings change."""
    with connect(db_path) as db:
        rows = list(db.query("SELECT id FROM raters WHERE study_id = ? AND name = ?", [study_id, name]))
    if not rows:
        raise gr.Error("You are not a rater of this study; log in again.")
    return rater_settings(db_path, rows[0]["id"])


def _status_rows(db_path: str, study_id: int) -> list[list]:
    with connect(db_path) as db:
        name = next(iter(db.query("SELECT name FROM studies WHERE id = ?", [study_id])))["name"]
    return [
        [p.rater, p.answered, p.total, "yes" if p.done else "", _utc(p.last_vote_at)]
        for p in study_status(db_path, name)
    ]


def _utc(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
