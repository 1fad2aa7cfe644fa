"""`histosynth evaluate ...`: turn votes and image pools into the paper's tables and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histosynth.cli.options import (
    CacheOption,
    DeviceOption,
    ExtractorOption,
    ModeOption,
    PoolsOption,
    ProgressOption,
    ReferenceOption,
    SizeOption,
    WeightsOption,
    WorkersOption,
    parse_named_dirs,
)
from histosynth.errors import HistosynthError

app = typer.Typer(help="Turn votes and image pools into tables and figures.", no_args_is_help=True)


@app.command("ratings")
def evaluate_ratings_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for expert_scores.*, fleiss_kappa.*, ...")],
    db: Annotated[Path | None, typer.Option("--db", help="SQLite study database (with --study).")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name inside --db.")] = None,
    votes: Annotated[
        Path | None, typer.Option("--votes", help="Votes CSV: rater,item,class,source,vote[,confidence,...].")
    ] = None,
    include_unfinished: Annotated[
        bool, typer.Option("--include-unfinished", help="Keep raters who did not rate every tile.")
    ] = False,
    n_bootstrap: Annotated[
        int,
        typer.Option(
            "--n-bootstrap", "--bootstrap", help="Bootstrap replicates for the confidence intervals."
        ),
    ] = 1000,
    ci_level: Annotated[float, typer.Option(help="Confidence level of the intervals.")] = 0.95,
    correction: Annotated[
        str, typer.Option(help="Multiple-testing correction (statsmodels multipletests method).")
    ] = "holm",
    alpha: Annotated[float, typer.Option(help="Significance level of the discrimination tests.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    ddof: Annotated[
        int, typer.Option(help="Delta degrees of freedom of the std across raters (1: sample std).")
    ] = 1,
    figure: Annotated[bool, typer.Option(help="Draw Fig. 3B (expert_scores.png/.pdf).")] = True,
) -> None:
    """Expert rating scores, Fleiss' kappa, CIs, tests, ROC and timing from a study's votes (Fig. 3B)."""
    from_csv = votes is not None and db is None and study is None
    from_db = votes is None and db is not None and study is not None
    if not (from_csv or from_db):
        raise HistosynthError("give either --votes FILE or both --db FILE and --study NAME")
    from evaluator.ratings.report import RatingSettings, evaluate_ratings
    from evaluator.ratings.votes import read_votes

    if from_csv:
        frame = read_votes(votes)
    else:
        from rater_app.export import votes_frame

        frame = votes_frame(db, study)
    settings = RatingSettings(
        include_unfinished=include_unfinished,
        n_bootstrap=n_bootstrap,
        ci_level=ci_level,
        correction=correction,
        alpha=alpha,
        seed=seed,
        ddof=ddof,
    )
    report = evaluate_ratings(frame, out, settings, figure=figure)
    columns = ["class", "source", "score_mean", "score_std", "ci_low", "ci_high", "n_raters"]
    table = report.expert_scores[columns]
    typer.echo(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    if report.simulated_note:
        typer.echo(f"{report.simulated_note} (histosynth study simulate): a pilot, not a result", err=True)
    typer.echo(f"wrote {out / 'expert_scores.csv'} and more", err=True)


@app.command("fid")
def evaluate_fid(
    reference: ReferenceOption,
    pool: PoolsOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for fid.csv, fid.md, fid.tex, fid.json.")],
    classes: Annotated[
        list[str] | None,
        typer.Option("--class", help="Class to compare; repeat (default: the pools' classes)."),
    ] = None,
    extractor: ExtractorOption = "inception",
    inception_weights: WeightsOption = None,
    mode: ModeOption = "clean",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    workers: WorkersOption = 4,
    device: DeviceOption = None,
    kid_subsets: Annotated[int, typer.Option(help="KID subsets.")] = 100,
    kid_subset_size: Annotated[int, typer.Option(help="Largest KID subset.")] = 1000,
    n_bootstrap: Annotated[
        int, typer.Option("--n-bootstrap", "--bootstrap", help="FID bootstrap replicates (0: none).")
    ] = 20,
    bootstrap_max_n: Annotated[
        int, typer.Option(help="Bootstrap only rows with at most this many images.")
    ] = 2048,
    seed: Annotated[int, typer.Option(help="Seed of KID subsets and bootstrap.")] = 0,
    cache: CacheOption = True,
    progress: ProgressOption = None,
) -> None:
    """FID and KID per class of each generated pool against the reference (the paper's Table 2)."""
    from evaluator.pools.fid import FidSettings, evaluate_fid

    settings = FidSettings(
        classes=classes or None,
        extractor=extractor,
        inception_weights=inception_weights,
        mode=mode,
        batch_size=batch_size,
        workers=workers,
        device=device,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        n_bootstrap=n_bootstrap,
        bootstrap_max_n=bootstrap_max_n,
        seed=seed,
        cache=cache,
        progress=progress,
    )
    result = evaluate_fid(reference, parse_named_dirs(pool, "--pool"), out, settings)
    typer.echo(result.table.to_string(index=False, float_format=lambda value: f"{value:.4g}"))
    typer.echo(f"wrote {out / 'fid.csv'}", err=True)


# `tsne` repeats the feature options of `fid` on purpose: typer declares a command's options in
# its own signature, and each command lists them for its --help.
@app.command("tsne")
def evaluate_tsne(
    reference: ReferenceOption,
    pool: PoolsOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for tsne.csv, tsne.png, tsne.pdf.")],
    classes: Annotated[
        list[str] | None, typer.Option("--class", help="Class to map; repeat (default: the pools' classes).")
    ] = None,
    extractor: ExtractorOption = "inception",
    inception_weights: WeightsOption = None,
    mode: ModeOption = "clean",
    per_source: Annotated[int, typer.Option(help="Images per class and source, drawn at random.")] = 500,
    perplexity: Annotated[float, typer.Option(help="t-SNE perplexity.")] = 30.0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    workers: WorkersOption = 4,
    device: DeviceOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the subsets, PCA and t-SNE.")] = 0,
    cache: CacheOption = True,
    progress: ProgressOption = None,
) -> None:
    """t-SNE of features per class, reference vs each pool (the paper's Fig. 2B)."""
    from evaluator.pools.tsne import TsneSettings, evaluate_tsne

    settings = TsneSettings(
        classes=classes or None,
        extractor=extractor,
        inception_weights=inception_weights,
        mode=mode,
        per_source=per_source,
        perplexity=perplexity,
        batch_size=batch_size,
        workers=workers,
        device=device,
        seed=seed,
        cache=cache,
        progress=progress,
    )
    result = evaluate_tsne(reference, parse_named_dirs(pool, "--pool"), out, settings)
    typer.echo(f"wrote {out / 'tsne.png'} ({len(result.table)} points)", err=True)


@app.command("msssim")
def evaluate_msssim(
    autoencoder: Annotated[
        Path, typer.Option("--autoencoder", help="diffusers AutoencoderKL/VQModel folder.")
    ],
    data: Annotated[
        Path, typer.Option("--data", help="Pool of images to reconstruct, <DIR>/<CLASS>/<image>.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for msssim.csv, .md, .tex, .png, .pdf.")],
    classes: Annotated[
        list[str] | None, typer.Option("--class", help="Class to measure; repeat (default: all).")
    ] = None,
    size: SizeOption = 256,
    max_per_class: Annotated[
        int | None, typer.Option(help="Measure a random subset of this many images per class.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    device: DeviceOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the subset.")] = 0,
    progress: ProgressOption = None,
) -> None:
    """MS-SSIM of an autoencoder's reconstructions, mean and std per class and overall."""
    from evaluator.pools.msssim import MsssimSettings, evaluate_msssim

    settings = MsssimSettings(
        classes=classes or None,
        size=size or None,
        max_per_class=max_per_class,
        batch_size=batch_size,
        device=device,
        seed=seed,
        progress=progress,
    )
    result = evaluate_msssim(autoencoder, data, out, settings)
    typer.echo(result.summary.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    typer.echo(f"wrote {out / 'msssim.csv'}", err=True)


@app.command("memorization")
def evaluate_memorization(
    train: Annotated[Path, typer.Option("--train", help="Training pool <DIR>/<CLASS>/<image>.")],
    pool: PoolsOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for memorization.csv, tables, figure, gallery.")],
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="Held-out real pool, e.g. CRC-VAL-HE-7K.")
    ] = None,
    baseline_name: Annotated[
        str | None, typer.Option(help="Baseline's name in the outputs (default: its folder name).")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Random tiles per class and source.")] = 200,
    baseline_n: Annotated[
        int | None, typer.Option(help="Baseline tiles per class (default: --n); more see fewer copies.")
    ] = None,
    classes: Annotated[
        list[str] | None, typer.Option("--class", help="Class to audit; repeat (default: all).")
    ] = None,
    size: SizeOption = 256,
    native_size: Annotated[
        bool, typer.Option("--native-size", hidden=True, help="The old spelling of --size 0.")
    ] = False,
    flips: Annotated[bool, typer.Option(help="Also try the 4 rotations of the mirrored tile.")] = False,
    across_classes: Annotated[
        bool, typer.Option(help="Compare with the training tiles of all classes, not only the tile's own.")
    ] = False,
    threshold: Annotated[
        str, typer.Option(help="Flag tiles above the baseline's 'max' or a percentile such as 'p99.9'.")
    ] = "max",
    alpha: Annotated[float, typer.Option(help="Significance level of the verdict.")] = 0.05,
    top_k: Annotated[int, typer.Option(help="Closest pairs per source in the gallery.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the random sample of tiles.")] = 0,
    memory_mb: Annotated[float, typer.Option(help="Working memory of the correlation search (MiB).")] = 2048,
    workers: Annotated[int | None, typer.Option(help="Decoding threads (default: CPU count).")] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache of decoded training tiles (default: user cache dir).")
    ] = None,
    progress: ProgressOption = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="Search on: numpy (CPU), or a torch device: cuda, cpu (default: cuda if available)."
        ),
    ] = None,
) -> None:
    """Closest training tile of generated (and held-out) tiles by pixel correlation (the paper's Fig. 4)."""
    from evaluator.memorization.audit import MemorizationSettings
    from evaluator.memorization.report import evaluate_memorization

    settings = MemorizationSettings(
        baseline_name=baseline_name,
        n=n,
        baseline_n=baseline_n,
        size=None if native_size else size or None,
        flips=flips,
        across_classes=across_classes,
        classes=classes or None,
        threshold=threshold,
        alpha=alpha,
        seed=seed,
        cache_dir=cache_dir,
        memory_mb=memory_mb,
        workers=workers,
        progress=progress,
        device=device,
    )
    result = evaluate_memorization(
        train, parse_named_dirs(pool, "--pool"), out, baseline, settings, top_k=top_k
    )
    table = result.verdict if result.verdict is not None else result.summary
    typer.echo(table.to_string(index=False, float_format=lambda value: f"{value:.4g}"))
    typer.echo(f"wrote {out / 'memorization.csv'}", err=True)
