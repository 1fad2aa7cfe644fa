"""The README's "Try everything on a CPU in ten minutes" runs exactly as written.

The commands are read from README.md, not copied here, so a change to either side that breaks
the other fails this test (as sqlite-utils keeps its documentation in step with its code).
The block runs in bash in an empty folder with the installed `histosynth` first on PATH and
its own cache folder, the way a newcomer pastes it.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.training  # it trains every tiny model (and runs processes)

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Try everything on a CPU in ten minutes"


def cpu_section_commands() -> str:
    """The first bash block of the README's CPU section."""
    text = README.read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, f"README.md: no bash block under {SECTION!r}"
    return blocks[0]


def test_the_cpu_section_runs_as_written_and_writes_every_output(tmp_path: Path) -> None:
    commands = cpu_section_commands()
    assert commands.splitlines()[0].startswith("histosynth demo --no-launch")
    assert "histosynth evaluate ratings" in commands.splitlines()[-1]
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HISTOSYNTH_CACHE_DIR": str(tmp_path / "cache"),
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for pool in ("pools/klf8-dm", "pools/stylegan2"):
        assert (tmp_path / pool / "pool.json").is_file(), pool
        assert len(list((tmp_path / pool).glob("*/*.png"))) == 9 * 6
    for table in (
        "results/msssim/msssim.csv",
        "results/memorization/memorization.csv",
        "results/memorization/memorization_verdict.csv",
        "results/classifier/classifier_accuracy.md",
        "results/classifier/classifier_comparison.csv",
        "results/ratings/expert_scores.csv",
        "results/ratings/fleiss_kappa.csv",
        "results/ratings/roc_auc.csv",
        "results/ratings/imrmc.imrmc",
    ):
        assert (tmp_path / table).is_file(), table
    with (tmp_path / "results/classifier/classifier_metrics.csv").open() as handle:
        seeds = {row["seed"] for row in csv.DictReader(handle)}
    assert len(seeds) == 6  # enough seeds for the sign-flip test to reach p < 0.05
    assert not (tmp_path / "results/classifier/checkpoints").exists()  # finished fits keep no checkpoints
    # the README's ratings come from simulated raters, and its tables say so
    assert (tmp_path / "results/ratings/expert_scores.md").read_text().startswith("SIMULATED: 4 of 4 raters")
