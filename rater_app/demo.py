"""`histosynth demo`: a complete rating study on data that ships with histosynth.

The "real" source is real H&E tissue: 224 x 224 crops of the OpenSlide test slide
CMU-1-Small-Region (skin, not colorectal; Carnegie Mellon University), shipped as one JPEG
sheet. The nine class labels are stand-ins: background crops form BACK and tissue crops are
dealt round-robin to the other eight names, so the demo has the paper's layout without
pretending to hold NCT-CRC-HE-100K. Two stand-in "generators" derive tiles procedurally from
the real crops (a smooth elastic warp with a stain shift, and a feathered mosaic of four
crops), deterministically from fixed seeds, so every run builds the same data set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from histosynth.pools import write_manifest
from rater_app.create import create_study
from rater_app.raters import NewRater, add_raters, reset_admin_secret, reset_secrets
from rater_app.store import connect, has_study

log = logging.getLogger(__name__)

DEMO_STUDY = "demo"
DEMO_RATERS = ("rater1", "rater2", "rater3")
DEMO_CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
TILE = 224
SHEET_TISSUE, SHEET_BACKGROUND = 40, 8
DEMO_STUDY_TOML = """\
# The study `histosynth demo` creates; written beside the demo pools as demo.toml.
# Class names are stand-ins and the generators are procedural stand-ins (see the README).
[study]
name = "demo"
seed = 2024
images_per_cell = 3
block_by_class = true
confidence = "none"
allow_changes = true
repeats = 3

[sources]
real = "pools/real"
"StandIn-Warp" = "pools/standin-warp"
"StandIn-Mosaic" = "pools/standin-mosaic"
"""


@dataclass(frozen=True)
class DemoLogins:
    """Everything a person needs to try the demo: where, and who may log in with what."""

    db_path: Path
    study: str
    admin_secret: str
    raters: list[NewRater]


def prepare_demo(folder: str | Path) -> DemoLogins:
    """Build the demo pools (first run only), create the demo study and issue fresh logins.

    Re-running keeps the database and its votes; since secrets are stored only as hashes,
    the raters and the admin get new secrets each time, which are printed again.
    """
    folder = Path(folder)
    toml_path = folder / "demo.toml"
    if not toml_path.is_file():
        build_demo_pools(folder / "pools")
        toml_path.write_text(DEMO_STUDY_TOML, encoding="utf-8")
    db_path = folder / "demo.db"
    if _has_demo_study(db_path):
        admin_secret = reset_admin_secret(str(db_path), DEMO_STUDY)
        raters = reset_secrets(str(db_path), DEMO_STUDY, list(DEMO_RATERS))
    else:
        admin_secret = create_study(toml_path, db_path).admin_secret
        raters = add_raters(str(db_path), DEMO_STUDY, list(DEMO_RATERS))
    return DemoLogins(db_path=db_path, study=DEMO_STUDY, admin_secret=admin_secret, raters=raters)


def build_demo_pools(pools: Path) -> None:
    """Write the real pool (TIFF, like NCT-CRC-HE-100K) and the two stand-in pools (PNG)."""
    tiles_by_class = demo_real_tiles()
    for class_name, tiles in tiles_by_class.items():
        for index, tile in enumerate(tiles):
            _save(pools / "real" / class_name / f"{class_name}-{index:02d}.tif", tile)
            _save(pools / "standin-warp" / class_name / f"warp-{index:02d}.png", _warp(tile, seed=index))
            mosaic = _mosaic(tiles, seed=index)
            _save(pools / "standin-mosaic" / class_name / f"mosaic-{index:02d}.png", mosaic)
    for name, kind in (("standin-warp", "elastic warp"), ("standin-mosaic", "feathered mosaic")):
        write_manifest(
            pools / name,
            generator=f"StandIn ({kind} of real crops)",
            checkpoint="none (procedural stand-in)",
            sampler="procedural",
            steps=None,
            seed=0,
        )


def demo_real_tiles() -> dict[str, list[np.ndarray]]:
    """The shipped real crops, grouped under the stand-in class names."""
    sheet_file = resources.files("rater_app") / "demo_tiles" / "cmu_tiles.jpg"
    with resources.as_file(sheet_file) as path, Image.open(path) as image:
        sheet = np.asarray(image.convert("RGB"))
    columns = sheet.shape[1] // TILE
    crops = [
        sheet[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE]
        for r in range(sheet.shape[0] // TILE)
        for c in range(columns)
    ]
    tissue, background = crops[:SHEET_TISSUE], crops[SHEET_TISSUE : SHEET_TISSUE + SHEET_BACKGROUND]
    tissue_classes = [name for name in DEMO_CLASSES if name != "BACK"]
    grouped: dict[str, list[np.ndarray]] = {name: [] for name in DEMO_CLASSES}
    for index, crop in enumerate(tissue):
        grouped[tissue_classes[index % len(tissue_classes)]].append(crop)
    grouped["BACK"] = list(background)
    return grouped


def _warp(tile: np.ndarray, seed: int) -> np.ndarray:
    """A smooth random elastic deformation plus a small stain (colour) shift."""
    rng = np.random.default_rng(1000 + seed)
    shape = tile.shape[:2]
    dy, dx = (ndimage.gaussian_filter(rng.normal(size=shape), sigma=12) * 180 for _ in range(2))
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    coordinates = [rows + dy, cols + dx]
    warped = np.stack(
        [
            ndimage.map_coordinates(tile[:, :, c].astype(float), coordinates, order=1, mode="reflect")
            for c in range(3)
        ],
        axis=2,
    )
    shift = rng.normal(0, 6, size=3)
    return np.clip(warped + shift, 0, 255).astype(np.uint8)


def _mosaic(tiles: list[np.ndarray], seed: int) -> np.ndarray:
    """Four quadrants from different crops of the class, blended across soft seams."""
    rng = np.random.default_rng(2000 + seed)
    picks = [tiles[i].astype(float) for i in rng.integers(0, len(tiles), size=4)]
    ramp = np.clip((np.arange(TILE) - TILE / 2) / 24 + 0.5, 0, 1)
    top = picks[0] * (1 - ramp)[None, :, None] + picks[1] * ramp[None, :, None]
    bottom = picks[2] * (1 - ramp)[None, :, None] + picks[3] * ramp[None, :, None]
    blended = top * (1 - ramp)[:, None, None] + bottom * ramp[:, None, None]
    noise = rng.normal(0, 3, size=blended.shape)
    return np.clip(blended + noise, 0, 255).astype(np.uint8)


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def _has_demo_study(db_path: Path) -> bool:
    if not db_path.is_file():
        return False
    with connect(db_path) as db:
        return has_study(db, DEMO_STUDY)
