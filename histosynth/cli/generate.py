"""`histosynth generate`: write a pool from a trained model (resumable, deterministic per seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histosynth.cli.options import DeviceOption, report


def generate(
    model: Annotated[
        Path, typer.Option("--model", help="Model folder of `histosynth train` (with histosynth.json).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Pool folder to write <POOL>/<CLASS>/<index>.png.")],
    per_class: Annotated[int, typer.Option("--per-class", help="Images per class.")],
    classes: Annotated[
        list[str] | None, typer.Option("--classes", help="Class to generate; repeat (default: all).")
    ] = None,
    steps: Annotated[int, typer.Option(help="DDIM steps (the paper: 200; LDM only).")] = 200,
    eta: Annotated[float, typer.Option(help="DDIM eta (0: deterministic).")] = 0.0,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1: none).")] = 1.0,
    truncation: Annotated[
        float, typer.Option(help="StyleGAN2 truncation psi toward the class's mean w (1: none).")
    ] = 1.0,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Images per denoiser pass (changes no image; default: 64 on a GPU, 16 on a CPU)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed: image i of class c uses derive_seed(seed, c, i).")] = 0,
    device: DeviceOption = None,
    precision: Annotated[
        str,
        typer.Option(help="U-Net precision: auto (bf16 on a GPU that has it, else fp16), fp32, fp16, bf16."),
    ] = "auto",
    compile_unet: Annotated[
        bool,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the U-Net (LDM, SD): for large pools on a GPU; the first pass compiles.",
        ),
    ] = False,
    name: Annotated[
        str | None, typer.Option(help="Generator name in pool.json (default: model folder name).")
    ] = None,
    save_intermediates: Annotated[
        Path | None,
        typer.Option(help="Folder (outside the pool) for Fig. 5B rows of decoded x0 predictions."),
    ] = None,
    intermediate_steps: Annotated[int, typer.Option(help="Steps shown per intermediate row.")] = 8,
    progress: Annotated[
        bool | None, typer.Option(help="Show a progress bar (default: in a terminal).")
    ] = None,
) -> None:
    """Generate a pool from a trained model (LDM: DDIM, CompVis schedule; StyleGAN2), resumable, pool.json."""
    from trainer.generate import generate_pool

    pool = generate_pool(
        model,
        out,
        per_class,
        classes=classes or None,
        steps=steps,
        eta=eta,
        guidance=guidance,
        truncation=truncation,
        batch_size=batch_size,
        seed=seed,
        device=device,
        precision=precision,
        compile_unet=compile_unet,
        name=name,
        save_intermediates=save_intermediates,
        intermediate_steps=intermediate_steps,
        progress=progress,
    )
    report(f"wrote {pool}")
