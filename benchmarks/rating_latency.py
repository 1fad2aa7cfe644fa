"""Latency of the rating loop under N concurrent raters, against a bare page of the same server.

For each vote we time the whole switch a rater feels: the vote event through Gradio's queue,
its streamed answer and the download of the next tile image. In the same run, and at the same
concurrency, we time a bare GET of the login page (static HTML, no database) from the same
server, so the ratio says what the rating path costs beyond serving anything at all.

    python benchmarks/rating_latency.py --raters 20 --per-class 6 --think 1.0
    python benchmarks/rating_latency.py --raters 20 --think 0     # saturation: no time to look

Prints p50/p95/p99 in milliseconds for both and their ratio. Needs nothing but this machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from rater_app.create import create_study
from rater_app.raters import add_raters

# The scripted rater is a test support module (it drives Gradio's private routes), shared with
# the tests that load the app; it is not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "rater_app"))
from simulated_rater import simulated_rater  # noqa: E402


def make_study(
    folder: Path,
    per_class: int,
    raters: int,
    source_names: Sequence[str] = ("real", "gen-a", "gen-b"),
    classes: Sequence[str] = ("ADI", "DEB", "TUM"),
    side: int = 224,
) -> tuple[Path, dict[str, str]]:
    """A study of smooth random tiles with its raters added; the database and each rater's secret.

    Shared by the benchmarks that need a study on disk (tile paint, interim results)."""
    rng = np.random.default_rng(0)
    sources = {}
    for source in source_names:
        sources[source] = folder / "pools" / source
        for class_name in classes:
            for index in range(per_class):
                path = sources[source] / class_name / f"{index}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                small = rng.integers(0, 255, size=(side // 8, side // 8, 3), dtype=np.uint8)
                Image.fromarray(small).resize((side, side), Image.Resampling.BILINEAR).save(path)
    toml = folder / "study.toml"
    lines = ["[study]", 'name = "bench"', "seed = 1", f"images_per_cell = {per_class}", "[sources]"]
    lines += [f'"{name}" = "{path}"' for name, path in sources.items()]
    toml.write_text("\n".join(lines) + "\n")
    db = folder / "study.db"
    create_study(toml, db)
    logins = add_raters(str(db), "bench", [f"rater{i:02d}" for i in range(raters)])
    return db, {login.name: login.secret for login in logins}


def start_server(db: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "histosynth", "rate", "--db", str(db), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/login", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def rate_study(url: str, name: str, secret: str, barrier: threading.Barrier, think: float) -> list[float]:
    rater = simulated_rater(url, name, secret)
    rng = np.random.default_rng(sum(map(ord, name)))
    barrier.wait()
    timings = []
    while rater.view.position is not None:
        time.sleep(think * rng.uniform(0.5, 1.5))  # looking at the tile
        started = time.perf_counter()
        rater.vote("real" if rater.view.position % 2 else "synthetic")  # includes the next tile's image
        timings.append(time.perf_counter() - started)
    rater.close()
    return timings


def fetch_static(url: str, count: int, barrier: threading.Barrier, think: float) -> list[float]:
    timings = []
    rng = np.random.default_rng(count)
    with httpx.Client(base_url=url) as client:
        barrier.wait()
        for _ in range(count):
            time.sleep(think * rng.uniform(0.5, 1.5))
            started = time.perf_counter()
            client.get("/login").raise_for_status()
            timings.append(time.perf_counter() - started)
    return timings


def percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.array(seconds) * 1000
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 95, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raters", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=6, help="tiles per class and source (3 x 3 cells)")
    parser.add_argument(
        "--think",
        type=float,
        default=1.0,
        help="mean seconds a rater looks at a tile (0: saturate the server)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db, secrets = make_study(Path(folder), args.per_class, args.raters)
        process, url = start_server(db)
        try:
            votes_per_rater = 9 * args.per_class
            with ThreadPoolExecutor(max_workers=args.raters) as pool:
                barrier = threading.Barrier(args.raters)
                rating = pool.map(lambda n: rate_study(url, n, secrets[n], barrier, args.think), secrets)
                vote_times = [t for timings in rating for t in timings]
                barrier = threading.Barrier(args.raters)
                static = pool.map(
                    lambda _: fetch_static(url, votes_per_rater, barrier, args.think), range(args.raters)
                )
                static_times = [t for timings in static for t in timings]
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
    vote, bare = percentiles(vote_times), percentiles(static_times)
    print(
        f"{args.raters} concurrent raters, think time {args.think:g} s, "
        f"{len(vote_times)} votes, {len(static_times)} static requests"
    )
    print(f"{'':22}{'p50':>9}{'p95':>9}{'p99':>9}  (ms)")
    print(f"{'vote -> next tile':22}" + "".join(f"{vote[k]:9.1f}" for k in ("p50", "p95", "p99")))
    print(f"{'bare static page':22}" + "".join(f"{bare[k]:9.1f}" for k in ("p50", "p95", "p99")))
    print(f"{'ratio':22}" + "".join(f"{vote[k] / bare[k]:9.1f}" for k in ("p50", "p95", "p99")))


if __name__ == "__main__":
    main()
