"""`benchmarks/gpu_check.py --tiny`: the GPU call's script, end to end on this CPU.

A lent GPU gives a session one short call; the script it runs must not fail there on a typo or
a changed front door. Here it runs on the tiny presets and must fill every part of its JSON,
the resume of every train command included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_the_gpu_check_runs_tiny_and_fills_every_part(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    command = [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["scale"] == "tiny" and report["machine"]["device"] in ("cpu", "cuda")
    for part in ("sampling", "training", "ema", "memorization"):
        assert report[part]["ok"], report[part]
    assert [row["batch"] for row in report["sampling"]["rows"]] == [2, 4]
    assert report["sampling"]["best"]["seconds_per_image"] > 0
    for command in ("autoencoder", "ldm", "stylegan2"):
        trained = report["training"][command]
        assert trained["ok"] and trained["steps"] == 4 and trained["steps_per_second"] > 0, trained
    assert report["memorization"]["ratio"] > 0
