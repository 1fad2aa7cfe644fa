"""`generate`: a pool `<POOL>/<CLASS>/<index>.png` from a trained model, resumable and reproducible.

Image i of class c is a pure function of (model, seed, c, i): all of its noise (an LDM's DDIM
noise; a StyleGAN2's z and noise inputs) comes from a CPU generator seeded with
`histosynth.sampling.derive_seed(seed, c, i)`, so the batch size, the number of processes and
any interruption never change a file (given the same kernels: on CPU with the same thread count,
batches padded as `trainer.diffusion.ldm.PAD_TO` says; GPU kernels may round differently between batch
shapes). Each PNG is written under a temporary name, fsynced and
renamed, so a visible file is complete; a rerun skips the files that exist and makes the rest.
While a pool is being made, a hidden `.histosynth-generate.json` records its identity (model
hash, sampler, steps, eta, guidance, truncation, seed); `pool.json` (the core's `write_manifest`, with a
sha256 per file) replaces it at the end. An out folder made with another model or other
settings is refused, so two runs never mix in one pool.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from histosynth.errors import HistosynthError, PoolError
from histosynth.files import atomic_write_bytes, atomic_write_text
from histosynth.pools import MANIFEST_NAME, read_manifest, write_manifest
from histosynth.progress import progress_bar
from histosynth.sampling import derive_seed
from trainer.core.model_folder import model_hash, read_model_info

logger = logging.getLogger(__name__)

MARKER = ".histosynth-generate.json"
SAMPLERS = ("ldm", "sd-finetune", "stylegan2")
# what makes a pool's images what they are: a folder is continued only by a run that agrees on all
IDENTITY = ("checkpoint", "sampler", "steps", "eta", "guidance", "truncation", "precision", "seed")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in PRECISIONS.items()}
# Images per denoiser pass when `batch_size` is not given: what fills a GPU, and a CPU's cache.
CUDA_BATCH, CPU_BATCH = 64, 16


def image_name(index: int) -> str:
    """The file name of image `index` of a class: zero-padded to 6 digits, so names sort in order."""
    return f"{index:06d}.png"


def generate_pool(
    model: str | Path,
    out: str | Path,
    per_class: int,
    *,
    classes: list[str] | None = None,
    steps: int = 200,
    eta: float = 0.0,
    guidance: float = 1.0,
    truncation: float = 1.0,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | None = None,
    precision: str = "auto",
    compile_unet: bool = False,
    name: str | None = None,
    save_intermediates: str | Path | None = None,
    intermediate_steps: int = 8,
    progress: bool | None = None,
) -> Path:
    """Generate `per_class` images of each class into the pool `out`, resuming where files exist.

    Args:
        model: a model folder of kind `ldm` (`histosynth train ldm`, `histosynth import compvis`),
            `sd-finetune` (`histosynth train sd-finetune`) or `stylegan2`.
        out: the pool folder; created, or continued when it holds this same pool.
        per_class: images per class (indices 0 .. per_class - 1).
        classes: the classes to generate (default: all of the model's).
        steps: DDIM steps (the paper: 200); not used by StyleGAN2.
        eta: DDIM eta (0: deterministic); LDM only.
        guidance: classifier-free guidance scale (1: none); needs a model trained with
            `cond_drop` > 0; LDM only.
        truncation: StyleGAN2's psi, pulling w toward its class's mean w (1: none); StyleGAN2 only.
        batch_size: images per denoiser pass (does not change any image); None: 64 on a GPU,
            16 on a CPU. Every U-Net pass of the run has one shape (the batch rounded up to a
            multiple of `trainer.diffusion.ldm.PAD_TO`; the last batch is padded), so compiled
            kernels apply throughout.
        seed: the pool's seed.
        device: torch device; None: accelerate's (cuda when present, one GPU per process).
        precision: U-Net precision: `auto` (bf16 on a GPU that has it, else fp16; fp32 on CPU),
            `fp32`, `fp16`, `bf16` (StyleGAN2 generates in fp32).
        compile_unet: `torch.compile` the U-Net (LDM and SD only): worth it for large pools on a
            GPU; the first pass compiles (a minute or more).
        name: the generator's name in `pool.json` (default: the model folder's name).
        save_intermediates: a folder (outside the pool) for the paper's Fig. 5B rows: per image,
            the decoded x0 predictions at `intermediate_steps` evenly spaced steps, side by side
            (LDM only).
        intermediate_steps: how many steps such a row shows.
        progress: show a progress bar (None: when stderr is a terminal).

    Returns:
        The pool folder, with `pool.json`.

    Raises:
        HistosynthError: `per_class` < 1, a model folder without `histosynth.json` or of a kind
            that cannot generate, an unknown class, guidance without a trained null class, an
            option of the other model kind, or an out folder holding another pool or other files.
    """
    model = Path(model).expanduser()
    out = Path(out).expanduser()
    info = read_model_info(model, list(SAMPLERS))
    wanted = _check_request(model, info, classes, per_class, steps, batch_size, precision)
    _check_kind_options(info, model, eta, guidance, truncation, save_intermediates)
    stylegan = info["kind"] == "stylegan2"
    if stylegan and compile_unet:
        raise HistosynthError(f"--compile: {model} is a StyleGAN2 model; only diffusion U-Nets are compiled")
    state = _process_state()
    target = torch.device(device) if device else state.device
    batch_size = batch_size or (CUDA_BATCH if target.type == "cuda" else CPU_BATCH)
    identity = {
        "generator": name or model.name,
        "checkpoint": model_hash(model),
        "sampler": "stylegan2" if stylegan else "ddim",
        "steps": None if stylegan else steps,
        "eta": None if stylegan else eta,
        "guidance": None if stylegan else guidance,
        "truncation": truncation if stylegan else None,
        # the U-Net's precision changes the images (bf16 rounds the noise predictions)
        "precision": None if stylegan else DTYPE_NAMES[_dtype(target, precision)],
        "seed": seed,
    }
    if state.is_main_process:
        _claim(out, identity, model)
        for c in wanted:
            (out / c).mkdir(exist_ok=True)
    state.wait_for_everyone()
    todo = [(c, i) for c in wanted for i in range(per_class) if not (out / c / image_name(i)).exists()]
    mine = todo[state.process_index :: state.num_processes]  # each process draws its share
    if stylegan:
        draw = _stylegan2_drawer(model, info, target, truncation)
    else:
        rows = Path(save_intermediates) if save_intermediates else None
        dtype = PRECISIONS[identity["precision"]]
        from trainer.diffusion.ldm import PAD_TO

        shape = -(-batch_size // PAD_TO) * PAD_TO  # one U-Net shape for the whole run
        ddim = (steps, eta, guidance)
        draw = _ldm_drawer(model, info, target, dtype, ddim, rows, intermediate_steps, shape, compile_unet)
    with progress_bar(progress if state.is_main_process else False) as bar:
        task = bar.add_task(f"generate {len(todo)} images", total=len(mine))
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            generators = [torch.Generator().manual_seed(derive_seed(seed, c, i)) for c, i in batch]
            for (c, i), image in zip(batch, draw(batch, generators), strict=True):
                atomic_write_bytes(out / c / image_name(i), png_bytes(image))
            bar.advance(task, len(batch))
    state.wait_for_everyone()
    if state.is_main_process:
        _seal(out, identity, info, per_class, model)
    state.wait_for_everyone()
    return out


# What draws a batch: (class, index) pairs and their generators -> (B, H, W, 3) uint8 images.
Drawer = Callable[[list[tuple[str, int]], list[torch.Generator]], np.ndarray]


def _check_request(
    model: Path,
    info: dict[str, Any],
    classes: list[str] | None,
    per_class: int,
    steps: int,
    batch_size: int | None,
    precision: str,
) -> list[str]:
    """The classes to generate, once the counts, the precision and the classes are checked."""
    if per_class < 1:
        raise HistosynthError(f"--per-class {per_class}: must be at least 1")
    if steps < 1 or (batch_size is not None and batch_size < 1):
        raise HistosynthError("--steps and --batch-size must be at least 1")
    if precision not in ("auto", *PRECISIONS):
        raise HistosynthError(f"--precision {precision!r}: expected auto, fp32, fp16 or bf16")
    wanted = list(classes or info["classes"])
    unknown = [item for item in wanted if item not in info["classes"]]
    if unknown:
        raise HistosynthError(
            f"--classes {', '.join(unknown)}: not a class of {model} ({', '.join(info['classes'])})"
        )
    return wanted


def _process_state() -> Any:
    """accelerate's view of the processes (one, or those `accelerate launch` / torchrun started)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # accelerate's launcher sets ACCELERATE_USE_CPU for --cpu runs; PartialState, unlike
    # Accelerator, does not read it, and would see one process of its own in each of them
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _dtype(target: torch.device, precision: str) -> torch.dtype:
    """The U-Net's dtype: `auto` is bf16 on a GPU that has it (fp16 on one that has not) and
    fp32 elsewhere."""
    if precision == "auto":
        if target.type != "cuda":
            return PRECISIONS["fp32"]
        return PRECISIONS["bf16" if torch.cuda.is_bf16_supported() else "fp16"]
    return PRECISIONS[precision]


def _stylegan2_drawer(model: Path, info: dict[str, Any], target: torch.device, truncation: float) -> Drawer:
    """StyleGAN2's EMA generator: z and every noise input from each image's generator."""
    from trainer.stylegan2.sampling import generate_images, load_stylegan2

    loaded = load_stylegan2(model, target)
    label_of = {c: index for index, c in enumerate(info["classes"])}

    def draw(batch: list[tuple[str, int]], generators: list[torch.Generator]) -> np.ndarray:
        return generate_images(loaded, [label_of[c] for c, _ in batch], generators, truncation)

    return draw


def _ldm_drawer(
    model: Path,
    info: dict[str, Any],
    target: torch.device,
    dtype: torch.dtype,
    ddim: tuple[int, float, float],
    rows: Path | None,
    row_steps: int,
    pad_to: int,
    compile_unet: bool,
) -> Drawer:
    """DDIM in latent space (an LDM or a fine-tuned SD), then the decoder.

    `ddim` is (steps, eta, guidance). With `rows`, each image's decoded x0 predictions at
    `row_steps` evenly spaced steps are also written there side by side (the paper's Fig. 5B).
    Every U-Net pass runs on `pad_to` images.
    """
    from trainer.diffusion.ldm import decode_images, load_ldm, sample_latents

    steps, eta, guidance = ddim
    loaded = load_ldm(model, target, dtype)
    if compile_unet:
        loaded.unet = torch.compile(loaded.unet)
    label_of = {c: index for index, c in enumerate(info["classes"])}
    shown = intermediate_indices(steps, row_steps) if rows else []

    def draw(batch: list[tuple[str, int]], generators: list[torch.Generator]) -> np.ndarray:
        kept: dict[int, torch.Tensor] = {}

        def keep(index: int, x0: torch.Tensor) -> None:
            if index in shown:
                kept[index] = x0.float().cpu()

        latents = sample_latents(
            loaded,
            [label_of[c] for c, _ in batch],
            generators,
            steps=steps,
            eta=eta,
            guidance=guidance,
            on_step=keep if shown else None,
            pad_to=pad_to,
        )
        if rows:
            _write_rows(loaded, rows, batch, [kept[index] for index in shown])
        return decode_images(loaded, latents)

    return draw


def _seal(out: Path, identity: dict[str, Any], info: dict[str, Any], per_class: int, model: Path) -> None:
    """Replace the pool's in-progress marker by its `pool.json`, with a sha256 per file."""
    extra = {key: identity[key] for key in ("eta", "guidance", "truncation", "precision")}
    extra.update(per_class=per_class, model_kind=info["kind"], model_folder=str(model))
    write_manifest(
        out,
        generator=identity["generator"],
        checkpoint=identity["checkpoint"],
        sampler=identity["sampler"],
        steps=identity["steps"],
        seed=identity["seed"],
        extra=extra,
    )
    (out / MARKER).unlink(missing_ok=True)


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB uint8 array as PNG bytes without metadata (the same pixels give the same bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def intermediate_indices(steps: int, count: int) -> list[int]:
    """`count` DDIM step indices evenly spread from the first to the last step."""
    count = max(1, min(count, steps))
    return sorted({round(k * (steps - 1) / max(count - 1, 1)) for k in range(count)})


def _check_kind_options(
    info: dict[str, Any],
    model: Path,
    eta: float,
    guidance: float,
    truncation: float,
    save_intermediates: str | Path | None,
) -> None:
    """Refuse the options of the other model kind rather than ignore them silently, and guidance
    from a model whose null class was never trained."""
    kind = info["kind"]
    if kind == "stylegan2":
        used = {
            "--eta": eta != 0.0,
            "--guidance": guidance != 1.0,
            "--save-intermediates": save_intermediates is not None,
        }
        given = [flag for flag, is_used in used.items() if is_used]
        if given:
            raise HistosynthError(
                f"{', '.join(given)}: diffusion options; a stylegan2 model takes --truncation"
            )
        return
    if truncation != 1.0:
        raise HistosynthError(f"--truncation {truncation}: StyleGAN2 only; a {kind} model takes --guidance")
    if guidance != 1.0 and float(info["settings"].get("cond_drop", 0.0)) == 0.0:
        raise HistosynthError(
            f"--guidance {guidance}: {model} was trained with cond_drop 0, so its null class is untrained; "
            "use --guidance 1 or retrain with --cond-drop"
        )


def _claim(out: Path, identity: dict[str, Any], model: Path) -> None:
    """Make `out` this pool's folder, or check that it already is; remove stale temporary files.

    Raises:
        HistosynthError: `out` is a file, holds a pool or a run with another identity, or
            holds files without either record.
    """
    if out.exists() and not out.is_dir():
        raise HistosynthError(f"{out}: output path exists and is not a folder")
    marker = out / MARKER
    record = None
    if marker.is_file():
        record = json.loads(marker.read_text(encoding="utf-8"))
    elif (out / MANIFEST_NAME).is_file():
        try:
            record = read_manifest(out)
        except PoolError as error:
            raise HistosynthError(f"{out}: holds an unreadable {MANIFEST_NAME} ({error})") from error
    elif out.is_dir() and any(not entry.name.startswith(".") for entry in out.iterdir()):
        raise HistosynthError(
            f"{out}: holds files that histosynth generate did not write; choose another --out"
        )
    if record is not None:
        differ = [key for key in IDENTITY if record.get(key) != identity[key]]
        if differ:
            raise HistosynthError(
                f"{out}: holds another pool ({', '.join(differ)} differ from this run: "
                f"{', '.join(f'{key}={record.get(key)!r}' for key in differ)}); choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps({**identity, "model_folder": str(model)}, indent=2) + "\n")
    for stale in out.glob("*/.*.tmp"):
        stale.unlink(missing_ok=True)


def _write_rows(model: Any, folder: Path, batch: list[tuple[str, int]], x0s: list[torch.Tensor]) -> None:
    """Decode each kept x0 prediction and write one row image per generated image."""
    from trainer.diffusion.ldm import decode_images

    decoded = [decode_images(model, x0) for x0 in x0s]  # per step: (B, H, W, 3)
    for position, (c, i) in enumerate(batch):
        row = np.concatenate([step[position] for step in decoded], axis=1)
        (folder / c).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / c / image_name(i), png_bytes(row))
