"""The admin's results panel: interim results behind a warning about peeking, and the study's ZIP.

"Interim results" first shows what a look costs (peeking can bias the decision to stop or
change a study), how many votes are in, and every earlier look; only "Show interim results"
runs the evaluator (`rater_app.interim`) and records the look. The figure travels inside the
page as a data: URL, never as a file in Gradio's cache that another session could fetch.

Gradio events are routes that any logged-in user can call by index with any inputs, so each
handler checks on the server that the caller is the admin before it counts, evaluates or
records anything; a rater gets the refusal and nothing else.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import datetime, timezone

import gradio as gr
import pandas as pd

from rater_app.interim import (
    DOWNLOAD_ACTION,
    EvaluationFailed,
    InterimResults,
    interim_results,
    result_looks,
    vote_count,
)
from rater_app.raters import ADMIN_NAME
from rater_app.store import AdminAction

REFUSED = "Only the study's admin sees interim results."
SCORE_COLUMNS = ["class", "source", "score_mean", "score_std", "ci_low", "ci_high", "n_raters"]
KAPPA_COLUMNS = ["source", "class", "kappa", "se", "ci_low", "ci_high", "n_raters", "n_tiles", "note"]
ZIP_LINK = (
    '<p><a id="study-zip" href="admin/study.zip" download>Download everything (ZIP)</a>: votes CSV, '
    "evaluated tables and figures, the study TOML, the admin record and a manifest with sha256 hashes.</p>"
)


@dataclass(frozen=True)
class ResultsView:
    """The panel's components that its events update, by name."""

    confirmation: gr.Group
    warning: gr.Markdown
    message: gr.Markdown
    plot: gr.HTML
    scores: gr.Dataframe
    kappa: gr.Dataframe


def build_results_panel(db_path: str, study_id: int) -> None:
    """Create the results panel's components and wire its events inside the current Blocks."""
    gr.Markdown("## Interim results and the study's files")
    open_button = gr.Button("Interim results", elem_id="interim-open")
    with gr.Group(visible=False, elem_id="interim-confirmation") as confirmation:
        warning = gr.Markdown(elem_id="interim-warning")
        with gr.Row():
            confirm = gr.Button("Show interim results", variant="stop", elem_id="interim-confirm")
            cancel = gr.Button("Cancel", elem_id="interim-cancel")
    message = gr.Markdown(elem_id="interim-message")
    plot = gr.HTML(elem_id="interim-plot")
    scores = gr.Dataframe(
        label="Expert rating score per class and generator (mean and std across raters)",
        interactive=False,
        visible=False,
        elem_id="interim-scores",
    )
    kappa = gr.Dataframe(
        label="Fleiss' kappa so far", interactive=False, visible=False, elem_id="interim-kappa"
    )
    gr.HTML(ZIP_LINK)
    view = ResultsView(confirmation, warning, message, plot, scores, kappa)
    panel = ResultsPanel(db_path, study_id, view)
    private = {"api_visibility": "private"}
    open_button.click(panel.ask, None, [confirmation, warning, message], **private)
    cancel.click(panel.cancel, None, [confirmation], **private)
    outputs = [confirmation, message, plot, scores, kappa]
    confirm.click(panel.show, None, outputs, trigger_mode="once", **private)


class ResultsPanel:
    """The panel's event handlers for one study."""

    def __init__(self, db_path: str, study_id: int, view: ResultsView) -> None:
        self.db_path = db_path
        self.study_id = study_id
        self.view = view

    def ask(self, request: gr.Request) -> dict:
        """The warning before a look: the risk of peeking, the votes so far and earlier looks."""
        _require_admin(request)
        count = vote_count(self.db_path, self.study_id)
        warning = (
            "**Before you look: peeking can bias the study.** Results seen while the study is still "
            "running tempt decisions to stop it early, to extend it, or to change raters, tiles or "
            "settings; a decision made on interim numbers makes a chance finding look real. Look only "
            "if the study's plan calls for it, and report that you did.\n\n"
            f"So far: **{count.votes} votes** from {count.raters} of {count.total_raters} raters "
            f"({count.finished} finished). Raters who are not done are included.\n\n"
            f"{looks_text(result_looks(self.db_path, self.study_id))} This look will be recorded "
            "with its time, and the record goes into the study's ZIP."
        )
        view = self.view
        return {view.confirmation: gr.update(visible=True), view.warning: warning, view.message: ""}

    def cancel(self) -> dict:
        """Hide the warning; nothing was evaluated or recorded."""
        return {self.view.confirmation: gr.update(visible=False)}

    def show(self, request: gr.Request) -> dict:
        """Evaluate the votes so far, record the look and show the plot and tables."""
        _require_admin(request)
        view = self.view
        hidden = {
            view.confirmation: gr.update(visible=False),
            view.plot: "",
            view.scores: gr.update(visible=False),
            view.kappa: gr.update(visible=False),
        }
        try:
            results = interim_results(self.db_path, self.study_id)
        except EvaluationFailed as error:
            return {**hidden, view.message: f"Interim results could not be computed: {error}"}
        return {
            **hidden,
            view.message: f"Interim results from **{results.n_votes} votes**. {looks_text(results.looks)}",
            view.plot: figure_html(results),
            view.scores: gr.update(visible=True, value=_rounded(results.expert_scores, SCORE_COLUMNS)),
            view.kappa: gr.update(visible=True, value=_rounded(results.fleiss_kappa, KAPPA_COLUMNS)),
        }


def looks_text(looks: list[AdminAction]) -> str:
    """The record of peeking in one sentence: how many looks, and when (UTC)."""
    if not looks:
        return "Interim results have not been looked at before."
    times = ", ".join(_utc(look.at) + (" (ZIP)" if look.action == DOWNLOAD_ACTION else "") for look in looks)
    plural = "s" if len(looks) > 1 else ""
    return f"Interim results have been looked at {len(looks)} time{plural} (UTC): {times}."


def figure_html(results: InterimResults) -> str:
    """Fig. 3B as an inline PNG, or a note when the evaluator drew none."""
    if results.figure_png is None:
        return '<p id="interim-figure-missing">No figure yet: no generated tile has a vote.</p>'
    data = base64.b64encode(results.figure_png).decode("ascii")
    alt = html.escape("Expert rating score per class and generator, mean and std across raters (Fig. 3B)")
    return f'<img id="interim-figure" alt="{alt}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _require_admin(request: gr.Request) -> None:
    if request.username != ADMIN_NAME:
        raise gr.Error(REFUSED)


def _rounded(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The columns the panel shows, numbers to 3 decimals (the files in the ZIP keep them all)."""
    return frame[[column for column in columns if column in frame.columns]].round(3)


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
