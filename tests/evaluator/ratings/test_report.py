"""`histosynth evaluate ratings` end to end: files written, errors as one line, and a study
database giving the same tables as its exported CSV."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from evaluator.ratings.figure import expert_score_figure
from evaluator.ratings.report import (
    OWNED_FILES,
    RatingSettings,
    compute_ratings,
    evaluate_ratings,
    write_ratings,
)
from evaluator.ratings.votes import VotesError, read_votes
from histosynth.errors import HistosynthError
from histosynth.tables import format_estimate, latex_escape, write_table

from ...conftest import histosynth


def study_votes(seed: int = 0, raters: tuple[str, ...] = ("A", "B", "C")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for rater in raters:
        position = 0
        for klass in ("ADI", "BACK", "TUM"):
            for source in ("real", "KLF8-DM", "styleGAN2"):
                for index in range(4):
                    position += 1
                    vote = "real" if rng.random() < (0.7 if source == "real" else 0.4) else "synthetic"
                    confidence, seconds = int(rng.integers(1, 7)), round(float(rng.exponential(3.0)), 3)
                    rows.append(
                        (rater, f"{klass}{source}{index}", klass, source, vote, confidence, 0, seconds)
                    )
        rows.append((rater, "ADIreal0", "ADI", "real", "real", 6, 1, 1.0))
    columns = ["rater", "item", "class", "source", "vote", "confidence", "repeat", "seconds"]
    return pd.DataFrame(rows, columns=columns)


def test_report_files_and_renderings(tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = evaluate_ratings(study_votes(), out, RatingSettings(n_bootstrap=100))
    names = {path.name for path in out.iterdir()}
    for stem in (
        "expert_scores",
        "fleiss_kappa",
        "fleiss_kappa_categories",
        "discrimination_tests",
        "raters",
    ):
        assert {f"{stem}.csv", f"{stem}.md", f"{stem}.tex"} <= names
    assert {"roc_auc.csv", "intra_rater.csv", "timing.csv", "timing_by_source.csv", "imrmc.csv"} <= names
    assert (out / "expert_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "expert_scores.pdf").read_bytes()[:5] == b"%PDF-"
    assert not [name for name in names if name.startswith(".")]

    scores = pd.read_csv(out / "expert_scores.csv")
    assert {"class", "source", "score_mean", "score_std", "n_raters", "ci_low", "ci_high"} <= set(
        scores.columns
    )
    assert set(scores["class"]) == {"ADI", "BACK", "TUM", "ALL"}
    kappa = pd.read_csv(out / "fleiss_kappa.csv")
    assert {"source", "class", "kappa", "se", "z", "p"} <= set(kappa.columns)
    assert set(kappa["source"]) == {"KLF8-DM", "styleGAN2", "real"}
    assert {"ALL", "MEAN"} <= set(kappa["class"])

    markdown = (out / "expert_scores.md").read_text(encoding="utf-8")
    row = scores[(scores["class"] == "ADI") & (scores["source"] == "KLF8-DM")].iloc[0]
    expected = format_estimate(row["score_mean"], row["score_std"], row["ci_low"], row["ci_high"])
    assert f"| ADI | {expected} |" in markdown
    latex = (out / "expert_scores.tex").read_text(encoding="utf-8")
    assert r"\begin{tabular}" in latex and r"$\pm$" in latex and "±" not in latex
    settings = json.loads((out / "ratings_settings.json").read_text(encoding="utf-8"))
    assert settings["n_bootstrap"] == 100 and settings["correction"] == "holm"
    assert report.expert_scores["n_raters"].eq(3).all()


def test_tables_are_generic_and_escaped(tmp_path: Path) -> None:
    frame = pd.DataFrame({"name": ["a_b & c", "d|e"], "value": [0.12345, np.nan], "flag": [True, False]})
    paths = write_table(frame, tmp_path, "demo", caption="50% of κ", digits=2)
    assert [path.name for path in paths] == ["demo.csv", "demo.md", "demo.tex"]
    pd.testing.assert_frame_equal(pd.read_csv(paths[0]), frame)
    assert "| d\\|e | – | no |" in paths[1].read_text(encoding="utf-8")
    tex = paths[2].read_text(encoding="utf-8")
    assert r"a\_b \& c & 0.12 & yes \\" in tex and r"\caption{50\% of $\kappa$}" in tex
    assert latex_escape("-0.1 ± 0.2") == r"-0.1 $\pm$ 0.2"


def test_figure_uses_its_own_agg_canvas() -> None:
    report = compute_ratings(study_votes(), RatingSettings(n_bootstrap=20))
    figure = expert_score_figure(report.expert_scores)
    assert isinstance(figure.canvas, FigureCanvasAgg)
    axes = figure.axes[0]
    assert len(axes.patches) == 2 * 4  # generators x (3 classes + all classes)
    labels = [label.get_text() for label in axes.get_xticklabels()]
    assert labels == ["ADI", "BACK", "TUM", "all classes"]


def test_bad_votes_leave_no_output(tmp_path: Path) -> None:
    votes = study_votes()
    votes.loc[5, "vote"] = "fake"
    with pytest.raises(VotesError, match="row 5: vote 'fake'"):
        evaluate_ratings(votes, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    report = compute_ratings(study_votes(), RatingSettings(n_bootstrap=10))
    with pytest.raises(HistosynthError, match="exists and is not a folder"):
        write_ratings(report, tmp_path / "file")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


def test_a_rerun_removes_the_optional_files_of_an_earlier_run(tmp_path: Path) -> None:
    out = tmp_path / "report"
    evaluate_ratings(study_votes(), out, RatingSettings(n_bootstrap=20))
    first = {path.name for path in out.iterdir()}
    assert {"roc_auc.csv", "imrmc.csv", "intra_rater.md", "timing.tex", "expert_scores.png"} <= first
    assert first <= set(OWNED_FILES)
    (out / "notes.txt").write_text("mine")  # not ours: kept
    plain = study_votes()[lambda votes: votes["repeat"] == 0].drop(
        columns=["confidence", "repeat", "seconds"]
    )
    written = write_ratings(compute_ratings(plain, RatingSettings(n_bootstrap=20)), out, figure=False)
    names = {path.name for path in out.iterdir()}
    assert names == {path.name for path in written} | {"notes.txt"}
    stale = ("roc_auc", "intra_rater", "timing", "imrmc", "expert_scores.p")
    assert not [name for name in names if name.startswith(stale)]
    assert {"expert_scores.csv", "fleiss_kappa.md", "ratings_settings.json"} <= names


def test_cli_votes_csv(tmp_path: Path, run_cli: Callable[..., int], capsys: pytest.CaptureFixture) -> None:
    study_votes().to_csv(tmp_path / "votes.csv", index=False)
    out = tmp_path / "out"
    code = run_cli(
        "evaluate",
        "ratings",
        "--votes",
        str(tmp_path / "votes.csv"),
        "--out",
        str(out),
        "--n-bootstrap",
        "50",
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "score_mean" in printed and "styleGAN2" in printed
    assert (out / "expert_scores.csv").is_file()
    assert json.loads((out / "ratings_settings.json").read_text())["n_bootstrap"] == 50


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--votes", "v.csv", "--db", "s.db"],
        ["--votes", "v.csv", "--study", "x"],
        ["--db", "s.db"],
        ["--study", "x"],
    ],
)
def test_cli_needs_votes_or_db_and_study(
    tmp_path: Path, run_cli: Callable[..., int], capsys: pytest.CaptureFixture, args: list[str]
) -> None:
    code = run_cli("evaluate", "ratings", *args, "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["error: give either --votes FILE or both --db FILE and --study NAME"]


def test_cli_bad_votes_file_is_one_line(
    tmp_path: Path, run_cli: Callable[..., int], capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "votes.csv"
    path.write_text("rater,item,class,source,vote\nA,1,ADI,real,real\nA,1,ADI,real,synthetic\n")
    code = run_cli("evaluate", "ratings", "--votes", str(path), "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == [f"error: {path} line 3: rater 'A' rated twice without repeat=1 item '1'"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        # No class holds both real and generated tiles: this crashed in the bootstrap.
        (["A,1,X,real,real", "A,2,Y,G,real"], "line 3: class 'Y' has generated tiles but no real tiles"),
        # Class Y has generated tiles only: this gave a silent NaN row.
        (
            ["A,1,X,real,real", "A,2,X,G,synthetic", "A,3,Y,G,real", "A,4,Y,G,real"],
            "line 4: class 'Y' has generated tiles but no real tiles",
        ),
    ],
)
def test_cli_class_without_real_tiles_is_one_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "votes.csv"
    path.write_text("rater,item,class,source,vote\n" + "\n".join(lines) + "\n")
    result = histosynth("evaluate", "ratings", "--votes", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {path} {message}"]
    assert not (tmp_path / "out").exists()


def test_cli_negative_ddof_is_one_line(
    tmp_path: Path, run_cli: Callable[..., int], capsys: pytest.CaptureFixture
) -> None:
    study_votes().to_csv(tmp_path / "votes.csv", index=False)
    args = ["--votes", str(tmp_path / "votes.csv"), "--out", str(tmp_path / "out"), "--ddof", "-1"]
    code = run_cli("evaluate", "ratings", *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["error: ddof (delta degrees of freedom) must be >= 0, got -1"]
    assert not (tmp_path / "out").exists()


def write_pool(root: Path, classes: tuple[str, ...], per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for klass in classes:
        (root / klass).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / klass / f"{klass}-{index}.png")


def test_database_and_exported_csv_give_the_same_tables(tmp_path: Path, run_cli: Callable[..., int]) -> None:
    export = pytest.importorskip("rater_app.export")
    create = pytest.importorskip("rater_app.create")
    raters = pytest.importorskip("rater_app.raters")
    auth = pytest.importorskip("rater_app.auth")
    voting = pytest.importorskip("rater_app.voting")
    for name, seed in (("real", 0), ("klf8", 1), ("gan", 2)):
        write_pool(tmp_path / "pools" / name, ("ADI", "TUM"), 3, seed)
    toml = tmp_path / "study.toml"
    toml.write_text(
        '[study]\nname = "eval"\nseed = 7\nimages_per_cell = 3\nconfidence = "6-point"\nrepeats = 2\n\n'
        '[sources]\nreal = "pools/real"\n"KLF8-DM" = "pools/klf8"\nstyleGAN2 = "pools/gan"\n'
    )
    db = str(tmp_path / "study.db")
    create.create_study(toml, db)
    rng = np.random.default_rng(3)
    for new in raters.add_raters(db, "eval", ["ann", "ben", "cat"]):
        rater_id = auth.identity_for(db, auth.login(db, "eval", new.name, new.secret)).rater_id
        total = voting.rater_settings(db, rater_id).total
        for position in range(1, total + 1):
            tile = voting.tile_at(db, rater_id, position)
            vote = "real" if rng.random() < 0.5 else "synthetic"
            shown = 1000.0 + 20 * position
            voting.record_vote(
                db,
                rater_id,
                position,
                tile.token,
                vote,
                int(rng.integers(1, 7)),
                shown,
                shown + rng.uniform(1, 9),
            )
    csv = tmp_path / "votes.csv"
    export.export_votes(db, "eval", csv)
    from_db = tmp_path / "from_db"
    from_csv = tmp_path / "from_csv"
    common = ["--bootstrap", "60", "--no-figure"]  # the old spelling of --n-bootstrap still works
    assert run_cli("evaluate", "ratings", "--db", db, "--study", "eval", "--out", str(from_db), *common) == 0
    assert run_cli("evaluate", "ratings", "--votes", str(csv), "--out", str(from_csv), *common) == 0
    written = sorted(path.name for path in from_db.iterdir())
    assert written == sorted(path.name for path in from_csv.iterdir())
    assert {"intra_rater.csv", "roc_auc.csv", "timing.csv"} <= set(written)
    for name in written:
        assert (from_db / name).read_bytes() == (from_csv / name).read_bytes(), name
    assert len(read_votes(csv)) == 3 * (2 * 3 * 3 + 2)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (RatingSettings(n_bootstrap=0), "bootstrap replicates must be >= 1"),
        (RatingSettings(ci_level=1.5), "confidence level must lie between 0 and 1"),
        (RatingSettings(alpha=2.0), "alpha must lie between 0 and 1"),
        (RatingSettings(correction="tukey"), "unknown multiple-testing correction 'tukey'"),
        (RatingSettings(ddof=-1), r"ddof \(delta degrees of freedom\) must be >= 0, got -1"),
    ],
)
def test_bad_settings_are_refused_before_writing(
    tmp_path: Path, settings: RatingSettings, message: str
) -> None:
    with pytest.raises(HistosynthError, match=message):
        evaluate_ratings(study_votes(), tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()
