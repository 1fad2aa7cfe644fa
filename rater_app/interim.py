"""Interim results: the votes so far, evaluated by the evaluator's own command line.

The rating app never imports the evaluator (DESIGN.md: the apps talk only through files), so
an interim look exports the votes to a temporary folder, runs `python -m histosynth evaluate
ratings` on that file in a subprocess (the same interpreter, absolute paths, a time limit) and
reads the evaluator's CSV tables and figure back before the folder is removed. The study's ZIP
(`rater_app.bundle`) runs the same evaluation, so the interim numbers and the archived ones
come from one command.

Looking at results before a study ends is peeking: every look that showed results is recorded
in the admin's record (`results.view`; a download of the study's ZIP, `bundle.download`, counts
as a look too), which the admin panel shows before the next look and the ZIP carries with the
results.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from histosynth.errors import StudyError
from rater_app import store
from rater_app.export import export_votes
from rater_app.raters import ADMIN_NAME
from rater_app.store import AdminAction, connect, transaction

log = logging.getLogger(__name__)

VIEW_ACTION = "results.view"
# The study's ZIP holds the votes with their sources and the evaluated results: a look too.
DOWNLOAD_ACTION = "bundle.download"
LOOK_ACTIONS = (VIEW_ACTION, DOWNLOAD_ACTION)
# Interim looks include raters who are not done yet: mid-study, nobody may have finished.
EVALUATOR_ARGS = ("evaluate", "ratings", "--include-unfinished")
EVALUATOR_TIMEOUT_S = 300.0
VOTES_FILE = "votes.csv"
EVALUATED_DIR = "evaluated"
MAX_MESSAGE_CHARS = 300


class EvaluationFailed(StudyError):
    """The evaluator could not evaluate the votes; the message is one line naming no server path."""


@dataclass(frozen=True)
class VoteCount:
    """How far the study is, for the warning before a look."""

    votes: int  # answered showings, repeats included
    raters: int  # raters with at least one vote
    finished: int  # raters who answered every showing
    total_raters: int


@dataclass(frozen=True)
class Evaluation:
    """Where one evaluation left its tables and figures, and how many votes went in."""

    evaluated: Path
    n_votes: int


@dataclass(frozen=True)
class InterimResults:
    """What an interim look shows: the evaluator's tables and figure, and the record of looks."""

    n_votes: int
    expert_scores: pd.DataFrame  # expert_scores.csv: class, source, score_mean, score_std, ...
    fleiss_kappa: pd.DataFrame  # fleiss_kappa.csv: source, class, kappa, se, ...
    figure_png: bytes | None  # Fig. 3B; None when the evaluator drew none (no generated tiles voted on)
    looks: list[AdminAction]  # every recorded look, this one included


def vote_count(db_path: str | Path, study_id: int) -> VoteCount:
    """The votes and raters so far, from the progress table (no export, no evaluator)."""
    with connect(db_path) as db:
        progress = store.progress(db, study_id)
    return VoteCount(
        votes=sum(p.answered for p in progress),
        raters=sum(1 for p in progress if p.answered),
        finished=sum(1 for p in progress if p.done),
        total_raters=len(progress),
    )


def result_looks(db_path: str | Path, study_id: int) -> list[AdminAction]:
    """Every recorded look at interim results (on the page or by the ZIP), oldest first."""
    with connect(db_path) as db:
        return [action for action in store.admin_actions(db, study_id) if action.action in LOOK_ACTIONS]


def evaluate_study(
    db_path: str | Path, study: str, folder: Path, timeout: float = EVALUATOR_TIMEOUT_S
) -> Evaluation:
    """Export the votes to `folder/votes.csv` and evaluate them into `folder/evaluated/`.

    Raises:
        EvaluationFailed: the evaluator refused the votes (say, none yet), failed, or ran past
            `timeout` seconds; the votes file is written all the same.
    """
    folder = folder.resolve()
    votes_csv = folder / VOTES_FILE
    text = export_votes(db_path, study, votes_csv)
    evaluated = folder / EVALUATED_DIR
    run_evaluator(votes_csv, evaluated, timeout)
    return Evaluation(evaluated, n_votes=sum(1 for _ in csv.DictReader(io.StringIO(text))))


def run_evaluator(votes_csv: Path, out: Path, timeout: float = EVALUATOR_TIMEOUT_S) -> None:
    """Run `histosynth evaluate ratings` on a votes file in a subprocess of this interpreter.

    The subprocess is how the rating app reaches the evaluator without importing it; its
    stderr goes to the server log, and only a one-line reason without paths reaches the caller.
    It runs in the votes file's folder, since `-m` puts the working directory first on the
    module path: the server's own working directory may hold files that nobody vetted.

    Raises:
        EvaluationFailed: a non-zero exit, a timeout, or an interpreter that cannot start.
    """
    command = [
        sys.executable,
        "-m",
        "histosynth",
        *EVALUATOR_ARGS,
        "--votes",
        str(votes_csv.resolve()),
        "--out",
        str(out.resolve()),
    ]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, cwd=votes_csv.parent
        )
    except subprocess.TimeoutExpired as error:
        log.error("the evaluator ran past %g s: %s", timeout, " ".join(command))
        raise EvaluationFailed(f"the evaluator did not finish within {timeout:g} s") from error
    except OSError as error:
        log.error("the evaluator could not be started (%s): %s", error, " ".join(command))
        raise EvaluationFailed("the evaluator could not be started; the server log has the reason") from error
    if completed.returncode != 0:
        log.error("the evaluator failed (exit %d):\n%s", completed.returncode, completed.stderr)
        raise EvaluationFailed(failure_line(completed.stderr, completed.returncode, votes_csv.parent))


def failure_line(stderr: str, returncode: int, folder: Path) -> str:
    """The evaluator's own `error: ...` line with `folder` cut from its paths, or a generic line.

    The evaluator names the file it could not use, and that file lies in a server temp
    folder: the page shows `votes.csv: no votes`, not the folder. A crash (a traceback, no
    `error:` line) is summarised; the traceback stays in the server log.
    """
    errors = [line.removeprefix("error: ") for line in stderr.splitlines() if line.startswith("error: ")]
    if not errors:
        return f"the evaluator failed (exit code {returncode}); the server log has its output"
    line = errors[-1].replace(str(folder) + os.sep, "").replace(str(folder), "the export folder")
    return line[:MAX_MESSAGE_CHARS]


def interim_results(
    db_path: str | Path, study_id: int, timeout: float = EVALUATOR_TIMEOUT_S
) -> InterimResults:
    """Evaluate the votes so far and record the look; the caller has checked that it is the admin.

    The look is recorded only once the results are in hand: a failed evaluation showed nothing.

    Raises:
        EvaluationFailed: no votes yet, or the evaluator failed (see `run_evaluator`).
    """
    if vote_count(db_path, study_id).votes == 0:
        raise EvaluationFailed("no votes yet: there is nothing to evaluate")
    with connect(db_path) as db:
        study = store.study_by_id(db, study_id)
    with tempfile.TemporaryDirectory(prefix="histosynth-interim-") as folder:
        evaluation = evaluate_study(db_path, study.name, Path(folder), timeout)
        scores = pd.read_csv(evaluation.evaluated / "expert_scores.csv")
        kappa = pd.read_csv(evaluation.evaluated / "fleiss_kappa.csv")
        figure = evaluation.evaluated / "expert_scores.png"
        figure_png = figure.read_bytes() if figure.is_file() else None
    with connect(db_path) as db, transaction(db):
        store.record_admin_action(db, study_id, ADMIN_NAME, VIEW_ACTION)
    return InterimResults(
        n_votes=evaluation.n_votes,
        expert_scores=scores,
        fleiss_kappa=kappa,
        figure_png=figure_png,
        looks=result_looks(db_path, study_id),
    )
