"""The browser side of the rating page: keys, zoom and pan on the tile, the keyboard help, styles.

Everything here runs in the rater's browser and changes only how the tile on screen is drawn:
zooming (1x to 4x of the tile as first shown, that is up to 8 screen pixels per stored pixel)
and panning transform the <img> that is already loaded, so its URL and bytes stay those the
server sent for the showing, and the server still decides alone which tile may be seen. The
zoom goes back to 1x whenever another tile is on screen. The keys act on the page's buttons by
their element ids, so a key can do no more than a click.
"""

from __future__ import annotations

TILE_DISPLAY_PX = 512  # native 256 px shown at 2x; zoom 1x..4x of this frame
MAX_ZOOM = 4

# Shown by `?` (and the "Keys" button); the same table is the page's documentation of the keys.
KEYS = (
    ("R or 1", "vote Real"),
    ("S or 2", "vote Synthetic"),
    ("B or Left", "back to the previous tile (where the study allows changes)"),
    ("Enter", "continue after a finished block or the instructions"),
    ("I", "show the study's instructions (when it has any)"),
    ("+ / -", "zoom in / out (1x to 4x); mouse wheel or pinch on the tile"),
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


HEAD_JS = f"""
<script>
(() => {{
  const MAX_ZOOM = {MAX_ZOOM};
  const LEVELS = [1, 1.5, 2, 3, 4];
  // The pixel-zoom choice lasts for the tab's session (sessionStorage), across tiles and reloads;
  // the zoom itself starts at 1x on every tile.
  const PIXELS_KEY = "histosynth-pixel-zoom";
  const view = {{zoom: 1, x: 0, y: 0, src: null, nearest: sessionStorage.getItem(PIXELS_KEY) === "1"}};
  const pointers = new Map();
  let pinch = null;

  const tile = () => document.getElementById("tile-img");
  const frame = () => document.getElementById("tile-view");
  const helpBox = () => document.getElementById("key-help");

  function apply() {{
    const img = tile();
    if (!img) return;
    const size = img.parentElement.clientWidth;
    const slack = size * (view.zoom - 1);
    view.x = Math.min(0, Math.max(-slack, view.x));
    view.y = Math.min(0, Math.max(-slack, view.y));
    img.style.transform = `translate(${{view.x}}px, ${{view.y}}px) scale(${{view.zoom}})`;
    img.dataset.zoom = String(view.zoom);
    const label = document.getElementById("zoom-level");
    if (label) label.textContent = `${{Math.round(view.zoom * 10) / 10}}x`;
    const box = frame();
    if (box) box.classList.toggle("nearest", view.nearest);
  }}

  function resetIfNewTile() {{
    const img = tile();
    const src = img ? img.getAttribute("src") : null;
    if (src === view.src) return;
    view.src = src;
    view.zoom = 1; view.x = 0; view.y = 0;
    apply();
  }}

  function zoomTo(level, cx, cy) {{
    resetIfNewTile();
    const img = tile();
    if (!img) return;
    const size = img.parentElement.clientWidth;
    cx = cx ?? size / 2; cy = cy ?? size / 2;
    level = Math.min(MAX_ZOOM, Math.max(1, level));
    view.x = cx - (cx - view.x) * level / view.zoom;
    view.y = cy - (cy - view.y) * level / view.zoom;
    view.zoom = level;
    apply();
  }}

  function zoomStep(direction) {{
    const next = direction > 0
      ? LEVELS.find((level) => level > view.zoom + 1e-6) ?? MAX_ZOOM
      : [...LEVELS].reverse().find((level) => level < view.zoom - 1e-6) ?? 1;
    zoomTo(next);
  }}

  function syncPixelButton() {{  // only writes on a change: the page's observer sees every write
    const button = document.getElementById("pixel-zoom");
    const pressed = String(view.nearest);
    if (button && button.getAttribute("aria-pressed") !== pressed) {{
      button.setAttribute("aria-pressed", pressed);
    }}
  }}

  function togglePixels() {{
    view.nearest = !view.nearest;
    sessionStorage.setItem(PIXELS_KEY, view.nearest ? "1" : "0");
    syncPixelButton();
    apply();
  }}

  function pan(dx, dy) {{
    resetIfNewTile();
    view.x += dx; view.y += dy;
    apply();
  }}

  function setHelp(open) {{
    const box = helpBox();
    if (!box) return;
    box.hidden = !open;
    if (open) document.getElementById("close-help").focus();
  }}

  function click(id) {{
    const button = document.getElementById(id);
    if (button && !button.disabled && button.offsetParent !== null) {{
      button.click();
      return true;
    }}
    return false;
  }}

  function focusContinue() {{  // at a pause between blocks, Enter (or Space) continues
    const screen = document.getElementById("block-done") || document.getElementById("instructions-screen");
    const button = document.getElementById("continue");
    if (screen && !screen.dataset.focused && button && button.offsetParent !== null) {{
      screen.dataset.focused = "1";
      button.focus();
    }}
  }}

  new MutationObserver(() => {{ resetIfNewTile(); focusContinue(); syncPixelButton(); }})
    .observe(document.documentElement, {{childList: true, subtree: true, attributes: true}});

  document.addEventListener("keydown", (event) => {{
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" &&
        ["text", "password", "number", "search"].includes(target.type)))) return;
    const key = event.key.toLowerCase();
    const help = helpBox();
    if (help && !help.hidden) {{  // while the help is open, no key votes
      if (key === "escape" || key === "?") {{ event.preventDefault(); setHelp(false); }}
      return;
    }}
    if (key === "?") {{ event.preventDefault(); setHelp(true); return; }}
    // Arrows inside the confidence choices move between the choices, as in any radio group;
    // they must not pan, nor go Back.
    if (key.startsWith("arrow") && target && target.tagName === "INPUT" && target.type === "radio") return;
    if (event.shiftKey && key.startsWith("arrow")) {{
      const step = 64;
      const moves = {{arrowleft: [step, 0], arrowright: [-step, 0],
                     arrowup: [0, step], arrowdown: [0, -step]}};
      event.preventDefault();
      pan(...moves[key]);
      return;
    }}
    if (key === "+" || key === "=") {{ event.preventDefault(); zoomStep(1); return; }}
    if (key === "-" || key === "_") {{ event.preventDefault(); zoomStep(-1); return; }}
    if (key === "0") {{ event.preventDefault(); zoomTo(1); return; }}
    if (key === "n") {{ event.preventDefault(); togglePixels(); return; }}
    if (event.repeat) return;  // a held key votes once
    const buttons = {{r: "vote-real", "1": "vote-real", s: "vote-synthetic", "2": "vote-synthetic",
                     b: "go-back", arrowleft: "go-back", enter: "continue",
                     i: "show-instructions"}};
    const id = buttons[key];
    if (key === "enter" && target && target.tagName === "BUTTON") return;  // Enter presses that button
    if (id && click(id)) event.preventDefault();
  }});

  document.addEventListener("click", (event) => {{
    const target = event.target;
    if (!(target instanceof Element)) return;
    if (target.closest("[data-show-help]")) setHelp(true);
    else if (target.closest("[data-close-help]")) setHelp(false);
    else if (target.closest("[data-pixel-zoom]")) togglePixels();
  }});

  document.addEventListener("wheel", (event) => {{
    const box = event.target instanceof Element && event.target.closest("#tile-view");
    if (!box) return;
    event.preventDefault();
    const rect = box.getBoundingClientRect();
    zoomTo(view.zoom * (event.deltaY < 0 ? 1.25 : 0.8), event.clientX - rect.left, event.clientY - rect.top);
  }}, {{passive: false}});

  document.addEventListener("pointerdown", (event) => {{
    const box = event.target instanceof Element && event.target.closest("#tile-view");
    if (!box) return;
    event.preventDefault();
    box.setPointerCapture(event.pointerId);
    pointers.set(event.pointerId, [event.clientX, event.clientY]);
    if (pointers.size === 2) {{
      const [a, b] = [...pointers.values()];
      pinch = {{distance: Math.hypot(a[0] - b[0], a[1] - b[1]), zoom: view.zoom}};
    }}
  }});

  document.addEventListener("pointermove", (event) => {{
    const last = pointers.get(event.pointerId);
    if (!last) return;
    pointers.set(event.pointerId, [event.clientX, event.clientY]);
    if (pinch && pointers.size === 2) {{
      const [a, b] = [...pointers.values()];
      zoomTo(pinch.zoom * Math.hypot(a[0] - b[0], a[1] - b[1]) / pinch.distance);
    }} else if (pointers.size === 1) {{
      pan(event.clientX - last[0], event.clientY - last[1]);
    }}
  }});

  const release = (event) => {{
    pointers.delete(event.pointerId);
    if (pointers.size < 2) pinch = null;
  }};
  document.addEventListener("pointerup", release);
  document.addEventListener("pointercancel", release);
}})();
</script>
"""

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
