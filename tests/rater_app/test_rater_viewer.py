"""The tile viewer in a real Chromium: zoom and pan, the keyboard help, focus, contrast, small screens.

Zoom happens in the browser: the tile's rendered size changes while its URL stays the one the
server gave the showing and no other tile bytes are fetched for it; the next tile starts at 1x.
Contrast is measured on the rendered page with the WCAG 2.x formula, computed here.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from rater_app.create import create_study
from rater_app.raters import add_raters

pytestmark = pytest.mark.browser


@pytest.fixture
def study(tmp_path, make_pool, write_study) -> tuple[Path, dict[str, str]]:
    sources = {"real": make_pool("real", per_class=2), "KLF8-DM": make_pool("klf8", per_class=2)}
    db = tmp_path / "study.db"
    create_study(write_study(sources, images_per_cell=2), db)
    return db, {r.name: r.secret for r in add_raters(str(db), "pilot", ["ann"])}


def open_page(browser, base: str, secret: str, **context):
    page = browser.new_context(**context).new_page()
    page.goto(f"{base}/login?name=ann")
    page.fill("#secret", secret)
    page.click("#login")
    wait_for_position(page, 1)
    return page


def wait_for_position(page, position: int) -> None:
    page.wait_for_selector(f"#tile-img[data-position='{position}']", timeout=30_000)
    page.wait_for_function("() => document.querySelector('#tile-img').complete")


def rendered_width(page) -> float:
    return page.eval_on_selector("#tile-img", "img => img.getBoundingClientRect().width")


def test_zoom_and_pan_change_the_drawing_not_the_tile(study, rating_server, browser) -> None:
    db, logins = study
    page = open_page(browser, rating_server(db).url, logins["ann"])
    src = page.get_attribute("#tile-img", "src")
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url) if "/tiles/" in request.url else None)
    assert rendered_width(page) == pytest.approx(512)
    page.keyboard.press("+")
    page.keyboard.press("+")
    assert rendered_width(page) == pytest.approx(1024)  # 1x -> 1.5x -> 2x
    assert page.inner_text("#zoom-level") == "2x"
    for _ in range(5):
        page.keyboard.press("+")
    assert rendered_width(page) == pytest.approx(2048)  # capped at 4x
    page.keyboard.press("0")
    assert rendered_width(page) == pytest.approx(512)
    box = page.locator("#tile-view").bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.wheel(0, -200)
    page.wait_for_function("() => document.querySelector('#tile-img').dataset.zoom > 1")
    before = page.eval_on_selector("#tile-img", "img => img.getBoundingClientRect().left")
    page.mouse.down()
    page.mouse.move(box["x"] + 60, box["y"] + 100, steps=4)
    page.mouse.up()
    after_drag = page.eval_on_selector("#tile-img", "img => img.getBoundingClientRect().left")
    assert after_drag < before  # dragged left: the image moved with the pointer
    page.keyboard.press("Shift+ArrowLeft")
    assert page.eval_on_selector("#tile-img", "img => img.getBoundingClientRect().left") > after_drag
    page.keyboard.press("n")
    assert page.eval_on_selector("#tile-img", "img => getComputedStyle(img).imageRendering") == "pixelated"
    assert page.get_attribute("#tile-img", "src") == src and fetched == []  # same URL, no bytes fetched
    assert page.get_attribute("#tile-img", "data-position") == "1"  # Shift+Left panned, did not go back
    page.keyboard.press("r")
    wait_for_position(page, 2)
    assert rendered_width(page) == pytest.approx(512)  # the next tile starts at 1x
    assert page.inner_text("#zoom-level") == "1x"


def test_keyboard_help_opens_on_question_mark_and_blocks_votes(study, rating_server, browser) -> None:
    db, logins = study
    page = open_page(browser, rating_server(db).url, logins["ann"])
    assert not page.is_visible("#key-help")
    page.keyboard.press("?")
    assert page.is_visible("#key-help")
    text = page.inner_text("#key-help")
    assert "vote Real" in text and "zoom" in text and "Esc" in text
    page.keyboard.press("r")  # no vote while the help is open
    page.wait_for_timeout(300)
    assert page.get_attribute("#tile-img", "data-position") == "1"
    page.keyboard.press("Escape")
    assert not page.is_visible("#key-help")
    page.click("#show-help")  # the same help from a button
    assert page.is_visible("#key-help")
    page.click("#close-help")
    page.keyboard.press("r")
    wait_for_position(page, 2)


def contrast(foreground: str, background: str) -> float:
    """WCAG 2.x contrast ratio of two CSS rgb()/rgba() colours (alpha ignored: opaque colours only)."""

    def luminance(colour: str) -> float:
        channels = [int(value) / 255 for value in re.findall(r"[\d.]+", colour)[:3]]
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    light, dark = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


COLOURS = """el => {
  let node = el, background = "rgba(0, 0, 0, 0)";
  while (node && (background === "rgba(0, 0, 0, 0)" || background === "transparent")) {
    background = getComputedStyle(node).backgroundColor; node = node.parentElement;
  }
  return [getComputedStyle(el).color, background === "rgba(0, 0, 0, 0)" ? "rgb(255, 255, 255)" : background];
}"""


def test_text_contrast_is_wcag_aa_and_focus_is_visible(study, rating_server, browser) -> None:
    assert contrast("rgb(0, 0, 0)", "rgb(255, 255, 255)") == pytest.approx(21.0)  # the formula's ends
    assert contrast("rgb(118, 118, 118)", "rgb(255, 255, 255)") == pytest.approx(4.54, abs=0.01)
    db, logins = study
    page = open_page(browser, rating_server(db).url, logins["ann"])
    for selector in ("#vote-real", "#vote-synthetic", "#progress p", "#who p", "#show-help", "#zoom-level"):
        foreground, background = page.eval_on_selector(selector, COLOURS)
        assert contrast(foreground, background) >= 4.5, (selector, foreground, background)
    page.keyboard.press("Tab")
    focused = set()
    for _ in range(12):  # every focusable control shows a visible outline when reached by keyboard
        style = page.evaluate(
            "() => { const s = getComputedStyle(document.activeElement);"
            " return [document.activeElement.tagName, s.outlineStyle, parseFloat(s.outlineWidth)]; }"
        )
        if style[0] == "BUTTON":
            assert style[1] != "none" and style[2] >= 2, style
            focused.add(page.evaluate("() => document.activeElement.id"))
        page.keyboard.press("Tab")
    assert {"vote-real", "vote-synthetic", "show-help"} <= focused  # reachable by keyboard


@pytest.mark.parametrize("size", [(1024, 768), (1180, 820)], ids=["1024x768", "tablet-landscape"])
def test_tile_and_buttons_fit_without_scrolling(study, rating_server, browser, size) -> None:
    db, logins = study
    width, height = size
    viewport = {"width": width, "height": height}
    page = open_page(browser, rating_server(db).url, logins["ann"], viewport=viewport)
    for selector in ("#tile-view", "#vote-real", "#vote-synthetic", "#progress"):
        box = page.locator(selector).bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= height, (selector, box)
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, (selector, box)


def bar(page, name: str) -> tuple[int, int, str]:
    value, maximum = page.eval_on_selector(f"#{name}", "p => [p.value, p.max]")
    return int(value), int(maximum), page.inner_text(f"#{name}-label")


def test_progress_bars_block_pause_and_end_screen(
    tmp_path, make_pool, write_study, rating_server, browser
) -> None:
    sources = {"real": make_pool("real", per_class=1), "KLF8-DM": make_pool("klf8", per_class=1)}
    db = tmp_path / "blocks.db"
    create_study(write_study(sources, images_per_cell=1), db)  # 2 classes x 2 sources: 2 blocks of 2
    secret = add_raters(str(db), "pilot", ["ann"])[0].secret
    page = open_page(browser, rating_server(db).url, secret)
    assert bar(page, "study-progress") == (0, 4, "Study: 0 of 4 answered")
    assert bar(page, "block-progress") == (0, 2, "Block 1 of 2: 0 of 2")
    page.keyboard.press("r")
    wait_for_position(page, 2)
    assert bar(page, "study-progress")[0] == 1 and bar(page, "block-progress")[:2] == (1, 2)
    page.keyboard.press("s")
    page.wait_for_selector("#block-done", timeout=30_000)
    assert "Block 1 of 2 done" in page.inner_text("#block-done")
    assert page.is_disabled("#vote-real") and page.is_disabled("#vote-synthetic")
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'continue'")
    assert bar(page, "study-progress")[0] == 2 and bar(page, "block-progress")[:2] == (0, 2)
    assert "ADI" not in page.inner_text("#bars") and "TUM" not in page.inner_text("#tile-frame")
    page.keyboard.press("r")  # no vote from the pause screen
    page.wait_for_timeout(300)
    page.keyboard.press("Enter")
    wait_for_position(page, 3)
    assert bar(page, "block-progress") == (0, 2, "Block 2 of 2: 0 of 2")
    page.keyboard.press("r")
    wait_for_position(page, 4)
    page.keyboard.press("r")
    page.wait_for_selector("#all-done", timeout=30_000)
    assert "All 4 tiles rated" in page.inner_text("#all-done") and "Thank you" in page.inner_text("#all-done")
    assert bar(page, "study-progress") == (4, 4, "Study: 4 of 4 answered")
    assert page.is_visible("#go-back")  # changes allowed: Back from the end screen
    page.keyboard.press("b")
    wait_for_position(page, 4)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT position, vote FROM votes ORDER BY position").fetchall() == [
            (1, "real"),
            (2, "synthetic"),
            (3, "real"),
            (4, "real"),
        ]


def test_instructions_before_the_first_tile_and_on_demand(
    tmp_path, make_pool, write_study, rating_server, browser
) -> None:
    sources = {"real": make_pool("real", per_class=1), "KLF8-DM": make_pool("klf8", per_class=1)}
    db = tmp_path / "instructed.db"
    instructions = "Judge the **nuclei** and the stroma; answer as you would on a slide."
    create_study(write_study(sources, images_per_cell=1, instructions=instructions), db)
    secret = add_raters(str(db), "pilot", ["ann"])[0].secret
    page = browser.new_page()
    page.goto(f"{rating_server(db).url}/login?name=ann")
    page.fill("#secret", secret)
    page.click("#login")
    page.wait_for_selector("#instructions-screen", timeout=30_000)
    assert page.inner_text("#instructions strong") == "nuclei"  # the Markdown is rendered
    assert page.query_selector("#tile-img") is None and page.is_disabled("#vote-real")
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'continue'")
    page.keyboard.press("Enter")
    wait_for_position(page, 1)
    assert not page.is_visible("#instructions")
    page.keyboard.press("r")
    wait_for_position(page, 2)
    page.keyboard.press("i")  # on demand, then back to the same tile
    page.wait_for_selector("#instructions-screen", timeout=30_000)
    assert "stroma" in page.inner_text("#instructions")
    page.click("#continue")
    wait_for_position(page, 2)
    page.reload()  # a rater who has started is not shown the instructions again
    wait_for_position(page, 2)
