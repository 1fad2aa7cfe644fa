"""Key press to new tile painted, in a real Chromium: with the page's prefetch, and without it.

A rater in headless Chromium rates a whole study with the keyboard. In the page, a capturing
keydown listener notes the time of each key press, and the time the next tile is on screen is
taken two animation frames after its <img> has loaded (the frame that shows it has been
painted). The baseline, in the same run and against the same server, is a second rater whose browser
fails each prefetch request (a Playwright route), so every new tile waits for its download
after the vote's round trip. Both browsers see the
same emulated network round trip (`--latency`, as from a clinic to a hosted server); on bare
loopback a tile's download costs about a millisecond and the two come out alike.

    python benchmarks/tile_paint_latency.py --per-class 4 --think 0.3 --latency 40

Prints p50/p95/p99 in milliseconds for both and their ratio (no prefetch / prefetch). Needs
Debian's /usr/bin/chromium and nothing else.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rating_latency import make_study, percentiles, start_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
MEASURE_JS = """
(() => {
  const state = window.__paint = {pressed: null, samples: [], shown: null};
  document.addEventListener("keydown", () => { state.pressed = performance.now(); }, true);
  new MutationObserver(() => {
    const img = document.getElementById("tile-img");
    if (!img || img.dataset.position === state.shown) return;
    state.shown = img.dataset.position;
    const pressed = state.pressed;
    if (pressed === null) return;  // the first tile comes with the page, not after a key
    const painted = () => requestAnimationFrame(() => requestAnimationFrame(() => {
      state.samples.push(performance.now() - pressed);
    }));
    if (img.complete && img.naturalWidth) painted(); else img.addEventListener("load", painted, {once: true});
  }).observe(document, {childList: true, subtree: true});
})();
"""


def refuse_prefetch():
    """A route handler that fails each tile's first request except the first tile's: that request
    is the page's prefetch, so the tile is downloaded again (a failed image is not kept) only once
    it is shown, as without prefetching."""
    requested: set[str] = set()

    def handle(route) -> None:
        token = route.request.url.rsplit("/", 1)[1]
        first_tile = not requested
        if token in requested or first_tile:
            requested.add(token)
            route.continue_()
            return
        requested.add(token)
        route.abort()

    return handle


def rate_in_browser(
    browser, url: str, name: str, secret: str, think: float, latency_ms: float, prefetch: bool
) -> list[float]:
    """Rate every tile with the keyboard; the key-press-to-painted times in seconds."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    session = context.new_cdp_session(page)
    session.send("Network.enable")
    session.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": latency_ms, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    if not prefetch:
        page.route("**/tiles/*.png", refuse_prefetch())
    page.add_init_script(MEASURE_JS)
    page.goto(f"{url}/login?name={name}")
    page.fill("#secret", secret)
    page.click("#login")
    rng = np.random.default_rng(sum(map(ord, name)))
    while True:
        page.wait_for_selector("#tile-img, #block-done, #all-done", timeout=60_000)
        if page.query_selector("#all-done"):
            break
        if page.query_selector("#block-done"):
            page.keyboard.press("Enter")
            page.wait_for_selector("#tile-img", timeout=60_000)
        position = page.get_attribute("#tile-img", "data-position")
        page.wait_for_function("() => document.querySelector('#tile-img').complete", timeout=60_000)
        page.wait_for_timeout(think * 1000 * rng.uniform(0.5, 1.5))  # looking at the tile
        page.keyboard.press("r" if int(position) % 2 else "s")
        page.wait_for_function(
            f"() => !document.querySelector('#tile-img[data-position=\"{position}\"]')", timeout=60_000
        )
    samples = page.evaluate("() => window.__paint.samples")
    downloads = page.evaluate(
        "() => performance.getEntriesByType('resource').filter(e => e.name.includes('/tiles/')).length"
    )
    print(f"{name}: {downloads} tile downloads on the page, {len(samples)} tiles timed", file=sys.stderr)
    context.close()
    return [value / 1000 for value in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=4, help="tiles per class and source (3 x 3 cells)")
    parser.add_argument("--think", type=float, default=0.3, help="mean seconds a rater looks at a tile")
    parser.add_argument("--latency", type=float, default=40.0, help="emulated network round trip, ms")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db, secrets = make_study(Path(folder), args.per_class, raters=2)
        process, url = start_server(db)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                (name_a, secret_a), (name_b, secret_b) = secrets.items()
                prefetched = rate_in_browser(
                    browser, url, name_a, secret_a, args.think, args.latency, prefetch=True
                )
                fetched = rate_in_browser(
                    browser, url, name_b, secret_b, args.think, args.latency, prefetch=False
                )
                browser.close()
        finally:
            os.killpg(process.pid, signal.SIGTERM)
    with_prefetch, without = percentiles(prefetched), percentiles(fetched)
    print(
        f"key press -> tile painted, {len(prefetched)} and {len(fetched)} tiles,"
        f" think {args.think} s, network round trip {args.latency} ms"
    )
    print(f"{'':26}{'p50':>8} {'p95':>8} {'p99':>8}  (ms)")
    print(f"{'with prefetch':26}" + " ".join(f"{with_prefetch[k]:8.1f}" for k in with_prefetch))
    print(f"{'no prefetch':26}" + " ".join(f"{without[k]:8.1f}" for k in without))
    print(
        f"{'ratio (none / prefetch)':26}" + " ".join(f"{without[k] / with_prefetch[k]:8.2f}" for k in without)
    )


if __name__ == "__main__":
    main()
