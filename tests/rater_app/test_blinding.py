"""Blinding: nothing the browser receives names a source, generator, pool folder or file.

The sources here are built to leak: folder and file names carry the generator's name, PNG
files carry text chunks naming it and JPEG files carry EXIF naming it. A rater rates the
whole study in Chromium while every response (URL, headers, body) is recorded; none may
contain any of those names, and every image must arrive as the stored PNG with only its padding
bytes renewed: the same length, chunks and pixels.

A class name is not provenance (every source has every class), but it is said only where the
design says it: in the block titles of a study rated class by class, each naming the class of
every tile in its block; a study rated in one shuffle never names a class.
"""

from __future__ import annotations

import io
import re
import sqlite3
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from rater_app.create import create_study
from rater_app.raters import add_raters
from rater_app.store import image_store_dir

from .conftest import wait_for_tile
from .test_study_create import png_chunks

GENERATORS = {"SecretGenKLF8": ".png", "styleGANsecret2": ".jpg"}
CLASSES = ("CLASSADIPOSE", "CLASSTUMOUR")
REAL_FOLDER = "realpool-NCTCRC"
BLOCK_TITLE = re.compile(r"Block \d+ of \d+ \((" + "|".join(CLASSES) + r")\)")

# Playwright cannot read streamed (SSE over fetch) bodies, where Gradio sends component
# values; this tees every fetch response, chunk by chunk, into window.__received.
TEE_FETCH_JS = """
(() => {
  const original = window.fetch.bind(window);
  window.__received = [];
  window.fetch = async (...args) => {
    const response = await original(...args);
    if (response.body) {
      const reader = response.clone().body.getReader();
      const decoder = new TextDecoder();
      (async () => {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          window.__received.push(decoder.decode(value, { stream: true }));
        }
      })();
    }
    return response;
  };
})();
"""


def leaky_pools(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(5)
    sources = {"real": root / REAL_FOLDER}
    for generator in GENERATORS:
        sources[generator] = root / f"pool-{generator}"
    for source, folder in sources.items():
        suffix = GENERATORS.get(source, ".tif")
        for class_name in CLASSES:
            for index in range(2):
                path = folder / class_name / f"{source}_{folder.name}_{class_name}_{index}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
                image = Image.fromarray(pixels).resize((224, 224), Image.Resampling.BILINEAR)
                if suffix == ".png":
                    info = PngInfo()
                    info.add_text("generator", source)
                    info.add_text("Software", f"{source} sampler, {folder}")
                    image.save(path, pnginfo=info)
                elif suffix == ".jpg":
                    exif = Image.Exif()
                    exif[0x010E] = f"made by {source}"  # ImageDescription
                    exif[0x0131] = source  # Software
                    image.save(path, exif=exif.tobytes(), quality=95)
                else:
                    image.save(path)
    return sources


def forbidden_tokens(db: Path, sources: dict[str, Path]) -> set[str]:
    """Names of sources, generators, pool folders and original files (class names aside)."""
    tokens = set(GENERATORS) | {REAL_FOLDER} | {f.name for f in sources.values()}
    tokens |= {g.lower() for g in GENERATORS}
    with sqlite3.connect(db) as conn:
        for (original,) in conn.execute("SELECT original_path FROM items"):
            tokens |= {Path(original).name, Path(original).stem}
    return tokens


def classes_in_order(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [
            class_name
            for (class_name,) in conn.execute(
                "SELECT i.class FROM assignments a JOIN items i ON i.id = a.item_id ORDER BY a.position"
            )
        ]


@pytest.mark.browser
@pytest.mark.parametrize("block_by_class", [True, False], ids=["class-by-class", "one-shuffle"])
def test_nothing_received_names_the_provenance(
    tmp_path, rating_server, browser, write_study, block_by_class
) -> None:
    sources = leaky_pools(tmp_path / "pools")
    db = tmp_path / "study.db"
    create_study(write_study(sources, images_per_cell=2, block_by_class=block_by_class), db)
    secret = add_raters(str(db), "pilot", ["ann"])[0].secret
    tokens = forbidden_tokens(db, sources)
    base = rating_server(db).url

    received: list[tuple[str, dict, bytes]] = []
    page = browser.new_page()

    def record(response) -> None:
        try:
            body = response.body()
        except Exception:  # redirects and aborted requests have no body
            body = b""
        received.append((response.url, dict(response.headers), body))

    page.on("response", record)
    page.add_init_script(TEE_FETCH_JS)
    page.goto(f"{base}/login?name=ann")
    page.fill("#secret", secret)
    page.click("#login")
    total = 2 * len(CLASSES) * len(sources)
    classes = classes_in_order(db)
    for position in range(1, total + 1):
        wait_for_tile(page, position)  # through every screen: tiles, pauses between blocks, the end
        if block_by_class:  # the block's title names the class of the tile on screen, whatever its source
            assert f"({classes[position - 1]})" in page.inner_text("#block-progress-label")
        else:
            assert page.query_selector("#block-progress") is None
        page.keyboard.press("r" if position % 2 else "s")
    page.wait_for_selector(f"text=All {total} tiles rated", timeout=30_000)
    streamed = page.evaluate("() => window.__received.join('')")
    received.append(("fetch streams", {}, streamed.encode("utf-8")))
    page.close()

    store = image_store_dir(db)
    with sqlite3.connect(db) as conn:
        item_of_token = dict(conn.execute("SELECT token, item_id FROM assignments"))
    images = [(url, body) for url, headers, body in received if headers.get("content-type") == "image/png"]
    assert len({url for url, _ in images}) == total
    lengths = set()
    for url, body in images:
        item = item_of_token[url.rsplit("/", 1)[1].removesuffix(".png")]
        stored = (store / f"{item}.png").read_bytes()
        assert len(body) == len(stored) and body != stored  # not re-encoded; only the padding renewed
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(body))), np.asarray(Image.open(store / f"{item}.png"))
        )
        assert png_chunks(body)[-2:] == ["paDd", "IEND"]
        assert set(png_chunks(body)) == {"IHDR", "IDAT", "paDd", "IEND"}
        lengths.add(len(body))
    assert len(lengths) == 1  # every tile of the study has one length
    assert all(token in streamed for token in item_of_token), "component payloads were not all captured"
    tokens |= set(item_of_token.values())  # stored item ids never reach the browser either
    everything = b"".join(body for _, _, body in received)
    # The admin's controls come with the page (empty) and are covered by the check below; their
    # content (dashboard, audit, admin record) never reaches a rater.
    assert b'"elem_id":"dashboard"' in everything.replace(b" ", b"")
    assert b"rater-table" not in everything and b"audit-verdict" not in everything
    for url, headers, body in received:
        text = url + "\n" + "\n".join(f"{k}: {v}" for k, v in headers.items()) + "\n"
        text += body.decode("latin-1")
        leaked = sorted(token for token in tokens if token in text)
        assert not leaked, f"{url} reveals {leaked}"
        if block_by_class:  # class names only inside block titles
            text = BLOCK_TITLE.sub("", text)
        named = sorted(class_name for class_name in CLASSES if class_name in text)
        assert not named, f"{url} names {named} outside a block title"


def test_routes_need_a_login(tmp_path, rating_server, write_study, make_pool) -> None:
    sources = {"real": make_pool("real", per_class=2), "KLF8-DM": make_pool("klf8", per_class=2)}
    db = tmp_path / "study.db"
    create_study(write_study(sources), db)
    secret = add_raters(str(db), "pilot", ["ann"])[0].secret
    base = rating_server(db).url
    with sqlite3.connect(db) as conn:
        item, token = conn.execute("SELECT item_id, token FROM assignments LIMIT 1").fetchone()
    paths = [
        "/",
        "/config",
        "/gradio_api/info",
        "/gradio_api/config",
        "/theme.css",
        f"/tiles/{token}.png",
        "/admin/votes.csv",
        f"/gradio_api/file={db}",
        "/gradio_api/queue/data?session_hash=x",
    ]
    with httpx.Client(base_url=base) as anonymous:
        for path in paths:
            response = anonymous.get(path)
            assert response.status_code in (401, 303), path
        assert anonymous.post("/gradio_api/queue/join", json={}).status_code == 401
    with httpx.Client(base_url=base) as client:
        response = client.post("/login", data={"name": "ann", "secret": secret})
        assert response.status_code == 303 and "histosynth_session" in response.cookies
        assert client.get(f"/tiles/{token}.png").headers["content-type"] == "image/png"
        assert client.get(f"/tiles/{item}.png").status_code == 404  # stored ids are not URLs
        assert client.get("/admin/votes.csv").status_code == 404
        assert client.get(f"/gradio_api/file={db}").status_code in (403, 404)
        info = client.get("/gradio_api/info").json()
        assert info["named_endpoints"] == {}  # internal events are not listed
