"""Macenko stain normalisation (torchstain) fit to one reference tile, with a tile cache.

The classifier sees every tile, training and test, in the stain of one reference tile, as the
paper's classifier saw Macenko-normalised tiles. torchstain's numpy Macenko normaliser is fit
once to the reference; its stain matrix and maximal concentrations are stored with each model.

The default reference (`DEFAULT_REFERENCE`, `trainer/classifier/assets/stain_reference.png`) is a real H&E
tile: the 224 x 224 crop at row 1, column 0 of the demo's sheet of CMU-1-Small-Region at 20x
(OpenSlide test data), nuclei and stroma with no background. `--stain-reference PATH` takes any
other tile.

The pass-through rule: Macenko estimates the stain vectors from tissue pixels (optical density
above 0.15 in every channel). A tile with less than `MIN_TISSUE_FRACTION` of its pixels in
tissue (background, blank or nearly blank tiles), or one where the estimate fails numerically,
is passed through unchanged: it is counted and logged, never an error and never a crash.

Tiles are normalised at their native size, then resized bilinearly to the classifier's size,
and cached in `<cache>/stain/` as `.npy` arrays keyed by the file's absolute path, byte size and
modification time, the reference's sha256 and the size, so repeated experiments (other arms,
seeds or settings) read them instead of recomputing.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from histosynth.cache import cache_dir
from histosynth.errors import HistosynthError
from histosynth.files import atomic_write_bytes
from histosynth.images import load_rgb, resize_bilinear
from histosynth.pools import sha256_file
from histosynth.progress import progress_bar

logger = logging.getLogger(__name__)

MIN_TISSUE_FRACTION = 0.05
TISSUE_OD = 0.15  # torchstain's beta: optical density above which a pixel counts as stained
TRANSMITTED = 240  # torchstain's Io, the intensity of unstained glass
CACHE_VERSION = 1  # bump when the normalisation or the cache layout changes


def default_reference() -> Path:
    """The stain reference that ships with histosynth (see the module docstring)."""
    return Path(str(resources.files("trainer.classifier") / "assets" / "stain_reference.png"))


@dataclass(frozen=True)
class StainNormalizer:
    """A Macenko normaliser fit to one reference tile.

    Attributes:
        reference: the reference tile's file.
        reference_sha256: its bytes' sha256 (part of every cache key and model record).
        stain_matrix: the reference's 3 x 2 H&E optical-density vectors (torchstain `HERef`).
        max_concentrations: the reference's 99th-percentile H and E concentrations (`maxCRef`).
    """

    reference: Path
    reference_sha256: str
    stain_matrix: np.ndarray
    max_concentrations: np.ndarray

    def normalize(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
        """Normalise an (H, W, 3) uint8 tile; return it and whether it was normalised.

        A tile with too little tissue, or where Macenko fails, comes back unchanged with False
        (the pass-through rule of the module docstring).
        """
        if tissue_fraction(rgb) < MIN_TISSUE_FRACTION:
            return rgb, False
        normalizer = _torchstain()
        normalizer.HERef, normalizer.maxCRef = self.stain_matrix, self.max_concentrations
        try:
            # numpy's error state is per thread: invalid values (NaN stain vectors, a NaN cast to
            # uint8) and divisions by zero raise instead of painting a garbage tile.
            with np.errstate(divide="raise", invalid="raise", over="ignore", under="ignore"):
                normalized, _, _ = normalizer.normalize(rgb, Io=TRANSMITTED, beta=TISSUE_OD, stains=False)
        except (FloatingPointError, np.linalg.LinAlgError, ValueError, IndexError):
            return rgb, False
        return normalized, True

    def record(self) -> dict[str, object]:
        """What a model stores about its normalisation (JSON-ready)."""
        return {
            "method": "macenko (torchstain, numpy backend)",
            "reference": self.reference.name,
            "reference_sha256": self.reference_sha256,
            "stain_matrix": self.stain_matrix.tolist(),
            "max_concentrations": self.max_concentrations.tolist(),
            "transmitted_intensity": TRANSMITTED,
            "tissue_optical_density": TISSUE_OD,
            "pass_through_below_tissue_fraction": MIN_TISSUE_FRACTION,
        }


def fit_normalizer(reference: str | Path | None = None) -> StainNormalizer:
    """Fit Macenko to a reference tile.

    Args:
        reference: the tile (`--stain-reference`); None takes `default_reference()`.

    Returns:
        The fitted normaliser.

    Raises:
        HistosynthError: the file cannot be decoded, or holds too little tissue for Macenko
            (a reference must be an H&E tissue tile, not background).
    """
    path = default_reference() if reference is None else Path(reference).expanduser()
    rgb = load_rgb(path)
    fraction = tissue_fraction(rgb)
    if fraction < MIN_TISSUE_FRACTION:
        raise HistosynthError(
            f"--stain-reference {path}: {fraction:.1%} of its pixels are tissue; "
            "a Macenko reference must be an H&E tissue tile"
        )
    normalizer = _torchstain()
    try:
        with np.errstate(divide="raise", invalid="raise", over="ignore", under="ignore"):
            normalizer.fit(rgb, Io=TRANSMITTED, beta=TISSUE_OD)
    except (FloatingPointError, np.linalg.LinAlgError, ValueError, IndexError) as error:
        raise HistosynthError(f"--stain-reference {path}: Macenko cannot be fit ({error})") from error
    return StainNormalizer(
        reference=path,
        reference_sha256=sha256_file(path),
        stain_matrix=np.asarray(normalizer.HERef, dtype=np.float64),
        max_concentrations=np.asarray(normalizer.maxCRef, dtype=np.float64),
    )


def tissue_fraction(rgb: np.ndarray) -> float:
    """Share of pixels whose optical density exceeds `TISSUE_OD` in every channel (torchstain's mask)."""
    density = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / TRANSMITTED)
    return float(np.all(density >= TISSUE_OD, axis=1).mean())


@dataclass(frozen=True)
class PreparedTiles:
    """Tiles ready for the classifier: the cached array per source file, and what the rule did."""

    arrays: dict[Path, Path]
    passed_through: list[Path]


def prepare_tiles(
    files: Sequence[Path],
    normalizer: StainNormalizer | None,
    size: int,
    *,
    workers: int = 1,
    progress: bool | None = None,
    cache: Path | None = None,
) -> PreparedTiles:
    """Normalise (or only resize) every file once, through the cache.

    Args:
        files: tile files (duplicates are prepared once).
        normalizer: the fitted normaliser; None only resizes (`--no-stain-normalize`).
        size: the classifier's input size; tiles are resized bilinearly after normalising.
        workers: threads (decoding and the numpy work release the GIL for the most part).
        progress: show a progress bar (None: when stderr is a terminal).
        cache: the cache folder (default: `histosynth.cache.cache_dir()`).

    Returns:
        The cached `.npy` file of each input file, and the files the pass-through rule left
        unnormalised (in input order).

    Raises:
        ImageError: a file cannot be decoded (named).
    """
    unique = list(dict.fromkeys(Path(path) for path in files))
    tag = normalizer.reference_sha256[:16] if normalizer is not None else "resize-only"
    folder = cache_dir(cache) / "stain" / f"v{CACHE_VERSION}-{tag}-{size}"
    folder.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> tuple[Path, bool]:
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}".encode()).hexdigest()
        for status in ("n", "p"):
            cached = folder / f"{key}.{status}.npy"
            if cached.is_file():
                return cached, status == "p"
        rgb = load_rgb(path)
        normalized = True  # nothing to pass through when only resizing
        if normalizer is not None:
            rgb, normalized = normalizer.normalize(rgb)
        if rgb.shape[:2] != (size, size):
            rgb = resize_bilinear(rgb, size)
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(rgb), allow_pickle=False)
        # Normalised ("n") and passed-through ("p") tiles carry their status in the name.
        cached = folder / f"{key}.{'n' if normalized else 'p'}.npy"
        atomic_write_bytes(cached, buffer.getvalue())
        return cached, not normalized

    arrays: dict[Path, Path] = {}
    passed_through: list[Path] = []
    with progress_bar(progress) as bar, ThreadPoolExecutor(max(1, workers)) as pool:
        task = bar.add_task("stain-normalise tiles", total=len(unique))
        for path, (cached, passed) in zip(unique, pool.map(one, unique), strict=True):
            arrays[path] = cached
            if passed:
                passed_through.append(path)
            bar.update(task, advance=1)
    if passed_through:
        logger.info(
            "Macenko left %d of %d tiles unchanged (less than %.0f%% tissue, or the fit failed), e.g. %s",
            len(passed_through),
            len(unique),
            100 * MIN_TISSUE_FRACTION,
            passed_through[0],
        )
    return PreparedTiles(arrays=arrays, passed_through=passed_through)


def load_prepared(path: Path) -> np.ndarray:
    """A cached tile as (size, size, 3) uint8."""
    return np.load(path, allow_pickle=False)


def _torchstain():
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    return NumpyMacenkoNormalizer()
