"""The `histosynth` command line: thin typer commands over the apps' Python functions.

Each command parses options and calls one function of `rater_app`, `evaluator` or
`trainer`, imported inside the command so that `histosynth study ...` starts without
importing torch. Library errors (`HistosynthError`) become one line on stderr and exit 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from histosynth.errors import HistosynthError

app = typer.Typer(
    help="Train, rate and evaluate generative models of histology.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
study_app = typer.Typer(help="Create blinded rating studies and manage their raters.", no_args_is_help=True)
raters_app = typer.Typer(help="Add and list the raters of a study.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Turn votes and image pools into tables and figures.", no_args_is_help=True)
app.add_typer(study_app, name="study")
study_app.add_typer(raters_app, name="raters")
app.add_typer(evaluate_app, name="evaluate")

DbOption = Annotated[Path, typer.Option("--db", help="SQLite study database file.")]
StudyOption = Annotated[str, typer.Option("--study", help="Study name inside the database.")]

# Options shared by the pool evaluators (fid, tsne, msssim, memorization).
PoolsOption = Annotated[
    list[str], typer.Option("--pool", help="Generated pool NAME=DIR; repeat for several.")
]
ReferenceOption = Annotated[Path, typer.Option("--reference", help="Real pool <DIR>/<CLASS>/<image>.")]
ExtractorOption = Annotated[
    str, typer.Option(help="'inception' (clean-fid) or module:callable returning the feature model.")
]
WeightsOption = Annotated[
    Path | None,
    typer.Option(help="inception-2015-12-05.pt or its folder (default: <cache>/weights/)."),
]
ModeOption = Annotated[str, typer.Option(help="'clean' (resize to 299, clean-fid) or 'native'.")]
WorkersOption = Annotated[int, typer.Option(help="Threads decoding and resizing images.")]
DeviceOption = Annotated[str | None, typer.Option(help="Torch device (default: cuda if available).")]
CacheOption = Annotated[bool, typer.Option(help="Use the feature cache.")]


def parse_named_dirs(values: list[str], option: str) -> dict[str, Path]:
    """Parse repeated `NAME=DIR` options (e.g. `--pool KLF8-DM=pools/klf8`) in order.

    Raises:
        HistosynthError: a value lacks `=`, has an empty side, or repeats a name.
    """
    named: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise HistosynthError(f"{option} {value!r}: expected NAME=DIR")
        if name in named:
            raise HistosynthError(f"{option}: name {name!r} given twice")
        named[name] = Path(folder)
    return named


@study_app.command("create")
def study_create(
    config: Annotated[Path, typer.Argument(help="Study definition (TOML).")],
    db: DbOption,
) -> None:
    """Sample tiles from the pools, blind them and create the study in the database."""
    from rater_app.create import create_study

    created = create_study(config, db)
    typer.echo(f"study {created.name}: {created.n_items} tiles, image store {created.store_dir}")
    typer.echo(f"admin\t{created.admin_secret}\t(shown once; log in as 'admin' to see progress)")


@raters_app.command("add")
def raters_add(
    names: Annotated[list[str], typer.Argument(help="Rater names.")],
    db: DbOption,
    study: StudyOption,
    url: Annotated[str, typer.Option(help="Base URL of the rating app, for the login links.")] = (
        "http://127.0.0.1:7860"
    ),
) -> None:
    """Add raters; prints name<TAB>secret<TAB>login-url once per rater (secrets are not stored)."""
    from urllib.parse import quote

    from rater_app.raters import add_raters

    for rater in add_raters(str(db), study, names):
        typer.echo(f"{rater.name}\t{rater.secret}\t{url.rstrip('/')}/login?name={quote(rater.name)}")


@raters_app.command("list")
def raters_list(db: DbOption, study: StudyOption) -> None:
    """List the study's raters."""
    from rater_app.raters import list_raters

    for name in list_raters(str(db), study):
        typer.echo(name)


@study_app.command("status")
def study_status_command(db: DbOption, study: StudyOption) -> None:
    """Progress per rater: answered of total."""
    from rater_app.export import study_status

    for progress in study_status(db, study):
        state = "done" if progress.done else ""
        typer.echo(f"{progress.rater}\t{progress.answered}/{progress.total}\t{state}".rstrip())


@study_app.command("export")
def study_export(
    db: DbOption,
    study: StudyOption,
    out: Annotated[Path | None, typer.Option("--out", help="CSV file; standard output if omitted.")] = None,
) -> None:
    """Export the votes as CSV (rater,item,class,source,vote,confidence,repeat,seconds,position)."""
    from rater_app.export import export_votes

    text = export_votes(db, study, out)
    if out is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"wrote {out}", err=True)


@study_app.command("audit")
def study_audit(db: DbOption, study: StudyOption) -> None:
    """Check the blinding: image format, size, mode and metadata, opaque ids, order vs source."""
    from rater_app.audit import audit_study

    report = audit_study(db, study)
    for line in report.lines():
        typer.echo(line)
    if not report.passed:
        raise typer.Exit(1)


@app.command("rate")
def rate(
    db: DbOption,
    study: Annotated[
        str | None, typer.Option("--study", help="Study to serve (default: the only one).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    trusted_proxy: Annotated[
        str | None,
        typer.Option(
            "--trusted-proxy",
            metavar="ADDR",
            help="Address of your reverse proxy; only its X-Forwarded-For/-Proto/-Host are believed.",
        ),
    ] = None,
) -> None:
    """Serve the blinded rating app (Gradio) for raters and the study's admin."""
    from rater_app.server import serve

    serve(db, study, host=host, port=port, trusted_proxy=trusted_proxy)


@evaluate_app.command("fid")
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
    bootstrap: Annotated[int, typer.Option(help="FID bootstrap replicates (0: none).")] = 20,
    bootstrap_max_n: Annotated[
        int, typer.Option(help="Bootstrap only rows with at most this many images.")
    ] = 2048,
    seed: Annotated[int, typer.Option(help="Seed of KID subsets and bootstrap.")] = 0,
    cache: CacheOption = True,
) -> None:
    """FID and KID per class of each generated pool against the reference (the paper's Table 2)."""
    from evaluator.fid import compute_fid

    table = compute_fid(
        reference,
        parse_named_dirs(pool, "--pool"),
        out,
        classes=classes or None,
        extractor=extractor,
        inception_weights=inception_weights,
        mode=mode,
        batch_size=batch_size,
        num_workers=workers,
        device=device,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        bootstrap=bootstrap,
        bootstrap_max_n=bootstrap_max_n,
        seed=seed,
        use_cache=cache,
        progress=True,
    )
    typer.echo(table.to_string(index=False, float_format=lambda value: f"{value:.4g}"))
    typer.echo(f"wrote {out / 'fid.csv'}", err=True)


@evaluate_app.command("tsne")
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
) -> None:
    """t-SNE of features per class, reference vs each pool (the paper's Fig. 2B)."""
    from evaluator.tsne import compute_tsne

    table = compute_tsne(
        reference,
        parse_named_dirs(pool, "--pool"),
        out,
        classes=classes or None,
        extractor=extractor,
        inception_weights=inception_weights,
        mode=mode,
        per_source=per_source,
        perplexity=perplexity,
        batch_size=batch_size,
        num_workers=workers,
        device=device,
        seed=seed,
        use_cache=cache,
        progress=True,
    )
    typer.echo(f"wrote {out / 'tsne.png'} ({len(table)} points)", err=True)


@evaluate_app.command("msssim")
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
    size: Annotated[int, typer.Option(help="Resize to SIZE x SIZE, bilinear (0: native size).")] = 256,
    max_per_class: Annotated[
        int | None, typer.Option(help="Measure a random subset of this many images per class.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    device: DeviceOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the subset.")] = 0,
) -> None:
    """MS-SSIM of an autoencoder's reconstructions, mean and std per class and overall."""
    from evaluator.msssim import compute_msssim

    summary, _ = compute_msssim(
        autoencoder,
        data,
        out,
        classes=classes or None,
        size=size or None,
        max_per_class=max_per_class,
        batch_size=batch_size,
        device=device,
        seed=seed,
        progress=True,
    )
    typer.echo(summary.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    typer.echo(f"wrote {out / 'msssim.csv'}", err=True)


@app.command("demo")
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Where the demo data and database live.")] = Path(
        "histosynth-demo"
    ),
    launch: Annotated[bool, typer.Option("--launch/--no-launch", help="Start the rating app.")] = True,
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
) -> None:
    """Build the demo data (first run), create the demo study with three raters, and serve it."""
    from urllib.parse import quote

    from rater_app.demo import prepare_demo

    logins = prepare_demo(folder)
    base = f"http://{host}:{port}"
    typer.echo(f"demo study {logins.study!r} in {logins.db_path}")
    typer.echo("name\tsecret\tlogin-url")
    for rater in logins.raters:
        typer.echo(f"{rater.name}\t{rater.secret}\t{base}/login?name={quote(rater.name)}")
    typer.echo(f"admin\t{logins.admin_secret}\t{base}/login?name=admin")
    if launch:
        from rater_app.server import serve

        typer.echo(f"serving on {base}/ (Ctrl-C stops)")
        serve(logins.db_path, logins.study, host=host, port=port)


@evaluate_app.command("memorization")
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
    size: Annotated[int, typer.Option(help="Side tiles are resized to (bilinear), as in the paper.")] = 256,
    native_size: Annotated[
        bool, typer.Option("--native-size", help="Compare at the tiles' own size (all must share it).")
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
) -> None:
    """Closest training tile of generated (and held-out) tiles by pixel correlation (the paper's Fig. 4)."""
    from evaluator.memorization import run_memorization

    result, _ = run_memorization(
        train,
        parse_named_dirs(pool, "--pool"),
        out,
        baseline,
        top_k=top_k,
        baseline_name=baseline_name,
        n=n,
        baseline_n=baseline_n,
        size=None if native_size else size,
        flips=flips,
        across_classes=across_classes,
        classes=classes or None,
        threshold=threshold,
        alpha=alpha,
        seed=seed,
        cache_dir=cache_dir,
        memory_mb=memory_mb,
        workers=workers,
        progress=sys.stderr.isatty(),
    )
    table = result.verdict if result.verdict is not None else result.summary
    typer.echo(table.to_string(index=False, float_format=lambda value: f"{value:.4g}"))
    typer.echo(f"wrote {out / 'memorization.csv'}", err=True)


@evaluate_app.command("ratings")
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
    bootstrap: Annotated[int, typer.Option(help="Bootstrap replicates for the confidence intervals.")] = 1000,
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
    from evaluator.ratings_report import RatingSettings, evaluate_ratings
    from evaluator.votes import read_votes

    if from_csv:
        frame = read_votes(votes)
    else:
        from rater_app.export import votes_frame

        frame = votes_frame(db, study)
    settings = RatingSettings(
        include_unfinished=include_unfinished,
        n_bootstrap=bootstrap,
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
    typer.echo(f"wrote {out / 'expert_scores.csv'} and more", err=True)


def main() -> None:
    """Console-script entry point: run the app, turning library errors into one line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except HistosynthError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)
    except OSError as error:  # a path the user gave cannot be read or written (not a folder, disk full...)
        where = error.filename if error.filename is not None else "file system"
        typer.echo(f"error: {where}: {error.strerror or error}", err=True)
        sys.exit(1)
