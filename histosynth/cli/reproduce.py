"""`histosynth reproduce`: every table and figure of the paper from one data folder (Snakemake)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def reproduce(
    data: Annotated[
        Path, typer.Option("--data", help="Training pool <DIR>/<CLASS>/<image> (NCT-CRC-HE-100K).")
    ],
    test: Annotated[
        Path, typer.Option("--test", help="Held-out pool with the same classes (CRC-VAL-HE-7K).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder: models/, pools/, results/, study/.")],
    preset: Annotated[
        str,
        typer.Option(
            help="'tiny': a small real experiment on a CPU (minutes); 'paper': the paper's sizes (GPU days)."
        ),
    ] = "tiny",
    generators: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated, of klf8, vqf8, sd, stylegan2 (default: all; sd only with --sd-base)."
        ),
    ] = None,
    sd_base: Annotated[
        Path | None, typer.Option(help="Local diffusers Stable Diffusion v1.4 folder, for the sd generator.")
    ] = None,
    per_class: Annotated[
        int | None, typer.Option(help="Images per class of each pool (default: 10000 paper, 16 tiny).")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Repeats of every classifier arm.")] = 3,
    max_steps: Annotated[
        int | None, typer.Option(help="Cap every train command's optimizer steps (plumbing checks only).")
    ] = None,
    extractor: Annotated[
        str, typer.Option(help="FID and t-SNE features: 'inception' (clean-fid) or module:callable.")
    ] = "inception",
    inception_weights: Annotated[
        Path | None, typer.Option(help="inception-2015-12-05.pt (default: <cache>/weights/).")
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(
            help="GPUs per training job; >1 runs it under accelerate launch (default: paper 1, tiny 0)."
        ),
    ] = None,
    cores: Annotated[int, typer.Option(help="CPU cores Snakemake may use at once.")] = 1,
    executor: Annotated[str, typer.Option(help="'local', or 'slurm': one cluster job per rule.")] = "local",
    profile: Annotated[
        Path | None, typer.Option(help="Snakemake profile folder (SLURM account, partitions, GPUs).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the jobs that would run; write nothing.")
    ] = False,
    progress: Annotated[bool | None, typer.Option(help="Show Snakemake's progress (default: yes).")] = None,
) -> None:
    """Reproduce the paper on your tiles: train, generate, evaluate, and a study ready for raters."""
    from histosynth.workflow.run import reproduce as run
    from histosynth.workflow.settings import ReproduceSettings, default_generators

    chosen = (
        tuple(name.strip() for name in generators.split(",")) if generators else default_generators(sd_base)
    )
    if generators is None and sd_base is None:
        typer.echo("reproduce: leaving out sd (fine-tuning Stable Diffusion needs --sd-base)", err=True)
    settings = ReproduceSettings(
        data=data,
        test=test,
        out=out,
        preset=preset,
        generators=chosen,
        sd_base=sd_base,
        per_class=per_class,
        seeds=seeds,
        max_steps=max_steps,
        extractor=extractor,
        inception_weights=inception_weights,
        gpus=gpus,
        cores=cores,
        executor=executor,
        profile=profile,
        dry_run=dry_run,
        progress=progress,
    )
    code = run(settings)
    if code:
        sys.exit(code)
