"""`histosynth evaluate ratings`: votes in, the paper's rating tables and figure (and more) out.

`compute_ratings` turns a votes table into every statistic (in memory, so a bad input fails
before anything is written); `write_ratings` writes them all at once through a staging folder,
so the output folder never holds a half-written report; `evaluate_ratings` does both.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from evaluator.ratings.figure import expert_score_figure, save_figure
from evaluator.ratings.reader_metrics import (
    imrmc_frame,
    imrmc_input,
    intra_rater_agreement,
    reading_times,
    roc_auc_table,
)
from evaluator.ratings.scores import MEAN_CLASSES, expert_scores, kappa_tables, rater_scores
from evaluator.ratings.stats import bootstrap_kappas, bootstrap_scores, discrimination_tests
from evaluator.ratings.votes import (
    VotesError,
    rater_progress,
    simulated_raters,
    validate_votes,
    vote_matrix,
)
from histosynth.errors import HistosynthError
from histosynth.files import staged_output
from histosynth.tables import ALL_CLASSES, format_estimate, write_table
from histosynth.votes import REAL_SOURCE

log = logging.getLogger(__name__)

# Every file `write_ratings` can write: tables as CSV, Markdown and LaTeX, then the rest.
# Those not written this time (say roc_auc.* for a study without confidence ratings) are
# removed from the output folder, so it never mixes two runs.
TABLE_STEMS = (
    "raters",
    "expert_scores",
    "expert_scores_by_rater",
    "fleiss_kappa",
    "fleiss_kappa_categories",
    "discrimination_tests",
    "roc_auc",
    "intra_rater",
    "timing",
    "timing_by_source",
)
OWNED_FILES = (
    *(f"{stem}.{suffix}" for stem in TABLE_STEMS for suffix in ("csv", "md", "tex")),
    "imrmc.csv",
    "imrmc.imrmc",
    "expert_scores.png",
    "expert_scores.pdf",
    "ratings_settings.json",
)


@dataclass(frozen=True)
class RatingSettings:
    """How the statistics were computed; written next to the tables for reproducibility.

    Attributes:
        include_unfinished: keep raters who did not rate every tile (default: leave them out).
        n_bootstrap: bootstrap replicates for every confidence interval.
        ci_level: confidence level of the intervals.
        correction: statsmodels `multipletests` method for the discrimination tests.
        alpha: family-wise (or FDR) level at which a test is called significant.
        seed: seed of the bootstrap replicates and of the permutation tests' draws.
        ddof: delta degrees of freedom of standard deviations across raters (>= 0).
    """

    include_unfinished: bool = False
    n_bootstrap: int = 1000
    ci_level: float = 0.95
    correction: str = "holm"
    alpha: float = 0.05
    seed: int = 0
    ddof: int = 1


@dataclass
class RatingsReport:
    """Every table of a ratings evaluation; empty frames where the study lacked the data."""

    raters: pd.DataFrame
    expert_scores: pd.DataFrame
    rater_scores: pd.DataFrame
    fleiss_kappa: pd.DataFrame
    fleiss_kappa_categories: pd.DataFrame
    discrimination_tests: pd.DataFrame
    roc_auc: pd.DataFrame
    imrmc: pd.DataFrame
    intra_rater: pd.DataFrame
    timing: pd.DataFrame
    timing_by_source: pd.DataFrame
    settings: RatingSettings = field(default_factory=RatingSettings)
    simulated_raters: list[str] = field(default_factory=list)  # of the raters included

    @property
    def simulated_note(self) -> str:
        """What every table and the figure say when simulated raters voted; "" otherwise."""
        if not self.simulated_raters:
            return ""
        included = int(self.raters["included"].sum())
        return f"SIMULATED: {len(self.simulated_raters)} of {included} raters are simulated, not pathologists"


def compute_ratings(votes: pd.DataFrame, settings: RatingSettings | None = None) -> RatingsReport:
    """Compute all rating statistics of a study from its votes.

    Args:
        votes: one row per vote in the interchange format (a `read_votes` result, a study
            export, or any DataFrame with those columns; it is checked again here).
        settings: options; None uses the defaults of `RatingSettings`.

    Returns:
        The report. Repeated presentations feed only `intra_rater`; unfinished raters are
        listed in `raters` and left out everywhere unless `settings.include_unfinished`.

    Raises:
        VotesError: the votes fail a check, or no rater finished and unfinished raters are
            excluded, or a bootstrap or correction setting is invalid.
        HistosynthError: alpha outside (0, 1), or a negative ddof.
    """
    settings = settings or RatingSettings()
    if not 0.0 < settings.alpha < 1.0:
        raise HistosynthError(f"significance level alpha must lie between 0 and 1, got {settings.alpha}")
    if settings.ddof < 0:
        # numpy would accept it and divide by n - ddof > n: a spread that is no standard deviation.
        raise HistosynthError(f"ddof (delta degrees of freedom) must be >= 0, got {settings.ddof}")
    votes = validate_votes(votes)
    progress = rater_progress(votes)
    progress["included"] = progress["finished"] | settings.include_unfinished
    if not progress["included"].any():
        raise VotesError(
            f"no rater rated all {int(progress['n_items_total'].iloc[0])} tiles; "
            "include unfinished raters (--include-unfinished) to evaluate anyway"
        )
    left_out = progress.loc[~progress["included"], "rater"].tolist()
    if left_out:
        log.warning("leaving out %d unfinished rater(s): %s", len(left_out), ", ".join(left_out))
    votes = votes[votes["rater"].isin(progress.loc[progress["included"], "rater"])]
    matrix = vote_matrix(votes)
    boot = {"n_bootstrap": settings.n_bootstrap, "ci_level": settings.ci_level, "seed": settings.seed}

    scores = expert_scores(matrix, ddof=settings.ddof).merge(
        bootstrap_scores(matrix, **boot), on=["class", "source"], how="left"
    )
    kappas, categories = kappa_tables(matrix)
    kappas = kappas.merge(bootstrap_kappas(matrix, **boot), on=["source", "class"], how="left")
    tests = discrimination_tests(
        matrix, correction=settings.correction, alpha=settings.alpha, seed=settings.seed
    )
    timing, timing_by_source = reading_times(votes)
    return RatingsReport(
        raters=progress,
        expert_scores=scores,
        rater_scores=rater_scores(matrix),
        fleiss_kappa=kappas,
        fleiss_kappa_categories=categories,
        discrimination_tests=tests,
        roc_auc=roc_auc_table(matrix, **boot, ddof=settings.ddof),
        imrmc=imrmc_frame(matrix),
        intra_rater=intra_rater_agreement(votes),
        timing=timing,
        timing_by_source=timing_by_source,
        settings=settings,
        simulated_raters=simulated_raters(votes),
    )


def write_ratings(report: RatingsReport, out: str | Path, figure: bool = True) -> list[Path]:
    """Write a report's tables (CSV, Markdown, LaTeX), Fig. 3B (PNG, PDF) and settings.

    Everything is first written to a staging folder beside `out` and then moved in, so a
    failure leaves `out` as it was. Tables the study has no data for are not written, and
    files of `OWNED_FILES` left there by an earlier run but not written now are removed.

    Args:
        report: what `compute_ratings` returned.
        out: the output folder (created if missing).
        figure: also draw Fig. 3B (`expert_scores.png` and `.pdf`).

    Returns:
        The paths of the files written, inside `out`.

    Raises:
        HistosynthError: `out` exists and is not a folder, or cannot be written.
    """
    out = Path(out).expanduser()
    with staged_output(out, owned=OWNED_FILES) as staging:
        names = [path.name for path in _write_all(report, staging, figure)]
    log.info("wrote %d files to %s", len(names), out)
    return [out / name for name in names]


def evaluate_ratings(
    votes: pd.DataFrame, out: str | Path, settings: RatingSettings | None = None, figure: bool = True
) -> RatingsReport:
    """Compute every rating statistic of `votes` and write the report (`histosynth evaluate ratings`).

    Everything is computed before anything is written, so bad votes leave `out` untouched.

    Args:
        votes: one row per vote in the interchange format (see `compute_ratings`).
        out: the output folder (see `write_ratings` for the files).
        settings: see `RatingSettings`; None uses its defaults.
        figure: also draw Fig. 3B (`expert_scores.png` and `.pdf`).

    Returns:
        The report (see `compute_ratings`).

    Raises:
        VotesError, HistosynthError: see `compute_ratings` and `write_ratings`.
    """
    report = compute_ratings(votes, settings)
    write_ratings(report, out, figure=figure)
    return report


def _write_all(report: RatingsReport, folder: Path, figure: bool) -> list[Path]:
    digits, note = 2, report.simulated_note

    def table(
        frame: pd.DataFrame, stem: str, caption: str, display: pd.DataFrame | None = None
    ) -> list[Path]:
        """One table; made from simulated votes, its caption says so and its CSV has a
        `simulated` column (the raters table has one always, per rater)."""
        if note and "simulated" not in frame.columns:
            frame = frame.assign(simulated=True)
        caption = f"{note}. {caption}" if note else caption
        return write_table(frame, folder, stem, display=display, caption=caption)

    paths = table(report.raters, "raters", "Raters, their progress and inclusion")
    paths += table(
        report.expert_scores,
        "expert_scores",
        "Expert rating score, mean ± std over raters [bootstrap CI]",
        display=_grid(report.expert_scores, "score_mean", "score_std", digits),
    )
    paths += table(report.rater_scores, "expert_scores_by_rater", "Expert score per rater")
    paths += table(
        report.fleiss_kappa,
        "fleiss_kappa",
        (
            "Fleiss' kappa [bootstrap CI over tiles]; the MEAN row's se assumes independent classes "
            "(they share raters), its CI does not"
        ),
        display=_grid(report.fleiss_kappa, "kappa", None, digits, extra=(ALL_CLASSES, MEAN_CLASSES)),
    )
    paths += table(report.fleiss_kappa_categories, "fleiss_kappa_categories", "Fleiss' kappa per category")
    paths += table(
        report.discrimination_tests,
        "discrimination_tests",
        f"Permutation tests of the expert score ({report.settings.correction}-corrected)",
    )
    optional = {
        "roc_auc": (report.roc_auc, "ROC AUC real vs generated, per rater and mean [bootstrap CI]"),
        "intra_rater": (report.intra_rater, "Intra-rater agreement on repeated tiles (Cohen's kappa)"),
        "timing": (report.timing, "Reading time per tile and trend over position"),
        "timing_by_source": (report.timing_by_source, "Reading time per tile by source"),
    }
    for stem, (frame, caption) in optional.items():
        if not frame.empty:
            paths += table(frame, stem, caption)
    if not report.imrmc.empty:
        report.imrmc.to_csv(folder / "imrmc.csv", index=False)
        (folder / "imrmc.imrmc").write_text(imrmc_input(report.imrmc), encoding="utf-8")
        paths += [folder / "imrmc.csv", folder / "imrmc.imrmc"]
    if figure:
        drawn = expert_score_figure(report.expert_scores, note=note)
        paths += save_figure(drawn, folder, "expert_scores")
    settings = folder / "ratings_settings.json"
    written = {**asdict(report.settings), "simulated_raters": report.simulated_raters}
    settings.write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
    return [*paths, settings]


def _grid(
    table: pd.DataFrame, mean: str, std: str | None, digits: int, extra: tuple[str, ...] = (ALL_CLASSES,)
) -> pd.DataFrame:
    """Class x source grid of `mean ± std [ci_low, ci_high]` strings for the renderings."""
    cells = table.assign(
        estimate=[
            format_estimate(row[mean], row[std] if std else None, row["ci_low"], row["ci_high"], digits)
            for _, row in table.iterrows()
        ]
    )
    grid = cells.pivot(index="class", columns="source", values="estimate")
    order = sorted(set(grid.index) - {ALL_CLASSES, MEAN_CLASSES}) + [
        name for name in extra if name in grid.index
    ]
    sources = sorted(set(grid.columns) - {REAL_SOURCE}) + [REAL_SOURCE] * (REAL_SOURCE in grid.columns)
    grid = grid.reindex(index=order, columns=sources)
    return grid.reset_index().rename_axis(columns=None)
