// The rating page's viewer: keys, zoom and pan on the tile, pixel zoom, the keyboard help.
//
// What it does and why is said in rater_app/viewer.py, which also writes the script tag that loads
// this file (head_html) and the page's elements that it drives by id. It only changes how the
// <img> already loaded is drawn, and clicks the page's own buttons: it never asks the server for
// anything.
(() => {
  // The numbers are set in rater_app/viewer.py alone and come as the script tag's data- attributes.
  const config = document.currentScript && document.currentScript.dataset;
  if (!config || !config.maxZoom || !config.zoomSteps) {
    throw new Error("viewer.js needs the script tag of rater_app.viewer.head_html (data-max-zoom, data-zoom-steps)");
  }
  const MAX_ZOOM = Number(config.maxZoom);
  const LEVELS = config.zoomSteps.split(" ").map(Number);
  // The pixel-zoom choice lasts for the tab's session (sessionStorage), across tiles and reloads;
  // the zoom itself starts at 1x on every tile.
  const PIXELS_KEY = "histosynth-pixel-zoom";
  const view = {zoom: 1, x: 0, y: 0, src: null, nearest: sessionStorage.getItem(PIXELS_KEY) === "1"};
  const ANSWER_BUTTONS = "#vote-real, #vote-synthetic, #go-back";
  const pointers = new Map();
  let pinch = null;

  const tile = () => document.getElementById("tile-img");
  const frame = () => document.getElementById("tile-view");
  const helpBox = () => document.getElementById("key-help");

  function apply() {
    const img = tile();
    if (!img) return;
    const size = img.parentElement.clientWidth;
    const slack = size * (view.zoom - 1);
    view.x = Math.min(0, Math.max(-slack, view.x));
    view.y = Math.min(0, Math.max(-slack, view.y));
    img.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.zoom})`;
    img.dataset.zoom = String(view.zoom);
    const label = document.getElementById("zoom-level");
    if (label) label.textContent = `${Math.round(view.zoom * 10) / 10}x`;
    const box = frame();
    if (box) box.classList.toggle("nearest", view.nearest);
  }

  function resetIfNewTile() {
    const img = tile();
    const src = img ? img.getAttribute("src") : null;
    if (src === view.src) return;
    view.src = src;
    view.zoom = 1; view.x = 0; view.y = 0;
    apply();
  }

  function zoomTo(level, cx, cy) {
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
  }

  function zoomStep(direction) {
    const next = direction > 0
      ? LEVELS.find((level) => level > view.zoom + 1e-6) ?? MAX_ZOOM
      : [...LEVELS].reverse().find((level) => level < view.zoom - 1e-6) ?? 1;
    zoomTo(next);
  }

  function syncPixelButton() {  // only writes on a change: the page's observer sees every write
    const button = document.getElementById("pixel-zoom");
    const pressed = String(view.nearest);
    if (button && button.getAttribute("aria-pressed") !== pressed) {
      button.setAttribute("aria-pressed", pressed);
    }
  }

  function togglePixels() {
    view.nearest = !view.nearest;
    sessionStorage.setItem(PIXELS_KEY, view.nearest ? "1" : "0");
    syncPixelButton();
    apply();
  }

  function pan(dx, dy) {
    resetIfNewTile();
    view.x += dx; view.y += dy;
    apply();
  }

  function setHelp(open) {
    const box = helpBox();
    if (!box) return;
    box.hidden = !open;
    if (open) document.getElementById("close-help").focus();
  }

  function click(id) {
    const button = document.getElementById(id);
    if (button && !button.disabled && button.offsetParent !== null) {
      button.click();
      return true;
    }
    return false;
  }

  function focusContinue() {  // at a pause between blocks, Enter (or Space) continues
    const screen = document.getElementById("block-done") || document.getElementById("instructions-screen");
    const button = document.getElementById("continue");
    if (screen && !screen.dataset.focused && button && button.offsetParent !== null) {
      screen.dataset.focused = "1";
      button.focus();
    }
  }

  new MutationObserver(() => { resetIfNewTile(); focusContinue(); syncPixelButton(); })
    .observe(document.documentElement, {childList: true, subtree: true, attributes: true});

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" &&
        ["text", "password", "number", "search"].includes(target.type)))) return;
    const key = event.key.toLowerCase();
    const help = helpBox();
    if (help && !help.hidden) {  // while the help is open, no key votes
      if (key === "escape" || key === "?") { event.preventDefault(); setHelp(false); }
      return;
    }
    if (key === "?") { event.preventDefault(); setHelp(true); return; }
    // Arrows inside the confidence choices move between the choices, as in any radio group;
    // they must not pan, nor go Back.
    if (key.startsWith("arrow") && target && target.tagName === "INPUT" && target.type === "radio") return;
    if (event.shiftKey && key.startsWith("arrow")) {
      const step = 64;
      const moves = {arrowleft: [step, 0], arrowright: [-step, 0],
                     arrowup: [0, step], arrowdown: [0, -step]};
      event.preventDefault();
      pan(...moves[key]);
      return;
    }
    if (key === "+" || key === "=") { event.preventDefault(); zoomStep(1); return; }
    if (key === "-" || key === "_") { event.preventDefault(); zoomStep(-1); return; }
    if (key === "0") { event.preventDefault(); zoomTo(1); return; }
    if (key === "n") { event.preventDefault(); togglePixels(); return; }
    if (event.repeat) return;  // a held key votes once
    const buttons = {r: "vote-real", "1": "vote-real", s: "vote-synthetic", "2": "vote-synthetic",
                     b: "go-back", arrowleft: "go-back", enter: "continue",
                     i: "show-instructions"};
    const id = buttons[key];
    if (key === "enter" && target && target.tagName === "BUTTON") return;  // Enter presses that button
    if (id && click(id)) event.preventDefault();
  });

  // The second click of a double click (the browser counts it in `detail`) would answer the tile
  // that the first click brought up, unseen, whenever the server answers within the double-click
  // interval. Caught on the way down, before the button's own handler; key presses (detail 0)
  // and single clicks pass.
  document.addEventListener("click", (event) => {
    const target = event.target;
    if (event.detail > 1 && target instanceof Element && target.closest(ANSWER_BUTTONS)) {
      event.stopImmediatePropagation();
      event.preventDefault();
    }
  }, {capture: true});

  document.addEventListener("click", (event) => {
    const target = event.target;
    if (!(target instanceof Element)) return;
    if (target.closest("[data-show-help]")) setHelp(true);
    else if (target.closest("[data-close-help]")) setHelp(false);
    else if (target.closest("[data-pixel-zoom]")) togglePixels();
  });

  document.addEventListener("wheel", (event) => {
    const box = event.target instanceof Element && event.target.closest("#tile-view");
    if (!box) return;
    event.preventDefault();
    const rect = box.getBoundingClientRect();
    zoomTo(view.zoom * (event.deltaY < 0 ? 1.25 : 0.8), event.clientX - rect.left, event.clientY - rect.top);
  }, {passive: false});

  document.addEventListener("pointerdown", (event) => {
    const box = event.target instanceof Element && event.target.closest("#tile-view");
    if (!box) return;
    event.preventDefault();
    box.setPointerCapture(event.pointerId);
    pointers.set(event.pointerId, [event.clientX, event.clientY]);
    if (pointers.size === 2) {
      const [a, b] = [...pointers.values()];
      pinch = {distance: Math.hypot(a[0] - b[0], a[1] - b[1]), zoom: view.zoom};
    }
  });

  document.addEventListener("pointermove", (event) => {
    const last = pointers.get(event.pointerId);
    if (!last) return;
    pointers.set(event.pointerId, [event.clientX, event.clientY]);
    if (pinch && pointers.size === 2) {
      const [a, b] = [...pointers.values()];
      zoomTo(pinch.zoom * Math.hypot(a[0] - b[0], a[1] - b[1]) / pinch.distance);
    } else if (pointers.size === 1) {
      pan(event.clientX - last[0], event.clientY - last[1]);
    }
  });

  const release = (event) => {
    pointers.delete(event.pointerId);
    if (pointers.size < 2) pinch = null;
  };
  document.addEventListener("pointerup", release);
  document.addEventListener("pointercancel", release);
})();
