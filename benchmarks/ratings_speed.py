"""Speed of `histosynth evaluate ratings` against a plain pandas/statsmodels baseline.

Two study sizes: the paper's (3 raters x 450 votes: 9 classes x 5 sources x 10 tiles) and a
large one (100 raters x 10,000 votes each). For each, the full evaluation (`compute_ratings`:
scores, kappas, 1000-replicate two-way bootstraps, exact/normal tests, ROC AUC with bootstrap,
timing) and writing the report are timed against a baseline computed in the same run: the
paper's numbers only (expert scores and Fleiss' kappa per cell), written the obvious way with
pandas groupby and statsmodels' fleiss_kappa. Run: `.venv/bin/python benchmarks/ratings_speed.py`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss_kappa

from evaluator.ratings.report import RatingSettings, compute_ratings, write_ratings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_of  # noqa: E402

CLASSES = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
SOURCES = ["real", "KLF8-DM", "VQF8-DM", "SD", "styleGAN2"]


def simulated_votes(n_raters: int, votes_per_rater: int, seed: int = 0) -> pd.DataFrame:
    """Every rater rates the same `votes_per_rater` tiles, with confidence and reading time."""
    rng = np.random.default_rng(seed)
    per_cell = -(-votes_per_rater // (len(CLASSES) * len(SOURCES)))
    items = pd.DataFrame(
        [(f"{c}-{s}-{i}", c, s) for c in CLASSES for s in SOURCES for i in range(per_cell)],
        columns=["item", "class", "source"],
    ).iloc[:votes_per_rater]
    rater = np.repeat([f"rater{index:03d}" for index in range(n_raters)], len(items))
    tile = np.tile(np.arange(len(items)), n_raters)
    is_real = items["source"].to_numpy()[tile] == "real"
    vote = np.where(rng.random(tile.size) < np.where(is_real, 0.7, 0.5), "real", "synthetic")
    return pd.DataFrame(
        {
            "rater": rater,
            "item": items["item"].to_numpy()[tile],
            "class": items["class"].to_numpy()[tile],
            "source": items["source"].to_numpy()[tile],
            "vote": vote,
            "confidence": rng.integers(1, 7, tile.size),
            "repeat": 0,
            "seconds": rng.exponential(5.0, tile.size).round(3),
            "position": np.tile(np.arange(1, len(items) + 1), n_raters),
        }
    )


def baseline_paper_numbers(votes: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The paper's numbers the obvious way: groupby fractions, statsmodels kappa per cell."""
    called = votes.assign(called_real=votes["vote"] == "real")
    fractions = called.groupby(["rater", "class", "source"])["called_real"].mean().unstack("source")
    scores = fractions.drop(columns="real").sub(fractions["real"], axis=0)
    summary = scores.groupby("class").agg(["mean", "std"])
    kappas = {}
    for (source, klass), cell in called.groupby(["source", "class"]):
        table = pd.crosstab(cell["item"], cell["vote"]).to_numpy()
        kappas[(source, klass)] = statsmodels_fleiss_kappa(table, method="fleiss")
    return summary, kappas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (best is kept)")
    parser.add_argument("--skip-large", action="store_true", help="only the paper-sized study")
    args = parser.parse_args()
    sizes = [(3, 450)] if args.skip_large else [(3, 450), (100, 10_000)]
    settings = RatingSettings(n_bootstrap=1000)
    compute_ratings(simulated_votes(3, 90), RatingSettings(n_bootstrap=10))  # warm up imports and caches
    print(f"{'study':>24} {'baseline s':>11} {'compute s':>10} {'write s':>8} {'compute/baseline':>17}")
    for n_raters, per_rater in sizes:
        votes = simulated_votes(n_raters, per_rater)
        repeats = args.repeats if n_raters * per_rater < 100_000 else 1
        baseline = best_of(lambda votes=votes: baseline_paper_numbers(votes), repeats)
        compute = best_of(lambda votes=votes: compute_ratings(votes, settings), repeats)
        report = compute_ratings(votes, settings)
        with tempfile.TemporaryDirectory() as folder:
            write = best_of(
                lambda report=report, folder=folder: write_ratings(report, Path(folder) / "out"), repeats
            )
        label = f"{n_raters} raters x {per_rater} votes"
        print(f"{label:>24} {baseline:11.3f} {compute:10.3f} {write:8.3f} {compute / baseline:17.1f}")


if __name__ == "__main__":
    main()
