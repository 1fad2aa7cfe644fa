"""`histosynth import ...`: bring published weights from other code bases into our model folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Import published checkpoints as histosynth model folders.", no_args_is_help=True)


@app.command("compvis")
def compvis(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="CompVis latent-diffusion .ckpt (or .safetensors).")
    ],
    config: Annotated[
        Path, typer.Option("--config", help="Its YAML config (configs/latent-diffusion/*.yaml).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write (must not hold files).")],
    classes: Annotated[
        list[str] | None,
        typer.Option(
            "--classes",
            help="Class names in label order, comma-separated or repeated (for a class-conditional model).",
        ),
    ] = None,
    unsafe_pickle: Annotated[
        bool,
        typer.Option(
            help="Load a .ckpt holding Python objects besides tensors (runs pickle: trusted files only)."
        ),
    ] = False,
) -> None:
    """Convert a CompVis checkpoint (KLF8-DM, VQF8-DM or a first stage alone) for `histosynth generate`."""
    from trainer.compvis.importer import import_compvis

    names = [name for value in classes or [] for name in value.split(",") if name]
    folder = import_compvis(checkpoint, config, out, classes=names or None, unsafe_pickle=unsafe_pickle)
    typer.echo(f"wrote {folder}", err=True)
