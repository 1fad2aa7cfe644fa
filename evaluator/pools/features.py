"""Image features for FID, KID and t-SNE: swappable extractors and an on-disk feature cache.

Feature extraction dominates the cost of every pool metric, and the same reference pool is
compared against many generated pools, by FID and by t-SNE alike. Features are therefore
computed once per (class folder content, extractor identity, resize mode) and kept in the
user cache dir, so a second run against the same reference reads them back in milliseconds.

The default extractor is clean-fid's TorchScript Inception-v3 (`inception-2015-12-05.pt`) fed
with clean-fid's "clean" resize (PIL bicubic on float32 channels to 299x299). Its weights are
never downloaded here: they are read from `--inception-weights` or from
`<cache dir>/weights/inception-2015-12-05.pt`. Any `module:callable` returning a callable (an
`nn.Module` or a plain function) that maps a float batch (N, 3, H, W) in [0, 255] to (N, D)
features can stand in, e.g. a histology foundation model, or a tiny network in tests.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from histosynth.cache import cache_dir
from histosynth.errors import HistosynthError, ImageError, PoolError
from histosynth.files import atomic_write_bytes
from histosynth.images import load_rgb
from histosynth.pools import Pool, read_pool
from histosynth.progress import progress_bar
from histosynth.tables import ALL_CLASSES

logger = logging.getLogger(__name__)

INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILENAME
)
MODES = ("clean", "native")  # clean: clean-fid's 299x299 PIL bicubic; native: pixels as stored
CLEAN_SIZE = (299, 299)
CACHE_VERSION = 1  # bump when the stored layout or the image pipeline changes


class ExtractorError(HistosynthError):
    """A feature extractor cannot be found, loaded, or returned features of the wrong shape."""


@dataclass(frozen=True)
class Extractor:
    """A feature extractor ready to run, with the identity that keys its cached features.

    Attributes:
        spec: what the user asked for: "inception" or "module:callable".
        identity: a string that changes whenever the features could change (a hash of the
            Inception weights file, or the import path plus a hash of the module's state_dict).
        model: maps a float32 batch (N, 3, H, W) with values in [0, 255] to (N, D).
        device: where batches are sent; resolved once when the extractor is built.
    """

    spec: str
    identity: str
    model: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device


@dataclass(frozen=True)
class FeatureSettings:
    """How image features are extracted; the part of `FidSettings` and `TsneSettings` they share.

    Attributes:
        extractor: "inception" (clean-fid's Inception-v3), "package.module:callable", or a
            ready `Extractor` (see `load_extractor`).
        inception_weights: `inception-2015-12-05.pt` or its folder (default: the cache's
            `weights/` folder).
        mode: "clean" (clean-fid's resize to 299x299) or "native" (pixels at their native
            size; custom extractors only).
        batch_size: images per forward pass.
        workers: threads decoding and resizing the next batch while the model runs (0: in
            the calling thread).
        device: torch device; None picks CUDA when available. KID's kernels run there too.
        cache: read and write the on-disk feature cache.
        progress: show progress bars; None shows them when stderr is a terminal.
    """

    extractor: str | Extractor = "inception"
    inception_weights: str | Path | None = None
    mode: str = "clean"
    batch_size: int = 32
    workers: int = 0
    device: str | None = None
    cache: bool = True
    progress: bool | None = None

    def load(self) -> Extractor:
        """The extractor these settings name, loaded once (a ready `Extractor` is returned as is).

        Returns:
            The extractor, on `device`.

        Raises:
            ExtractorError: see `load_extractor`.
        """
        if isinstance(self.extractor, Extractor):
            return self.extractor
        return load_extractor(self.extractor, inception_weights=self.inception_weights, device=self.device)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` means CUDA when available, else CPU; resolved once by each entry point."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise HistosynthError(f"--device {device!r}: not a torch device ({error})") from error


def inception_weights_path(path: str | Path | None = None) -> Path:
    """Locate clean-fid's TorchScript Inception weights without ever downloading them.

    Args:
        path: the weights file, or a folder holding `inception-2015-12-05.pt`. None looks in
            `<cache dir>/weights/`.

    Raises:
        ExtractorError: the file is not there; the message names the file, where to put it
            and where it can be downloaded by hand.
    """
    if path is None:
        candidate = cache_dir() / "weights" / INCEPTION_FILENAME
        hint = f"put {INCEPTION_FILENAME} at {candidate} or pass --inception-weights PATH"
    else:
        candidate = Path(path).expanduser()
        if candidate.is_dir():
            candidate = candidate / INCEPTION_FILENAME
        hint = f"pass the path of {INCEPTION_FILENAME} (or a folder holding it) to --inception-weights"
    if not candidate.is_file():
        raise ExtractorError(
            f"{candidate}: Inception weights {INCEPTION_FILENAME} not found; {hint} "
            f"(download it once from {INCEPTION_URL})"
        )
    if candidate.name != INCEPTION_FILENAME:
        raise ExtractorError(f"{candidate}: the Inception weights file must be named {INCEPTION_FILENAME}")
    return candidate


def load_extractor(
    spec: str = "inception",
    *,
    inception_weights: str | Path | None = None,
    device: str | torch.device | None = None,
) -> Extractor:
    """Build the feature extractor named by `spec` on `device`.

    Args:
        spec: "inception" for clean-fid's Inception-v3 (2048-d pool features), or
            "package.module:callable" whose call (no arguments) returns the model. An
            `nn.Module` is keyed in the cache by its import path and a hash of its weights;
            any other callable by its import path alone (rename it, or pass
            `cache=False`, after changing what it computes).
        inception_weights: the Inception weights file or its folder (see `inception_weights_path`).
        device: torch device; None picks CUDA when available.

    Raises:
        ExtractorError: weights missing, module or attribute not importable, or the callable
            fails or returns something that cannot be called on a batch.
    """
    device = resolve_device(device)
    if spec == "inception":
        return _inception_extractor(inception_weights_path(inception_weights), device)
    return _imported_extractor(spec, device)


def _inception_extractor(weights: Path, device: torch.device) -> Extractor:
    from cleanfid.inception_torchscript import InceptionV3W

    try:
        with warnings.catch_warnings():  # the published weights are TorchScript, which torch deprecates
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
            model = InceptionV3W(str(weights.parent), download=False, resize_inside=False)
    except (RuntimeError, ValueError) as error:
        raise ExtractorError(f"{weights}: not a TorchScript Inception model ({error})") from error
    model = model.to(device).eval()
    identity = f"inception:{INCEPTION_FILENAME}:{weights_digest(weights)}"
    return Extractor(spec="inception", identity=identity, model=model, device=device)


def weights_digest(path: Path) -> str:
    """sha256 of a weights file's bytes, part of the Inception extractor's cache key.

    The size alone would let a re-exported or corrupted file of the same length reuse
    features computed with other weights. Hashing ~95 MB takes a fraction of a second, and is
    done once per process and file version (memoised on resolved path, size and mtime).
    """
    try:
        stat = path.stat()
        return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError as error:
        raise ExtractorError(f"{path}: cannot read the weights file ({error})") from error


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of `path`; `size` and `mtime_ns` only key the memo, so a rewritten file is hashed again."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _imported_extractor(spec: str, device: torch.device) -> Extractor:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ExtractorError(f"--extractor {spec!r}: expected 'inception' or 'package.module:callable'")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ExtractorError(f"--extractor {spec!r}: cannot import ({error})") from error
    try:
        model = factory()
    except Exception as error:
        raise ExtractorError(f"--extractor {spec!r}: building the extractor failed ({error})") from error
    if not callable(model):
        raise ExtractorError(f"--extractor {spec!r}: returned {type(model).__name__}, which is not callable")
    identity = spec
    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()
        identity = f"{spec}:{state_dict_digest(model)}"
    return Extractor(spec=spec, identity=identity, model=model, device=device)


def state_dict_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's parameter and buffer names, shapes, dtypes and values.

    Part of the cache key, so retraining or re-seeding a custom extractor never reuses
    features computed with other weights.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        # flattened first: a 0-dim tensor (BatchNorm's `num_batches_tracked`) has no byte view
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def folder_fingerprint(files: Sequence[Path]) -> str:
    """sha256 of the files' common folder (resolved), their names relative to it, sizes and mtimes.

    Cheap enough for 100,000 tiles; renaming, adding, removing or rewriting a file changes it.
    The resolved folder is part of it because names, sizes and mtimes alone do not tell two
    folders apart: uncompressed tiles all have one size, and copies (e.g. stain-normalised
    versions written with preserved mtimes) keep the names and times of their originals.
    """
    paths = [Path(p).absolute() for p in files]
    root = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path()
    digest = hashlib.sha256(f"{root.resolve().as_posix()}\n".encode())
    for path in paths:
        try:
            stat = path.stat()
        except OSError as error:
            raise ImageError(f"{path}: cannot read file ({error})") from error
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def features_cache_path(files: Sequence[Path], extractor: Extractor, mode: str) -> Path:
    """Where the features of `files` under (`extractor`, `mode`) are cached."""
    fields = {"v": CACHE_VERSION, "files": folder_fingerprint(files), "mode": mode}
    key = json.dumps({**fields, "extractor": extractor.identity}, sort_keys=True)
    return cache_dir() / "features" / f"{hashlib.sha256(key.encode()).hexdigest()}.npy"


def compute_features(
    files: Sequence[Path],
    extractor: Extractor,
    *,
    mode: str = "clean",
    batch_size: int = 32,
    workers: int = 0,
    cache: bool = True,
    progress: bool | None = None,
    description: str = "features",
) -> np.ndarray:
    """Features of `files` in order, read from the cache when this exact set was seen before.

    Args:
        files: image files (one class folder, typically); any format `load_rgb` reads.
        extractor: from `load_extractor`.
        mode: "clean" (clean-fid's resize to 299x299) or "native" (no resize; all images
            must share one size).
        batch_size: images per forward pass.
        workers: threads decoding and resizing the next batch while the model runs
            (0: decode in the calling thread).
        cache: read and write the on-disk cache.
        progress: show a progress bar; None shows it when stderr is a terminal.
        description: the progress bar's label.

    Returns:
        float32 array (len(files), D).

    Raises:
        ImageError: a file cannot be decoded, or has another size than the first in native mode.
        ExtractorError: the extractor's output is not (N, D) or not finite.
    """
    if mode not in MODES:
        raise HistosynthError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "native" and extractor.spec == "inception":
        raise ExtractorError("--mode native: the Inception extractor needs 299x299 inputs; use --mode clean")
    if batch_size < 1:
        raise HistosynthError(f"--batch-size {batch_size}: must be at least 1")
    files = [Path(p) for p in files]
    if not files:
        raise HistosynthError("no images to extract features from")
    target = features_cache_path(files, extractor, mode) if cache else None
    cached = _load_cached(target, len(files)) if target is not None else None
    if cached is not None:
        logger.info("%s: %d cached features (%s)", description, len(files), target.name)
        return cached
    features = _extract(files, extractor, mode, batch_size, workers, progress, description)
    if target is not None:
        _save_atomic(target, features)
    return features


def _extract(
    files: list[Path],
    extractor: Extractor,
    mode: str,
    batch_size: int,
    workers: int,
    progress: bool | None,
    description: str,
) -> np.ndarray:
    loader = _ImageLoader(mode, load_rgb(files[0]).shape[:2] if mode == "native" else None)
    chunks = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    outputs: list[np.ndarray] = []
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(files))
        for chunk, batch in zip(chunks, _prefetched_batches(chunks, loader, workers), strict=True):
            with torch.inference_mode():
                result = extractor.model(batch.to(extractor.device))
            outputs.append(_check_output(result, len(chunk), chunk[0], extractor.spec))
            bar.advance(task, len(chunk))
    return np.concatenate(outputs).astype(np.float32, copy=False)


class _ImageLoader:
    """Decodes one file into a (3, H, W) float32 array in [0, 255], the clean-fid input convention."""

    def __init__(self, mode: str, native_size: tuple[int, int] | None) -> None:
        self.native_size = native_size
        self.resize = None
        if mode == "clean":
            from cleanfid.resize import make_resizer

            self.resize = make_resizer("PIL", False, "bicubic", CLEAN_SIZE)

    def __call__(self, path: Path) -> np.ndarray:
        rgb = load_rgb(path)
        if self.resize is not None:
            pixels = self.resize(rgb)
        else:
            if rgb.shape[:2] != self.native_size:
                raise ImageError(
                    f"{path}: {rgb.shape[1]}x{rgb.shape[0]} px, but --mode native needs every image at "
                    f"{self.native_size[1]}x{self.native_size[0]} px like the first one"
                )
            pixels = rgb.astype(np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def _prefetched_batches(
    chunks: list[list[Path]], loader: _ImageLoader, workers: int
) -> Iterator[torch.Tensor]:
    """Yield one batch per chunk; with workers, the next chunk decodes while the caller computes."""
    if workers <= 0:
        for chunk in chunks:
            yield torch.from_numpy(np.stack([loader(path) for path in chunk]))
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list[Future[np.ndarray]] = [pool.submit(loader, path) for path in chunks[0]]
        for index in range(len(chunks)):
            current = pending
            if index + 1 < len(chunks):
                pending = [pool.submit(loader, path) for path in chunks[index + 1]]
            yield torch.from_numpy(np.stack([future.result() for future in current]))


def _check_output(result: object, expected: int, first: Path, spec: str) -> np.ndarray:
    if not isinstance(result, torch.Tensor):
        raise ExtractorError(f"--extractor {spec}: returned {type(result).__name__}, expected a tensor")
    array = result.detach().float().cpu().numpy()
    if array.ndim != 2 or array.shape[0] != expected:
        raise ExtractorError(
            f"--extractor {spec}: returned shape {tuple(array.shape)} for a batch of {expected} "
            f"(starting at {first}); expected ({expected}, D)"
        )
    if not np.isfinite(array).all():
        raise ExtractorError(f"--extractor {spec}: non-finite features for the batch starting at {first}")
    return array


def _load_cached(target: Path, count: int) -> np.ndarray | None:
    """The cached array, or None when absent or unreadable (then it is recomputed and rewritten)."""
    if not target.is_file():
        return None
    try:
        features = np.load(target)
    except (OSError, ValueError, EOFError) as error:
        logger.warning("%s: unreadable feature cache entry, recomputing (%s)", target, error)
        return None
    if features.ndim != 2 or len(features) != count:
        logger.warning(
            "%s: cache entry has shape %s for %d images, recomputing", target, features.shape, count
        )
        return None
    return features


def _save_atomic(target: Path, features: np.ndarray) -> None:
    """Write through `atomic_write_bytes`, so a crash never leaves a truncated cache entry."""
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, features)
    atomic_write_bytes(target, buffer.getvalue())


def read_pools(
    reference: str | Path, pools: Mapping[str, str | Path], classes: Sequence[str] | None = None
) -> tuple[Pool, dict[str, Pool]]:
    """Read the reference and the generated pools on a common set of classes.

    Args:
        reference: the real pool (e.g. NCT-CRC-HE-100K).
        pools: name -> generated pool folder, in table order.
        classes: the classes to compare; None takes each pool's own classes, all of which
            must exist in the reference.

    Returns:
        (reference pool on the union of the pools' classes, name -> generated pool).

    Raises:
        PoolError: no pools given, a pool lacks a requested class, or a pool has a class the
            reference does not.
    """
    if not pools:
        raise PoolError("no generated pool given (--pool NAME=DIR)")
    generated = {name: read_pool(folder, classes) for name, folder in pools.items()}
    for pool in generated.values():
        if ALL_CLASSES in pool.classes:
            raise PoolError(
                f"{pool.root / ALL_CLASSES}: a class may not be named {ALL_CLASSES} (the pooled row)"
            )
    wanted = list(classes) if classes is not None else []
    for pool in generated.values():
        wanted += [name for name in pool.classes if name not in wanted]
    try:
        reference_pool = read_pool(reference, wanted)
    except PoolError as error:
        raise PoolError(f"reference {error}") from error
    return reference_pool, generated


def pool_features(
    pool: Pool, extractor: Extractor, settings: FeatureSettings, *, label: str
) -> dict[str, np.ndarray]:
    """Features of each class of `pool` (cached per class folder), extracted as `settings` say.

    Args:
        pool: the pool to extract.
        extractor: the loaded extractor (`settings.load()`), shared by every pool of a run.
        settings: mode, batch size, workers, cache and progress of `compute_features`.
        label: names the pool in the progress bars.

    Returns:
        Class name -> float32 (n_images, D) features, in the pool's file order.

    Raises:
        ImageError, ExtractorError, HistosynthError: see `compute_features`.
    """
    return {
        name: compute_features(
            files,
            extractor,
            mode=settings.mode,
            batch_size=settings.batch_size,
            workers=settings.workers,
            cache=settings.cache,
            progress=settings.progress,
            description=f"{label}/{name}",
        )
        for name, files in pool.files.items()
    }
