"""MS-SSIM between images and their autoencoder reconstructions (the paper's autoencoder figure).

A latent diffusion model can draw no finer detail than its autoencoder reconstructs, so the
paper reports MS-SSIM over the training set for KL-f8 (91.6 +- 5.3 %), SD's KL-f8 (88.3 +-
7.0 %) and VQ-f8 (86.4 +- 7.8 %). `evaluate_msssim` measures any diffusers-format autoencoder
folder (`AutoencoderKL` or `VQModel`, told apart by `config.json`'s `_class_name`) on any pool,
per class and overall.

Images are scaled to [-1, 1] for the model (the diffusers convention), reconstructions are
clamped back, and pytorch-msssim compares both in [0, 1] with `data_range=1`. KL models decode
the posterior mode (no sampling), so the numbers are deterministic. MS-SSIM uses the standard
5 scales with an 11-pixel window, which needs images larger than 160 px on their shorter side;
smaller images raise an error asking for `--size` (the default 256 is the paper's size) rather
than silently switching to fewer scales, so every reported value means the same thing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from evaluator.pools.features import resolve_device
from evaluator.pools.report import figure_bytes, latex_section, markdown_section, pivot_cells, write_outputs
from histosynth.errors import HistosynthError, ImageError
from histosynth.images import PAPER_SIZE, load_rgb
from histosynth.pools import read_pool
from histosynth.progress import progress_bar
from histosynth.sampling import sample_files
from histosynth.tables import ALL_CLASSES

logger = logging.getLogger(__name__)

AUTOENCODER_CLASSES = ("AutoencoderKL", "VQModel")
MIN_SIDE = 161  # pytorch-msssim: 4 downsamplings of an 11-px window need a side > (11 - 1) * 2**4
SUMMARY_COLUMNS = ["class", "msssim_mean", "msssim_std", "n"]
MSSSIM_OUTPUTS = ("msssim.csv", "msssim_images.csv", "msssim.md", "msssim.tex", "msssim.png", "msssim.pdf")


def load_autoencoder(folder: str | Path, device: str | torch.device | None = None) -> torch.nn.Module:
    """Load a diffusers autoencoder folder (`config.json` + weights), in eval mode on `device`.

    Raises:
        HistosynthError: no `config.json`, unreadable JSON, an unsupported `_class_name`, or
            weights diffusers cannot load.
    """
    import diffusers

    folder = Path(folder).expanduser()
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise HistosynthError(f"{config_path}: no autoencoder config (expected a diffusers model folder)")
    try:
        class_name = json.loads(config_path.read_text(encoding="utf-8")).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise HistosynthError(f"{config_path}: not a JSON object ({error})") from error
    if class_name not in AUTOENCODER_CLASSES:
        raise HistosynthError(
            f"{config_path}: _class_name {class_name!r} is not a supported autoencoder "
            f"({', '.join(AUTOENCODER_CLASSES)})"
        )
    try:
        model = getattr(diffusers, class_name).from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as error:
        raise HistosynthError(f"{folder}: cannot load {class_name} ({error})") from error
    return model.to(resolve_device(device)).eval()


@dataclass(frozen=True)
class MsssimSettings:
    """How `compute_msssim` measures an autoencoder.

    Attributes:
        classes: classes to measure; None takes all of the pool's.
        size: resize to size x size (bilinear, the paper's 256); None keeps the native size.
        max_per_class: measure at most this many images per class, drawn with
            `histosynth.sampling.sample_files` (scope: the class); None: all.
        batch_size: images per forward pass.
        device: torch device; None picks CUDA when available.
        seed: seeds the subset.
        progress: show a progress bar; None shows it when stderr is a terminal.
    """

    classes: Sequence[str] | None = None
    size: int | None = PAPER_SIZE
    max_per_class: int | None = None
    batch_size: int = 8
    device: str | None = None
    seed: int = 0
    progress: bool | None = None


@dataclass(frozen=True)
class MsssimResult:
    """MS-SSIM per class and per image.

    Attributes:
        summary: `SUMMARY_COLUMNS`, one row per class and a final `ALL` row over every image.
        per_image: class, file, msssim.
    """

    summary: pd.DataFrame
    per_image: pd.DataFrame


def compute_msssim(
    autoencoder: str | Path | torch.nn.Module, data: str | Path, settings: MsssimSettings | None = None
) -> MsssimResult:
    """MS-SSIM of every image of `data` against its reconstruction, summarised per class.

    Args:
        autoencoder: a diffusers AutoencoderKL / VQModel folder, or a loaded model.
        data: a pool (`<data>/<CLASS>/<image>`), e.g. the training set.
        settings: see `MsssimSettings`; None uses its defaults.

    Returns:
        The summary and the per-image table.

    Raises:
        PoolError, ImageError, HistosynthError: bad pool, image too small or of another size
        than its batch, autoencoder that cannot be loaded or changes the image size.
    """
    settings = settings or MsssimSettings()
    size, max_per_class, batch_size = settings.size, settings.max_per_class, settings.batch_size
    if batch_size < 1:
        raise HistosynthError(f"--batch-size {batch_size}: must be at least 1")
    if max_per_class is not None and max_per_class < 1:
        raise HistosynthError(f"--max-per-class {max_per_class}: must be at least 1")
    if size is not None and size < MIN_SIDE:
        raise HistosynthError(f"--size {size}: MS-SSIM with 5 scales needs at least {MIN_SIDE} px")
    pool = read_pool(data, settings.classes)
    files = {
        name: paths if max_per_class is None else sample_files(paths, max_per_class, settings.seed, name)
        for name, paths in pool.files.items()
    }
    device = settings.device
    model = load_autoencoder(autoencoder, device) if isinstance(autoencoder, (str, Path)) else autoencoder
    parameter = next(model.parameters(), None)
    model_device = parameter.device if parameter is not None else resolve_device(device)
    rows = []
    with progress_bar(settings.progress) as bar:
        task = bar.add_task("MS-SSIM", total=sum(len(p) for p in files.values()))
        for name, paths in files.items():
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                scores = reconstruction_msssim(model, _load_batch(chunk, size), model_device, chunk[0])
                rows += [
                    {"class": name, "file": str(p), "msssim": float(s)}
                    for p, s in zip(chunk, scores, strict=True)
                ]
                bar.advance(task, len(chunk))
    per_image = pd.DataFrame(rows, columns=["class", "file", "msssim"])
    return MsssimResult(summarise(per_image), per_image)


def write_msssim(result: MsssimResult, out: str | Path) -> list[Path]:
    """Write `msssim.csv`, `msssim_images.csv`, `msssim.md`, `msssim.tex`, `msssim.png` and `.pdf`.

    Args:
        result: what `compute_msssim` returned.
        out: the output folder (created if missing), written all or nothing.

    Returns:
        The paths written.

    Raises:
        HistosynthError: `out` exists and is not a folder, or cannot be written.
    """
    figure = msssim_figure(result.summary)
    files = render_msssim_tables(result.summary) | {
        "msssim_images.csv": result.per_image.to_csv(index=False, float_format="%.6g"),
        "msssim.png": figure_bytes(figure, "png"),
        "msssim.pdf": figure_bytes(figure, "pdf"),
    }
    return write_outputs(out, files, owned=MSSSIM_OUTPUTS)


# evaluate_fid, evaluate_tsne and evaluate_msssim repeat one shape on purpose: a front door per
# command, named alike and documented on its own, each calling its own compute_* and write_*.
def evaluate_msssim(
    autoencoder: str | Path | torch.nn.Module,
    data: str | Path,
    out: str | Path,
    settings: MsssimSettings | None = None,
) -> MsssimResult:
    """Measure the autoencoder on `data` and write tables and figure (`histosynth evaluate msssim`).

    Everything is computed before anything is written, so bad input leaves `out` untouched.

    Args:
        autoencoder: a diffusers AutoencoderKL / VQModel folder, or a loaded model.
        data: a pool (`<data>/<CLASS>/<image>`).
        out: the output folder (see `write_msssim` for the files).
        settings: see `MsssimSettings`; None uses its defaults.

    Returns:
        The result (see `compute_msssim`).

    Raises:
        PoolError, ImageError, HistosynthError: see `compute_msssim`, or an output folder
            that cannot be written.
    """
    result = compute_msssim(autoencoder, data, settings)
    write_msssim(result, out)
    return result


def reconstruction_msssim(
    model: torch.nn.Module, images: torch.Tensor, device: torch.device, first: Path | str = "<batch>"
) -> np.ndarray:
    """Per-image MS-SSIM of a (N, 3, H, W) batch in [0, 1] against the model's reconstruction.

    Raises:
        HistosynthError: the reconstruction's shape differs from the input's (the image side is
            not a multiple of the autoencoder's downsampling factor).
    """
    from pytorch_msssim import ms_ssim

    images = images.to(device)
    with torch.inference_mode():
        reconstructed = model(images * 2.0 - 1.0).sample
    if reconstructed.shape != images.shape:
        raise HistosynthError(
            f"{first}: the autoencoder turned {tuple(images.shape[2:])} px into "
            f"{tuple(reconstructed.shape[2:])} px; use a --size the autoencoder's downsampling divides"
        )
    reconstructed = ((reconstructed.clamp(-1.0, 1.0) + 1.0) / 2.0).float()
    return ms_ssim(images.float(), reconstructed, data_range=1.0, size_average=False).cpu().numpy()


def summarise(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (ddof=1) and count per class, then the same over all images."""
    grouped = per_image.groupby("class", sort=False)["msssim"]
    summary = pd.DataFrame(
        {"msssim_mean": grouped.mean(), "msssim_std": grouped.std(ddof=1), "n": grouped.size()}
    ).reset_index()
    overall = {
        "class": ALL_CLASSES,
        "msssim_mean": per_image["msssim"].mean(),
        "msssim_std": per_image["msssim"].std(ddof=1),
        "n": len(per_image),
    }
    return pd.concat([summary, pd.DataFrame([overall])], ignore_index=True)[SUMMARY_COLUMNS]


def render_msssim_tables(summary: pd.DataFrame) -> dict[str, str]:
    """`msssim.csv` (fractions) plus Markdown and LaTeX in percent: `mean ± std` and n per class."""
    long = summary.assign(score="MS-SSIM (%)", count="n")
    common = dict(columns="class")
    scores = pivot_cells(long, "msssim_mean", "msssim_std", rows="score", digits=1, scale=100, **common)
    counts = pivot_cells(long, "n", None, rows="count", digits=None, **common)
    frame = pd.concat([scores, counts.set_axis(scores.columns, axis=1)])
    frame.index.name = ""
    title = "Autoencoder reconstruction MS-SSIM (mean ± std)"
    rendered = {"msssim.md": markdown_section(title, frame), "msssim.tex": latex_section(title, frame)}
    return {"msssim.csv": summary.to_csv(index=False, float_format="%.6g"), **rendered}


def msssim_figure(summary: pd.DataFrame) -> Figure:
    """Bars of mean MS-SSIM (%) per class with standard-deviation error bars; ALL last, hatched."""
    figure = Figure(figsize=(max(4.0, 0.6 * len(summary) + 1.5), 3.2), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(summary))
    bars = ax.bar(
        positions,
        summary["msssim_mean"] * 100,
        yerr=summary["msssim_std"].fillna(0) * 100,
        capsize=3,
        color="C0",
    )
    bars[-1].set_hatch("//")
    ax.set_xticks(positions, summary["class"], rotation=45, ha="right")
    ax.set_ylabel("MS-SSIM (%)")
    ax.set_ylim(0, 100)
    return figure


def _load_batch(paths: Sequence[Path], size: int | None) -> torch.Tensor:
    """Stack images as float (N, 3, H, W) in [0, 1]; checks MS-SSIM's size floor and equal sizes."""
    images = [load_rgb(path, size) for path in paths]
    first = images[0].shape
    for path, image in zip(paths, images, strict=True):
        if min(image.shape[:2]) < MIN_SIDE:
            raise ImageError(
                f"{path}: {image.shape[1]}x{image.shape[0]} px is too small for 5-scale MS-SSIM "
                f"(needs >= {MIN_SIDE} px); pass --size {PAPER_SIZE}"
            )
        if image.shape != first:
            raise ImageError(
                f"{path}: {image.shape[1]}x{image.shape[0]} px differs from {first[1]}x{first[0]} px in its "
                "batch; pass --size to resize all images"
            )
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
