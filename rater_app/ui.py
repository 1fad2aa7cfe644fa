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

`build_blocks` lays the page out in named pieces (`RaterView`, `admin_ui.AdminView`, `Panels`)
and wires the events to `RaterPage` and `admin_ui.AdminPage`, whose handlers return updates
keyed by component, so no handler depends on the order of an event's outputs.
"""

from __future__ import annotations

import functools
import html
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import gradio as gr

from histosynth.errors import StudyError
from histosynth.votes import REAL_VOTE, SYNTHETIC_VOTE
from rater_app import store
from rater_app.admin_results_ui import build_results_panel
from rater_app.admin_ui import AdminPage, admin_view, wire_admin
from rater_app.blocks import Block, block_at
from rater_app.raters import ADMIN_NAME
from rater_app.store import Tile, connect, image_store_dir
from rater_app.viewer import TILE_DISPLAY_PX, tools_html
from rater_app.voting import (
    CONFIDENCE_LEVELS,
    RaterSettings,
    VoteRefused,
    first_unanswered,
    may_show,
    rater_blocks,
    rater_settings,
    record_vote,
    tile_at,
)

log = logging.getLogger(__name__)

STATE_LOST = "The app was restarted; your last answer was not saved. Please answer this tile again."
NOT_SAVED = "Your answer could not be saved. Please try again; if it persists, tell the study admin."
CONFIDENCE_LABELS = {1: "1 - a guess", 2: "2", 3: "3", 4: "4", 5: "5", 6: "6 - certain"}


@dataclass(frozen=True)
class Shown:
    """What is on a rater's screen: the place in their order (None when done) and since when."""

    position: int | None
    shown_at: float


@dataclass(frozen=True)
class RaterView:
    """The components of the rating panel that every rating event updates, by name."""

    tile: gr.HTML
    progress: gr.Markdown
    bars: gr.HTML  # progress bars of the study and of the current block
    instructions: gr.Markdown  # the study's instructions, on their own screen
    token: gr.Textbox  # the showing token of the tile on screen, sent back with a vote
    confidence: gr.Radio
    back: gr.Button
    resume: gr.Button
    proceed: gr.Button  # "Continue" after a block or the instructions
    show_instructions: gr.Button
    real: gr.Button
    synthetic: gr.Button
    message: gr.Markdown
    shown: gr.State

    def outputs(self) -> list[gr.components.Component]:
        """Every component, as the `outputs` of an event whose handler returns `RaterPage.render`."""
        return [getattr(self, field.name) for field in fields(self)]


def build_blocks(
    db_path: str, study_id: int, end_sessions: Callable[[int], None] | None = None, root_path: str = ""
) -> gr.Blocks:
    """The rating page and the admin page as one Blocks; the login decides which is visible.

    `end_sessions(rater_id)` forgets a rater's cached sessions when the admin page resets or
    disables them (see `admin_ui.AdminPage`); `root_path` is the public sub-path behind a proxy,
    which the login links the admin page shows must carry.
    """
    with gr.Blocks(title="histosynth rating", analytics_enabled=False, fill_width=False) as blocks:
        shown = gr.State(None)
        who = gr.HTML(elem_id="who")
        with gr.Column(visible=False) as rater_panel:
            view = _rater_view(shown)
        with gr.Column(visible=False) as admin_panel:
            admin = admin_view()
            build_results_panel(db_path, study_id)
        gr.HTML('<p style="text-align:right"><a href="logout">Log out</a></p>')
        panels = Panels(who, rater_panel, admin_panel)
        # Handlers are functions and bound methods, never functools.partial: Gradio passes the
        # `gr.Request` to the parameter whose type hint says so, and a partial has no hints.
        blocks.load(panels.open, None, panels.outputs(), api_visibility="private")
        _wire_rating(blocks, RaterPage(db_path, study_id, view))
        wire_admin(blocks, AdminPage(db_path, study_id, admin, end_sessions, root_path))
    # Votes of different raters must not wait for each other in one Gradio worker: SQLite's
    # locking serialises the writes, everything else runs in parallel.
    blocks.queue(default_concurrency_limit=None)
    return blocks


def _rater_view(shown: gr.State) -> RaterView:
    """The rating panel: progress on top, then the tile beside its controls.

    Side by side, the vote buttons and a six-point confidence scale stay beside the 512 px tile
    within a 768 px high screen (1024x768, a landscape tablet) without scrolling; on a narrower
    screen the controls wrap below the tile.
    """
    progress = gr.Markdown(elem_id="progress")
    bars = gr.HTML(elem_id="bars")
    instructions = gr.Markdown(elem_id="instructions", visible=False)
    with gr.Row(elem_id="rating-area", equal_height=False):
        with gr.Column(scale=0, min_width=TILE_DISPLAY_PX, elem_id="tile-column"):
            tile = gr.HTML(elem_id="tile-frame")
        with gr.Column(scale=1, min_width=260, elem_id="controls"):
            token = gr.Textbox(visible=False)
            confidence = gr.Radio(
                choices=[(CONFIDENCE_LABELS[level], level) for level in CONFIDENCE_LEVELS],
                label="Confidence",
                visible=False,
                elem_id="confidence",
            )
            with gr.Row(elem_id="votes"):
                real = gr.Button("Real (R / 1)", variant="primary", elem_id="vote-real")
                synthetic = gr.Button("Synthetic (S / 2)", variant="primary", elem_id="vote-synthetic")
            proceed = gr.Button("Continue (Enter)", variant="primary", elem_id="continue", visible=False)
            back = gr.Button("Back (B)", elem_id="go-back", visible=False)
            resume = gr.Button("To first unanswered", elem_id="resume", visible=False)
            show_instructions = gr.Button("Instructions (I)", elem_id="show-instructions", visible=False)
            message = gr.Markdown(elem_id="message")
            gr.HTML(tools_html())
    return RaterView(
        tile=tile,
        progress=progress,
        bars=bars,
        instructions=instructions,
        token=token,
        confidence=confidence,
        back=back,
        resume=resume,
        proceed=proceed,
        show_instructions=show_instructions,
        real=real,
        synthetic=synthetic,
        message=message,
        shown=shown,
    )


def _wire_rating(blocks: gr.Blocks, page: RaterPage) -> None:
    """Attach the rating events: start on load, the two votes, back and resume."""
    view = page.view
    outputs = view.outputs()
    # The rating events skip Gradio's queue: one HTTP round trip instead of join + stream,
    # which halves the time from a key press to the next tile. They are short database calls.
    rating = {"api_visibility": "private", "trigger_mode": "once", "queue": False}
    blocks.load(page.start, None, outputs, **rating)
    for button, vote in ((view.real, REAL_VOTE), (view.synthetic, SYNTHETIC_VOTE)):
        button.click(page.voter(vote), [view.token, view.confidence, view.shown], outputs, **rating)
    view.back.click(page.back, [view.shown], outputs, **rating)
    view.resume.click(page.resume, None, outputs, **rating)
    view.proceed.click(page.resume, None, outputs, **rating)
    view.show_instructions.click(page.show_instructions, None, outputs, **rating)


@dataclass(frozen=True)
class Panels:
    """What the page load decides: whose panel is visible, and who is logged in."""

    who: gr.HTML
    rater_panel: gr.Column
    admin_panel: gr.Column

    def outputs(self) -> list[gr.components.Component]:
        return [self.who, self.rater_panel, self.admin_panel]

    def open(self, request: gr.Request) -> dict:
        """The page-load handler: the rater's panel or the admin's (whose content `AdminPage.open` fills)."""
        # Shown on the page so that a rater logged into someone else's account notices.
        logged_in = f'<p style="text-align:right">Logged in as <b>{html.escape(request.username)}</b></p>'
        admin = request.username == ADMIN_NAME
        return {
            self.who: logged_in,
            self.rater_panel: gr.update(visible=not admin),
            self.admin_panel: gr.update(visible=admin),
        }


class RaterPage:
    """The rating events of one study's page, and what each of them puts on screen.

    Every handler returns `render`'s dict of updates keyed by the `RaterView` components, so
    no event depends on the order of its outputs.
    """

    def __init__(self, db_path: str, study_id: int, view: RaterView) -> None:
        self.db_path = db_path
        self.study_id = study_id
        self.view = view

    def start(self, request: gr.Request) -> dict:
        """Page load: the first unanswered tile (the admin's page has no rating panel)."""
        if request.username == ADMIN_NAME:  # every output skipped ({} would count as one value)
            return {component: gr.skip() for component in self.view.outputs()}
        settings = self._settings(request)
        if settings.instructions and first_unanswered(self.db_path, settings.rater_id) == 1:
            return self._render_instructions(settings)  # before the first tile
        return self.render(settings, None)

    def show_instructions(self, request: gr.Request) -> dict:
        """The study's instructions on demand; Continue goes back to the first unanswered tile."""
        settings = self._settings(request)
        return self._render_instructions(settings) if settings.instructions else self.render(settings, None)

    def voter(self, vote: str) -> Callable[..., dict]:
        """The handler of one vote button: Real or Synthetic on the tile on screen, then the next
        tile or the refusal."""

        def handler(token: str, level: int | None, current: Shown | None, request: gr.Request) -> dict:
            settings = self._settings(request)
            if current is None:  # the server restarted under this page: its shown time is gone
                return self.render(settings, None, note=STATE_LOST)
            if current.position is None:
                return self.render(settings, None)
            try:
                record_vote(
                    self.db_path, settings.rater_id, current.position, token, vote, level, current.shown_at
                )
            except VoteRefused as error:
                return self.render(settings, current.position, note=str(error), keep=current)
            except StudyError as error:
                log.error("vote of %s at position %s not saved: %s", settings.name, current.position, error)
                return self.render(settings, current.position, note=NOT_SAVED, keep=current)
            return self.render(settings, None, after=current.position)

        return handler

    def back(self, current: Shown | None, request: gr.Request) -> dict:
        """One tile back (from the "all rated" screen: the last tile), where the study allows it."""
        settings = self._settings(request)
        if current is None:  # a fresh session: no "back" from nowhere, start at the frontier
            position = None
        elif current.position is None:  # from a pause or the "all rated" screen: the last answered tile
            frontier = first_unanswered(self.db_path, settings.rater_id)
            position = settings.total if frontier is None else max(1, frontier - 1)
        else:
            position = max(1, current.position - 1)
        return self.render(settings, position)

    def resume(self, request: gr.Request) -> dict:
        """Back to the first unanswered tile."""
        return self.render(self._settings(request), None)

    def render(
        self,
        settings: RaterSettings,
        position: int | None,
        note: str = "",
        keep: Shown | None = None,
        after: int | None = None,
    ) -> dict:
        """Updates for the rater view, showing `position` if the rater may see it.

        Any other request (None, a position after the first unanswered one, or an earlier one in
        a study without changes) shows the first unanswered tile, or the "all rated" screen.
        `keep` is the `Shown` to keep when the same tile stays on screen (a refused vote), so
        its shown time is not reset. `after` is the position just voted on: when that vote
        finished a block and the next block is still to do, a pause screen comes first.
        """
        view = self.view
        frontier = first_unanswered(self.db_path, settings.rater_id)
        if position is None or not may_show(position, frontier, settings.allow_changes):
            position = frontier
        if keep is not None and keep.position != position:
            keep = None
        if position is None:
            return self._render_done(settings, note)
        blocks = _blocks_for(self.db_path, settings.rater_id, settings.block_by_class)
        finished = block_at(blocks, after) if after is not None else None
        if finished is not None and finished.last == after and position == after + 1:
            return self._render_pause(settings, blocks, finished, position, note)
        tile = tile_at(self.db_path, settings.rater_id, position)
        available = (image_store_dir(self.db_path) / f"{tile.item_id}.png").is_file()
        if not available:
            log.error(
                "tile %s (position %d of %s) is missing from the image store",
                tile.item_id,
                position,
                settings.name,
            )
            note = "This tile could not be loaded from the study's image store. Please tell the study admin."
        answer = f" - your answer: **{tile.vote}**" if tile.vote else ""
        return {
            view.tile: _tile_html(tile),
            view.progress: f"Tile **{tile.position} of {tile.total}** ({tile.answered} answered){answer}",
            view.bars: _bars_html(
                tile.answered, tile.total, block_at(blocks, position), len(blocks), frontier
            ),
            view.token: tile.token,
            view.confidence: gr.update(visible=settings.confidence != "none", value=tile.confidence),
            view.back: gr.update(visible=settings.allow_changes and tile.position > 1),
            view.resume: gr.update(visible=tile.vote is not None),
            view.proceed: gr.update(visible=False),
            view.instructions: gr.update(visible=False),
            view.show_instructions: gr.update(visible=bool(settings.instructions)),
            view.real: gr.update(interactive=available),
            view.synthetic: gr.update(interactive=available),
            view.message: note,
            view.shown: keep if keep is not None else Shown(tile.position, time.time()),
        }

    def _render_pause(
        self, settings: RaterSettings, blocks: Sequence[Block], finished: Block, frontier: int, note: str
    ) -> dict:
        """Between two blocks: what is done, what comes next, and Continue; the next tile is prefetched."""
        coming = block_at(blocks, frontier)
        next_tile = tile_at(self.db_path, settings.rater_id, frontier)
        screen = (
            '<div id="block-done" class="screen" role="status">'
            f"<h2>{html.escape(finished.title(len(blocks)))} done</h2>"
            f"<p>Take a short break if you like. Next: {html.escape(coming.title(len(blocks)))}.</p>"
            "<p>Press <kbd>Enter</kbd> or Continue when you are ready.</p></div>"
            f'<img src="tiles/{html.escape(next_tile.token)}.png" alt="" style="display:none">'
        )
        return self._screen(
            settings, screen, next_tile.answered, coming, len(blocks), frontier, note, can_continue=True
        )

    def _render_instructions(self, settings: RaterSettings) -> dict:
        frontier = first_unanswered(self.db_path, settings.rater_id)
        answered = settings.total if frontier is None else frontier - 1
        blocks = _blocks_for(self.db_path, settings.rater_id, settings.block_by_class)
        block = block_at(blocks, frontier) if frontier is not None else None
        screen = '<p id="instructions-screen">Press <kbd>Enter</kbd> or Continue to rate.</p>'
        updates = self._screen(
            settings, screen, answered, block, len(blocks), frontier, "", can_continue=True
        )
        updates[self.view.instructions] = gr.update(visible=True, value=settings.instructions)
        updates[self.view.show_instructions] = gr.update(visible=False)
        return updates

    def _render_done(self, settings: RaterSettings, note: str) -> dict:
        review = "<p>You can still go Back to review your answers.</p>" if settings.allow_changes else ""
        screen = (
            f'<div id="all-done" class="screen" role="status"><h2>All {settings.total} tiles rated</h2>'
            f"<p>Thank you! Every answer is saved; you can close this page.</p>{review}</div>"
        )
        return self._screen(settings, screen, settings.total, None, 0, None, note, can_continue=False)

    def _screen(
        self,
        settings: RaterSettings,
        screen: str,
        answered: int,
        block: Block | None,
        n_blocks: int,
        frontier: int | None,
        note: str,
        can_continue: bool,
    ) -> dict:
        """A screen without a tile (instructions, pause, all done): no vote possible, Back where
        changes are allowed, Continue (to the first unanswered tile) where there is one.

        Like `render` for a tile, it sets every component of the view (the two dicts look alike
        on purpose), so that no screen leaves a control of the previous one behind.
        """
        view = self.view
        return {
            view.tile: screen,
            view.progress: f"{answered} of {settings.total} answered",
            view.bars: _bars_html(answered, settings.total, block, n_blocks, frontier),
            view.token: "",
            view.confidence: gr.update(visible=False, value=None),
            view.back: gr.update(visible=settings.allow_changes),
            view.resume: gr.update(visible=False),
            view.proceed: gr.update(visible=can_continue),
            view.instructions: gr.update(visible=False),
            view.show_instructions: gr.update(visible=bool(settings.instructions)),
            view.real: gr.update(interactive=False),
            view.synthetic: gr.update(interactive=False),
            view.message: note,
            view.shown: Shown(None, time.time()),
        }

    def _settings(self, request: gr.Request) -> RaterSettings:
        return _settings_for(self.db_path, self.study_id, request.username)


def _bars_html(answered: int, total: int, block: Block | None, n_blocks: int, frontier: int | None) -> str:
    """Progress bars: the whole study, and the block on screen when the study is rated by class.

    The block's bar names its class (`Block.title`): a class is shared by every source, so the
    name says nothing about a tile's provenance (docs/threat-model.md).
    """
    bars = [_bar("study-progress", f"Study: {answered} of {total} answered", answered, total)]
    if block is not None:
        done = block.answered(frontier)
        label = f"{block.title(n_blocks)}: {done} of {block.size}"
        bars.append(_bar("block-progress", label, done, block.size))
    return f'<div class="bars">{"".join(bars)}</div>'


def _bar(element_id: str, label: str, value: int, maximum: int) -> str:
    text = html.escape(label)
    return (
        f'<div class="bar"><span id="{element_id}-label">{text}</span>'
        f'<progress id="{element_id}" max="{maximum}" value="{value}" aria-labelledby="{element_id}-label">'
        f"{text}</progress></div>"
    )


@functools.lru_cache(maxsize=4096)
def _blocks_for(db_path: str, rater_id: int, block_by_class: bool) -> tuple[Block, ...]:
    """A rater's blocks; cached, since a rater's order never changes."""
    return tuple(rater_blocks(db_path, rater_id, block_by_class))


def _tile_html(tile: Tile) -> str:
    token = html.escape(tile.token)
    prefetch = ""
    if tile.next_token:
        prefetch = f'<img src="tiles/{html.escape(tile.next_token)}.png" alt="" style="display:none">'
    return (
        '<div id="tile-view">'
        f'<img class="tile" id="tile-img" data-position="{tile.position}" src="tiles/{token}.png" '
        f'alt="tile {tile.position}" width="{TILE_DISPLAY_PX}" height="{TILE_DISPLAY_PX}" draggable="false">'
        f'<span id="zoom-level" aria-live="polite">1x</span></div>{prefetch}'
    )


@functools.lru_cache(maxsize=4096)
def _settings_for(db_path: str, study_id: int, name: str | None) -> RaterSettings:
    """A rater's settings; cached, since neither a rater's order nor the study's settings change."""
    with connect(db_path) as db:
        rater = store.rater_id(db, study_id, name)
    if rater is None:
        raise gr.Error("You are not a rater of this study; log in again.")
    return rater_settings(db_path, rater)
