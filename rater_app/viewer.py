"""The browser side of the rating page: keys, zoom and pan on the tile, the keyboard help, styles.

Everything here runs in the rater's browser and changes only how the tile on screen is drawn:
zooming (1x to 4x of the tile as first shown, that is up to 8 screen pixels per stored pixel)
and panning transform the <img> that is already loaded, so its URL and bytes stay those the
server sent for the showing, and the server still decides alone which tile may be seen. The
zoom goes back to 1x whenever another tile is on screen. The keys act on the page's buttons by
their element ids, so a key can do no more than a click; a held key answers once, and the second
click of a double click on an answer button is dropped (the first one's answer may already have
brought up the next tile, which the rater has not seen).

The script itself is `static/viewer.js`, plain JavaScript that is read, checked (`node --check`)
and cached as the code it is. The numbers it needs are set here alone and reach it on the tag
that loads it (`head_html`); `server.py` serves it under a name that changes with its bytes.
"""

from __future__ import annotations

import hashlib
import html
from pathlib import Path

TILE_DISPLAY_PX = 512  # native 256 px shown at 2x; zoom 1x..4x of this frame
MAX_ZOOM = 4
ZOOM_STEPS = (1, 1.5, 2, 3, MAX_ZOOM)  # what + and - step through; wheel and pinch zoom freely
SCRIPT_FILE = Path(__file__).parent / "static" / "viewer.js"  # the browser side; served by server.py

# Shown by `?` (and the "Keys" button); the same table is the page's documentation of the keys.
KEYS = (
    ("R or 1", "vote Real"),
    ("S or 2", "vote Synthetic"),
    ("B or Left", "back to the previous tile (where the study allows changes)"),
    ("Enter", "continue after a finished block or the instructions"),
    ("I", "show the study's instructions (when it has any)"),
    ("+ / -", f"zoom in / out (1x to {MAX_ZOOM}x); mouse wheel or pinch on the tile"),
    ("0", "zoom back to 1x"),
    ("Shift + arrows", "pan the zoomed tile; or drag it"),
    ("N", "switch between smooth and nearest-neighbour (pixel) zoom; kept for the next tiles"),
    ("?", "show or hide this help; Esc closes it"),
)


def tools_html() -> str:
    """The viewer's own buttons (pixel zoom, keys) and the keyboard help overlay (hidden until `?`).

    They are plain buttons handled by the page's script, not Gradio events: what they change is
    drawn in the browser and never asks the server for anything.
    """
    rows = "".join(f"<tr><th scope='row'><kbd>{key}</kbd></th><td>{what}</td></tr>" for key, what in KEYS)
    return (
        '<div class="view-tools">'
        '<button type="button" id="pixel-zoom" aria-pressed="false" data-pixel-zoom'
        ' title="Draw the zoomed tile with nearest-neighbour pixels instead of smoothing">'
        "Pixel zoom (N)</button>"
        '<button type="button" id="show-help" data-show-help>Keys (?)</button></div>'
        '<div id="key-help" role="dialog" aria-modal="true" aria-labelledby="key-help-title" hidden>'
        '<div class="key-help-box"><h2 id="key-help-title">Keys</h2>'
        f"<table>{rows}</table>"
        '<button type="button" id="close-help" data-close-help>Close (Esc)</button></div></div>'
    )


def script_name(content: bytes) -> str:
    """The served name of the viewer script with these bytes: `viewer.<first 12 hex of sha256>.js`.

    The name changes whenever the bytes do, so the browser may keep the file for a year without
    asking again (`immutable`), and a new version reaches every rater at their next page load.
    """
    return f"viewer.{hashlib.sha256(content).hexdigest()[:12]}.js"


def head_html(src: str) -> str:
    """The page's head: the script tag that loads `static/viewer.js` from `src`.

    The numbers the script needs come from this module's constants as data- attributes, which
    the script reads from its own tag (`document.currentScript`), so they are set in one place.
    """
    steps = " ".join(f"{step:g}" for step in ZOOM_STEPS)
    return (
        f'<script src="{html.escape(src)}" data-max-zoom="{MAX_ZOOM:g}" data-zoom-steps="{steps}" defer>'
        "</script>"
    )


# Colours are chosen for WCAG AA (4.5:1 for text) against their backgrounds; focus is a thick
# outline that every control shows when reached by keyboard. The view tools switch colours
# without a transition: a toggle's state shows at once, and never passes through low contrast.
CSS = f"""
#tile-frame {{ display: flex; justify-content: center; }}
#tile-view {{ width: {TILE_DISPLAY_PX}px; height: {TILE_DISPLAY_PX}px; overflow: hidden; position: relative;
  touch-action: none; cursor: grab; background: #1f2937; }}
#tile-view img.tile {{ width: {TILE_DISPLAY_PX}px; height: {TILE_DISPLAY_PX}px; max-width: none;
  transform-origin: 0 0; display: block; user-select: none; -webkit-user-drag: none; }}
#tile-view.nearest img.tile {{ image-rendering: pixelated; }}
#zoom-level {{ position: absolute; right: 6px; bottom: 6px; padding: 1px 6px; border-radius: 4px;
  background: #111827; color: #ffffff; font-size: 0.85rem; pointer-events: none; }}
#progress {{ text-align: center; }}
#progress p, #who p {{ margin: 0; }}
#rating-area {{ align-items: flex-start; }}
#controls {{ gap: 0.6rem; }}
.view-tools {{ display: flex; gap: 0.5rem; flex-wrap: wrap; }}
.view-tools button {{ padding: 0.35rem 0.75rem; border: 1px solid #4b5563; border-radius: 6px;
  background: #ffffff; color: #111827; transition: none; }}
#pixel-zoom[aria-pressed="true"] {{ background: #111827; border-color: #111827; color: #ffffff; }}
.bars {{ display: flex; gap: 1.5rem; justify-content: center; flex-wrap: wrap; font-size: 0.9rem; }}
.bar {{ display: flex; align-items: center; gap: 0.5rem; }}
.bar progress {{ width: 10rem; height: 0.8rem; accent-color: #1d4ed8; }}
#who, #bars {{ padding: 0; min-height: 0; }}
#tile-frame .screen {{ width: {TILE_DISPLAY_PX}px; height: {TILE_DISPLAY_PX}px; display: flex;
  flex-direction: column; justify-content: center; align-items: center; text-align: center;
  border: 1px solid #6b7280; border-radius: 8px; }}
#vote-real, #vote-synthetic {{ background: #1d4ed8; border-color: #1d4ed8; color: #ffffff; }}
#vote-real:hover, #vote-synthetic:hover {{ background: #1e3a8a; }}
button:focus-visible, a:focus-visible, input:focus-visible, [tabindex]:focus-visible {{
  outline: 3px solid #b45309; outline-offset: 2px; }}
#key-help {{ position: fixed; inset: 0; background: rgba(17, 24, 39, 0.6); display: flex;
  align-items: center; justify-content: center; z-index: 1000; }}
#key-help[hidden] {{ display: none; }}
.key-help-box {{ background: #ffffff; color: #111827; padding: 1rem 1.5rem; border-radius: 8px;
  max-width: 34rem; }}
.key-help-box th {{ text-align: left; padding-right: 1rem; white-space: nowrap; }}
.key-help-box kbd {{ border: 1px solid #4b5563; border-radius: 3px; padding: 0 4px; }}
"""
