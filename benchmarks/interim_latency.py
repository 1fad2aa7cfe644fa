"""Time from "Show interim results" to results, against the CLI's bare start-up in the same run.

An interim look (`rater_app.interim.interim_results`, the confirm handler's whole work) exports
the votes, runs `python -m histosynth evaluate ratings` in a subprocess, reads its tables and
figure back and records the look. The baseline is `python -m histosynth --help` in a
subprocess, the least any CLI call costs here, so the ratio says what the evaluation itself adds
(imports of pandas/statsmodels/matplotlib, the bootstrap, the figure) beyond starting a process.

    python benchmarks/interim_latency.py                       # 3 classes x 3 sources x 10, 8 raters
    python benchmarks/interim_latency.py --classes 9 --sources 5 --raters 10 --repeats 3   # paper-sized

Prints the median and range of each, in seconds, and their ratio. Needs nothing but this machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rater_app import store
from rater_app.interim import interim_results
from rater_app.voting import record_vote, tile_at

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rating_latency import make_study as rating_study  # noqa: E402

CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")


def make_study(folder: Path, classes: int, sources: int, per_class: int, raters: int) -> tuple[Path, int]:
    """A study whose raters have all voted (at random); returns the database and the study id."""
    source_names = ["real", *(f"gen-{i}" for i in range(1, sources))]
    db, secrets = rating_study(folder, per_class, raters, source_names, CLASSES[:classes], side=64)
    with store.connect(db) as conn:
        study_id = store.find_study(conn, "bench").id
        ids = [store.rater_id(conn, study_id, name) for name in secrets]
    choice = random.Random(0)
    for rater in ids:
        for position in range(1, classes * sources * per_class + 1):
            tile = tile_at(str(db), rater, position)
            vote = choice.choice(["real", "synthetic"])
            record_vote(str(db), rater, position, tile.token, vote, None, time.time() - 2)
    return db, study_id


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def cli_help() -> None:
    subprocess.run([sys.executable, "-m", "histosynth", "--help"], capture_output=True, check=True)


def summary(name: str, seconds: list[float]) -> str:
    median = statistics.median(seconds)
    return f"{name:<30} median {median:6.2f} s  (min {min(seconds):.2f}, max {max(seconds):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=3, help="classes (at most 9)")
    parser.add_argument("--sources", type=int, default=3, help="sources, real included")
    parser.add_argument("--per-class", type=int, default=10, help="tiles per class and source")
    parser.add_argument("--raters", type=int, default=8, help="raters, each with every tile voted")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        db, study_id = make_study(Path(temp), args.classes, args.sources, args.per_class, args.raters)
        votes = args.raters * args.classes * args.sources * args.per_class
        print(
            f"{votes} votes: {args.raters} raters x {args.classes} classes x {args.sources} sources x "
            f"{args.per_class} tiles"
        )
        baseline, interim = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            baseline.append(timed(cli_help))
            interim.append(timed(lambda: interim_results(db, study_id)))
    print(summary("baseline: histosynth --help", baseline))
    print(summary("confirm -> interim results", interim))
    print(f"ratio (median / median): {statistics.median(interim) / statistics.median(baseline):.1f}x")


if __name__ == "__main__":
    main()
