"""Time of one admin dashboard refresh at a large study, against the old progress table.

A study of 50 raters x 2,000 votes (100,000 votes) is written straight into a study database
through `rater_app.store` (items without image files: the dashboard never reads images). One
refresh - `dashboard.dashboard` (progress, votes per hour, median reading times, idle, settings)
plus its HTML (`admin_ui.dashboard_html`) - is timed against a baseline in the same run: the
progress query that the admin's table ran before (`store.progress`, answered/total/last vote
per rater). The dashboard must stay well inside its 5 s refresh period.
Run: `.venv/bin/python benchmarks/admin_dashboard.py [--raters 50 --votes 2000]`.
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path

from rater_app import store
from rater_app.admin_ui import dashboard_html
from rater_app.dashboard import dashboard
from rater_app.store import connect, transaction

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_of  # noqa: E402

CLASSES = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
SOURCES = ["real", "KLF8-DM", "VQF8-DM", "SD", "styleGAN2"]


def build_study(db_path: Path, n_raters: int, n_votes: int, seed: int = 0) -> int:
    """A study whose every rater has voted on `n_votes` items, at realistic reading times."""
    rng = random.Random(seed)
    items = [
        {
            "id": secrets.token_hex(12),
            "source": SOURCES[index % len(SOURCES)],
            "class": CLASSES[index % len(CLASSES)],
            "original_path": f"pool/{index}.png",
            "sha256": "0" * 64,
            "png_sha256": "0" * 64,
        }
        for index in range(n_votes)
    ]
    now = time.time()
    with connect(db_path, create=True) as db, transaction(db):
        study_id = store.insert_study(
            db,
            name="large",
            seed=seed,
            classes=CLASSES,
            sources={source: f"pools/{source}" for source in SOURCES},
            settings={"block_by_class": False, "confidence": "none", "allow_changes": True, "repeats": 0},
            admin_secret_hash="x",
        )
        store.insert_items(db, ({**item, "study_id": study_id} for item in items))
        for rater in range(n_raters):
            order = rng.sample(items, len(items))
            showings = [(item["id"], 0, secrets.token_hex(12)) for item in order]
            rater_id = store.insert_rater(db, study_id, f"rater{rater:03d}", "x", "x", showings)
            answered_at = now - rng.uniform(0, 7 * 24 * 3600)
            for position, item in enumerate(order, start=1):
                seconds = rng.expovariate(1 / 6.0)
                answered_at += seconds + rng.uniform(0, 2)
                vote = {
                    "rater_id": rater_id,
                    "position": position,
                    "item_id": item["id"],
                    "repeat": 0,
                    "vote": rng.choice(("real", "synthetic")),
                    "confidence": None,
                    "shown_at": answered_at - seconds,
                    "answered_at": answered_at,
                }
                store.insert_vote(db, vote)
    return study_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raters", type=int, default=50)
    parser.add_argument("--votes", type=int, default=2000, help="votes (and items) per rater")
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement (best is kept)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db_path = Path(folder) / "study.db"
        started = time.perf_counter()
        study_id = build_study(db_path, args.raters, args.votes)
        print(f"built {args.raters} raters x {args.votes} votes in {time.perf_counter() - started:.1f} s")

        def baseline() -> None:
            with connect(db_path) as db:
                store.progress(db, study_id)

        def refresh() -> None:
            dashboard_html(dashboard(db_path, study_id))

        base = best_of(baseline, args.repeats)
        full = best_of(refresh, args.repeats)
    print(f"{'progress query s':>17} {'dashboard refresh s':>20} {'refresh/baseline':>17}")
    print(f"{base:17.3f} {full:20.3f} {full / base:17.1f}")


if __name__ == "__main__":
    main()
