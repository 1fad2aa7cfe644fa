"""Start Snakemake on a checked `ReproduceSettings`.

Snakemake runs as its own command line (`python -m snakemake`), not through its Python API:
profiles (`--profile`, the usual way to give a SLURM account and partitions) and executor
plugins are read by that command line, and a run killed with its process leaves this one's
state intact. The config goes to `reproduce.config.json` in the run folder; a dry run writes it
to a temporary folder instead and runs Snakemake there, so that it writes nothing in `out`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from histosynth.errors import HistosynthError
from histosynth.files import atomic_write_text
from histosynth.workflow.settings import CONFIG_NAME, ReproduceSettings, check_settings

SNAKEFILE = Path(__file__).with_name("Snakefile")


def reproduce(settings: ReproduceSettings) -> int:
    """Check the settings, write the run's config and run the workflow; Snakemake's exit code.

    Raises:
        HistosynthError: a bad setting (see `check_settings`), or Snakemake is not installed
            (`pip install histosynth[reproduce]`).
    """
    config = check_settings(settings)
    try:
        import snakemake  # noqa: F401  (only to say how to install it)
    except ImportError as error:
        raise HistosynthError("reproduce needs Snakemake: pip install 'histosynth[reproduce]'") from error
    out = Path(settings.out).expanduser().resolve()
    if settings.dry_run:
        with tempfile.TemporaryDirectory(prefix="histosynth-dry-run-") as scratch:
            return _snakemake(settings, config, Path(scratch), out)
    out.mkdir(parents=True, exist_ok=True)
    return _snakemake(settings, config, out, out)


def _snakemake(settings: ReproduceSettings, config: dict, folder: Path, out: Path) -> int:
    """Run Snakemake with the config written in `folder`, working in `out` (a dry run: in `folder`,
    with links to what `out` already holds, so that Snakemake sees what is done)."""
    config_file = folder / CONFIG_NAME
    atomic_write_text(config_file, json.dumps(config, indent=2) + "\n")
    workdir = out
    if settings.dry_run:
        workdir = folder / "run"
        workdir.mkdir()
        if out.is_dir():
            for entry in out.iterdir():
                if entry.name not in (".snakemake", CONFIG_NAME):
                    (workdir / entry.name).symlink_to(entry)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir)]
    command += ["--configfile", str(config_file), "--cores", str(settings.cores), "--rerun-incomplete"]
    command += ["--resources", f"gpus={config['gpus_per_job'] or 0}"] if settings.executor == "local" else []
    command += ["--executor", "slurm"] if settings.executor == "slurm" else []
    command += ["--profile", str(settings.profile)] if settings.profile else []
    command += ["--dry-run"] if settings.dry_run else []
    command += ["--quiet", "progress"] if settings.progress is False else []
    return subprocess.run(command).returncode
