"""Memorization audit: planted copies are found and flagged, numbers match brute force.

Tiles are small (32x32) smooth random textures, so that chance correlations are moderate
(about 0.3 to 0.5, like tissue) and a whole audit runs in about a second.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from scipy.ndimage import gaussian_filter
from statsmodels.stats.multitest import multipletests

import evaluator.memorization.audit as memorization
from evaluator.memorization.audit import MemorizationSettings, audit_memorization
from evaluator.memorization.cache import GrayMatrix, row_stats
from evaluator.memorization.report import aligned_pair, closest_pairs, evaluate_memorization, write_report
from evaluator.memorization.search import (
    TRANSFORMS,
    _expand,
    apply_transform,
    invert_transform,
    nearest_tiles,
    standardize,
)
from evaluator.memorization.stats import (
    baseline_threshold,
    exceedance_pmfs,
    upper_tail,
    verdict_table,
)
from histosynth.errors import HistosynthError, ImageError, PoolError

SIDE = 32


def texture(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """A smooth random RGB tile spanning the full 0..255 range."""
    noise = gaussian_filter(rng.normal(size=(side, side, 3)), (1.5, 1.5, 0))
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return (noise * 255).astype(np.uint8)


def save(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path)
    return path


def fill(root: Path, name: str, count: int, rng: np.random.Generator) -> list[Path]:
    return [save(texture(rng), root / name / f"{name}{i:03d}.png") for i in range(count)]


def jpeg_roundtrip(image: np.ndarray, quality: int = 85) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


# (file name, training tile index, how the copy is made from the training tile, expected transform)
PLANTED = [
    ("copy_exact", 3, lambda t, rng: t, "rot0"),
    ("copy_rot90", 7, lambda t, rng: np.rot90(t, 1), "rot270"),
    ("copy_rot180", 11, lambda t, rng: np.rot90(t, 2), "rot180"),
    ("copy_rot270", 15, lambda t, rng: np.rot90(t, 3), "rot90"),
    ("copy_fliplr", 19, lambda t, rng: t[:, ::-1], "fliplr"),
    ("copy_flipud", 23, lambda t, rng: t[::-1], "fliplr+rot180"),
    ("copy_transpose", 27, lambda t, rng: np.transpose(t, (1, 0, 2)), "fliplr+rot90"),
    (
        "copy_noised",
        31,
        lambda t, rng: np.clip(t + rng.normal(0, 8, t.shape), 0, 255).astype(np.uint8),
        "rot0",
    ),
    ("copy_jpeg", 35, lambda t, rng: jpeg_roundtrip(t), "rot0"),
    ("copy_jpeg_rot90", 39, lambda t, rng: jpeg_roundtrip(np.rot90(t, 1)), "rot270"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Training (A, B: 60 each), a baseline (A, B: 80 each), a pool with 10 planted copies
    of class-A training tiles among 60 fresh tiles, and a pool of fresh tiles only."""
    root = tmp_path_factory.mktemp("memorization")
    rng = np.random.default_rng(2024)
    train = {name: fill(root / "train", name, 60, rng) for name in ("A", "B")}
    for name in ("A", "B"):
        fill(root / "base", name, 80, rng)
        fill(root / "fresh", name, 60, rng)
    fill(root / "gen", "A", 60, rng)
    fill(root / "gen", "B", 60, rng)
    planted = {}
    for file_name, index, make, transform in PLANTED:
        source = np.asarray(Image.open(train["A"][index]).convert("RGB"))
        path = save(make(source, rng), root / "gen" / "A" / f"{file_name}.png")
        planted[str(path)] = (str(train["A"][index]), transform)
    result = audit_memorization(
        root / "train",
        {"gen": root / "gen", "fresh": root / "fresh"},
        root / "base",
        MemorizationSettings(baseline_name="CRC-VAL", size=None, flips=True, cache_dir=root / "cache"),
    )
    return {"root": root, "planted": planted, "result": result, "train": train}


def test_planted_copies_are_found_with_their_training_tile_and_transform(world: dict) -> None:
    tiles = world["result"].tiles.set_index("tile")
    for path, (train_tile, transform) in world["planted"].items():
        row = tiles.loc[path]
        assert row["train_tile"] == train_tile, path
        assert row["transform"] == transform, path
        assert row["r"] > 0.95, path
        assert row["flagged"], path
    exact = [p for p in world["planted"] if "jpeg" not in p and "noised" not in p]
    assert np.allclose(tiles.loc[exact, "r"], 1.0, atol=1e-5)
    for path in exact:  # the reported transform maps the tile onto its training tile, as documented
        train_tile, transform = world["planted"][path]
        turned = apply_transform(np.asarray(Image.open(path)), TRANSFORMS.index(transform))
        assert np.array_equal(turned, np.asarray(Image.open(train_tile))), path


def test_fresh_tiles_are_not_flagged_and_verdicts_separate_the_pools(world: dict) -> None:
    result = world["result"]
    tiles = result.tiles
    fresh = tiles[(tiles["source"] != "CRC-VAL") & ~tiles["tile"].isin(world["planted"])]
    assert len(fresh) == 60 * 4
    # Fresh tiles are never near copies; a few exceed the baseline's maximum by chance,
    # as often as held-out tiles would (60 / 81 per class and pool), which the tests absorb.
    assert fresh["r"].max() < 0.8
    assert fresh["flagged"].sum() <= 6
    verdict = result.verdict.set_index(["class", "source"])
    planted_above = tiles[tiles["tile"].isin(world["planted"]) & tiles["flagged"]]
    assert len(planted_above) == len(PLANTED)
    assert verdict.loc[("A", "gen"), "verdict"] == "copies suspected"
    assert verdict.loc[("A", "gen"), "exact_p"] < 1e-3
    assert verdict.loc[("A", "gen"), "exact_p_adjusted"] < 4e-3  # Holm over 4 cells: at most 4 x
    assert verdict.loc[("ALL", "gen"), "verdict"] == "copies suspected"
    for key in [("A", "fresh"), ("B", "fresh"), ("ALL", "fresh"), ("B", "gen")]:
        assert verdict.loc[key, "verdict"] == "no evidence of memorization", key


def test_a_few_copies_the_papers_mean_rule_misses_are_caught(tmp_path: Path) -> None:
    """3 copies among 150 tiles: the means stay within one std (the paper's rule passes),
    but with a large baseline the count above its maximum is significant."""
    rng = np.random.default_rng(11)
    train = fill(tmp_path / "train", "A", 40, rng)
    fill(tmp_path / "base", "A", 400, rng)
    fill(tmp_path / "gen", "A", 150, rng)
    copies = set()
    for index in (5, 17, 29):
        image = np.rot90(np.asarray(Image.open(train[index]).convert("RGB")), index % 4)
        copies.add(str(save(image, tmp_path / "gen" / "A" / f"copy{index}.png")))
    result = audit_memorization(
        tmp_path / "train",
        {"gen": tmp_path / "gen"},
        tmp_path / "base",
        MemorizationSettings(n=200, baseline_n=400, size=None, cache_dir=tmp_path / "cache"),
    )
    summary = result.summary.set_index("source")
    assert abs(summary.loc["gen", "mean"] - summary.loc["base", "mean"]) < summary.loc["base", "std"]
    tiles = result.tiles
    assert set(tiles.loc[tiles["flagged"], "tile"]) == copies
    row = result.verdict.set_index("class").loc["A"]
    assert (row["n_above"], row["n"], row["verdict"]) == (3, 153, "copies suspected")
    assert row["mwu_p"] > 0.05  # the bulk of the distribution does not move


def test_best_r_equals_brute_force_corrcoef_on_grayscale_files(world: dict) -> None:
    """Independent reference: PIL's "L" conversion and np.corrcoef over the 8 transforms."""
    tiles = world["result"].tiles
    train = np.stack(
        [np.asarray(Image.open(p).convert("L"), dtype=float).ravel() for p in world["train"]["A"]]
    )
    sample = tiles[(tiles["class"] == "A")].iloc[::9]
    for row in sample.itertuples():
        gray = np.asarray(Image.open(row.tile).convert("L"), dtype=float)
        variants = [np.rot90(g, k) for g in (gray, gray[:, ::-1]) for k in range(4)]
        best = max(np.corrcoef(np.vstack([v.ravel(), train]))[0, 1:].max() for v in variants)
        assert row.r == pytest.approx(best, abs=2e-5), row.tile


def test_summary_matches_numpy_on_the_tiles(world: dict) -> None:
    result = world["result"]
    for row in result.summary.itertuples(index=False):
        values = result.tiles.loc[
            (result.tiles["class"] == row[0]) & (result.tiles["source"] == row[1]), "r"
        ].to_numpy()
        expected = [values.mean(), values.std(ddof=1), np.median(values)]
        expected += [np.percentile(values, 5), np.percentile(values, 95), len(values)]
        assert [row.mean, row.std, row.median, row.p5, row.p95, row.n] == pytest.approx(expected)
    assert list(result.summary["source"].unique()) == ["gen", "fresh", "CRC-VAL"]


def test_search_equals_corrcoef_with_blocks_chunks_ties_and_flat_tiles() -> None:
    rng = np.random.default_rng(5)
    side = 12
    first = (rng.random((37, side * side)) * 255).astype(np.uint8)
    second = (rng.random((20, side * side)) * 255).astype(np.uint8)
    second[4] = 128  # a flat training tile: no correlation defined
    queries = (rng.random((9, side * side)) * 255).astype(np.uint8)
    queries[0] = np.rot90(second[7].reshape(side, side), 3).ravel()
    queries[1] = 77  # a flat query
    references = [
        GrayMatrix("X", [], first, *row_stats(first)),
        GrayMatrix("Y", [], second, *row_stats(second)),
    ]
    # 0.01 MiB: one query tile per chunk, 16-row training blocks
    matches = nearest_tiles(queries, references, flips=True, memory_mb=0.01)
    training = np.vstack([first, second]).astype(float)
    for i, query in enumerate(queries.astype(float)):
        image = query.reshape(side, side)
        variants = [np.rot90(g, k).ravel() for g in (image, np.fliplr(image)) for k in range(4)]
        with np.errstate(invalid="ignore", divide="ignore"):
            table = np.array([np.corrcoef(np.vstack([v, training]))[0, 1:] for v in variants])
        table = np.nan_to_num(table)  # flat tiles: corrcoef gives NaN, the audit reads 0
        assert matches.r[i] == pytest.approx(table.max(), abs=1e-5)
        if i == 1:
            assert matches.r[i] == 0.0
            continue
        transform, column = np.unravel_index(table.argmax(), table.shape)
        assert (matches.transform[i], matches.matrix[i]) == (transform, int(column >= len(first)))
        assert matches.row[i] == column - len(first) * matches.matrix[i]
    assert (matches.matrix[0], matches.row[0], TRANSFORMS[matches.transform[0]]) == (1, 7, "rot90")


def test_only_rotations_without_flips() -> None:
    rng = np.random.default_rng(6)
    train = (rng.random((10, 64)) * 255).astype(np.uint8)
    mirrored = train[2].reshape(8, 8)[:, ::-1].ravel()[None]
    reference = [GrayMatrix("X", [], train, *row_stats(train))]
    assert nearest_tiles(mirrored, reference, flips=False).r[0] < 0.9
    found = nearest_tiles(mirrored, reference, flips=True)
    assert (found.r[0], found.row[0], TRANSFORMS[found.transform[0]]) == (pytest.approx(1.0), 2, "fliplr")


def test_exact_exceedance_distribution_matches_enumeration() -> None:
    """Exchangeable values: every placement of the n new ranks among n + m is equally likely."""
    n, m = 3, 5
    for j in (1, 2, 3):
        counts = np.zeros(n + 1)
        for new in itertools.combinations(range(n + m), n):
            baseline = sorted(set(range(n + m)) - set(new))
            threshold = baseline[-j]
            counts[sum(rank > threshold for rank in new)] += 1
        binomial, exact = exceedance_pmfs(n, j, m)
        assert exact == pytest.approx(counts / counts.sum())
        assert upper_tail(binomial, 2) == pytest.approx(stats.binomtest(2, n, j / (m + 1), "greater").pvalue)


def test_baseline_threshold_rules() -> None:
    values = np.arange(1.0, 11.0)
    assert baseline_threshold(values, "max") == (10.0, 1)
    assert baseline_threshold(values, "p50") == (6.0, 5)
    assert baseline_threshold(values, "p99.9") == (10.0, 1)
    for bad in ("p100", "median", "p-1", "99"):
        with pytest.raises(HistosynthError, match="threshold"):
            baseline_threshold(values, bad)


def test_verdict_all_row_sums_counts_and_convolves_nulls() -> None:
    rng = np.random.default_rng(7)
    rows = []
    for name in ("A", "B"):
        rows += [("base", name, r) for r in rng.uniform(0.2, 0.5, 30)]
        rows += [("gen", name, r) for r in rng.uniform(0.2, 0.5, 20)]
    rows += [("gen", "A", 0.99), ("gen", "B", 0.98)]
    tiles = pd.DataFrame(rows, columns=["source", "class", "r"])
    verdict, flagged = verdict_table(tiles, ["A", "B"], ["gen"], "base")
    table = verdict.set_index("class")
    assert (
        table.loc["ALL", "n_above"] == table.loc["A", "n_above"] + table.loc["B", "n_above"] == flagged.sum()
    )
    per_class = [exceedance_pmfs(21, 1, 30)[1]] * 2
    joint = sum(
        per_class[0][a] * per_class[1][b]
        for a in range(22)
        for b in range(22)
        if a + b >= table.loc["ALL", "n_above"]
    )
    assert table.loc["ALL", "exact_p"] == pytest.approx(joint)
    reference = stats.mannwhitneyu(
        tiles.loc[(tiles.source == "gen") & (tiles["class"] == "A"), "r"],
        tiles.loc[(tiles.source == "base") & (tiles["class"] == "A"), "r"],
        alternative="greater",
    )
    assert table.loc["A", "mwu_p"] == pytest.approx(reference.pvalue)


def test_verdict_corrects_for_many_cells_and_still_flags_copies() -> None:
    """18 class x source cells as at the paper's scale, all exchangeable with the baseline but
    one with 8 copies: chance puts some fresh cell's exact_p below alpha, which alone no
    longer flags it; the copies still do. Adjusted p-values equal statsmodels' Holm."""
    rng = np.random.default_rng(3)
    classes = [f"C{i}" for i in range(9)]
    rows = []
    for name in classes:
        rows += [("base", name, r) for r in rng.uniform(0.2, 0.5, 99)]
        for source in ("g1", "g2"):
            rows += [(source, name, r) for r in rng.uniform(0.2, 0.5, 40)]
    rows += [("g2", "C1", 0.99)] * 8
    tiles = pd.DataFrame(rows, columns=["source", "class", "r"])
    verdict, _ = verdict_table(tiles, classes, ["g1", "g2"], "base", alpha=0.05)
    table = verdict.set_index(["class", "source"])
    fresh = verdict[(verdict["class"] != "ALL") & ~((verdict["class"] == "C1") & (verdict["source"] == "g2"))]
    assert (fresh["exact_p"] < 0.05).any()  # what an uncorrected verdict called "copies suspected"
    assert (fresh["verdict"] == "no evidence of memorization").all()
    assert table.loc[("C1", "g2"), "verdict"] == "copies suspected"
    assert table.loc[("ALL", "g2"), "verdict"] == "copies suspected"
    assert table.loc[("ALL", "g1"), "verdict"] == "no evidence of memorization"
    for overall in (False, True):
        family = verdict[(verdict["class"] == "ALL") == overall]
        assert len(family) == (2 if overall else 18)
        for column in ("exact_p", "mwu_p"):
            expected = multipletests(family[column], method="holm")[1]
            assert family[f"{column}_adjusted"].to_numpy() == pytest.approx(expected)
        assert set(family["correction"]) == {
            "holm over 2 ALL rows" if overall else "holm over 18 class x source cells"
        }


def test_progress_bars_end_at_their_totals(
    world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks: dict[str, list[int]] = {}

    @contextmanager
    def recording(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
        def task(description: str, total: int) -> Callable[[int], None]:
            tasks[description] = [total, 0]

            def advance(amount: int) -> None:
                tasks[description][1] += amount

            return advance

        yield task

    monkeypatch.setattr(memorization, "_progress_bars", recording)
    root = world["root"]
    # 0.05 MiB: 2 query tiles per chunk, so 10 tiles pass over the 60 training tiles 5 times
    audit_memorization(
        root / "train",
        {"gen": root / "gen"},
        None,
        MemorizationSettings(n=10, classes=["A"], size=None, memory_mb=0.05, cache_dir=tmp_path),
    )
    assert tasks == {"training tiles A": [60, 60], "searching A": [5 * 60, 5 * 60]}


def test_expand_and_invert_transform_agree_with_apply_transform() -> None:
    """`apply_transform` (one image, spelled out) is the reference for the stacked `_expand`."""
    rng = np.random.default_rng(12)
    tiles = rng.integers(0, 256, (3, 6, 6), dtype=np.uint8)
    rows = standardize(tiles.reshape(3, -1))
    expanded = _expand(rows, (6, 6), 8)
    for i, k in itertools.product(range(3), range(8)):
        assert np.array_equal(expanded[i * 8 + k, :-1], apply_transform(rows[i].reshape(6, 6), k).ravel())
        assert expanded[i * 8 + k, -1] == pytest.approx(-rows[i].sum(dtype=np.float64), abs=1e-6)
    assert np.array_equal(_expand(rows, (6, 6), 4), expanded.reshape(3, 8, -1)[:, :4].reshape(12, -1))
    assert len({apply_transform(tiles[0], k).tobytes() for k in range(8)}) == 8  # all 8 distinct
    rgb = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    for k in range(8):
        assert np.array_equal(invert_transform(apply_transform(rgb, k), k), rgb), TRANSFORMS[k]


def test_across_classes_finds_a_copy_filed_under_another_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    train = {name: fill(tmp_path / "train", name, 20, rng) for name in ("A", "B")}
    fill(tmp_path / "gen", "A", 10, rng)
    fill(tmp_path / "gen", "B", 10, rng)
    copy = save(np.asarray(Image.open(train["B"][4]).convert("RGB")), tmp_path / "gen" / "A" / "copy.png")
    own = audit_memorization(
        tmp_path / "train",
        {"g": tmp_path / "gen"},
        None,
        MemorizationSettings(size=None, cache_dir=tmp_path / "c"),
    )
    across = audit_memorization(
        tmp_path / "train",
        {"g": tmp_path / "gen"},
        None,
        MemorizationSettings(size=None, across_classes=True, cache_dir=tmp_path / "c"),
    )
    assert own.tiles.set_index("tile").loc[str(copy), "r"] < 0.9
    row = across.tiles.set_index("tile").loc[str(copy)]
    assert (row["train_class"], row["train_tile"], row["r"]) == ("B", str(train["B"][4]), pytest.approx(1.0))
    assert own.verdict is None and not own.tiles["flagged"].any()


def test_sampling_is_seeded_and_resizing_keeps_copies(world: dict, tmp_path: Path) -> None:
    root = world["root"]
    options = {"n": 7, "size": 48, "cache_dir": tmp_path, "classes": ["A"]}
    first = audit_memorization(root / "train", {"gen": root / "gen"}, None, MemorizationSettings(**options))
    again = audit_memorization(root / "train", {"gen": root / "gen"}, None, MemorizationSettings(**options))
    other = audit_memorization(
        root / "train", {"gen": root / "gen"}, None, MemorizationSettings(seed=1, **options)
    )
    assert len(first.tiles) == 7 and set(first.tiles["class"]) == {"A"}
    assert list(first.tiles["tile"]) == list(again.tiles["tile"]) != list(other.tiles["tile"])
    exact = str(root / "gen" / "A" / "copy_rot90.png")
    resized = audit_memorization(
        root / "train",
        {"gen": root / "gen"},
        None,
        MemorizationSettings(size=48, cache_dir=tmp_path, flips=False),
    )
    row = resized.tiles.set_index("tile").loc[exact]
    # bilinear upscaling does not commute exactly with rotation: close to, not exactly, 1
    assert (row["r"], row["transform"]) == (pytest.approx(1.0, abs=1e-3), "rot270")


def test_report_files_and_gallery_alignment(world: dict, tmp_path: Path) -> None:
    root = world["root"]
    out = tmp_path / "report"
    result = evaluate_memorization(
        root / "train",
        {"gen": root / "gen"},
        out,
        root / "base",
        MemorizationSettings(size=None, flips=True, cache_dir=root / "cache"),
        top_k=4,
    )
    assert {path.name for path in out.iterdir()} == {
        "memorization.csv",
        "memorization_tiles.csv",
        "memorization_verdict.csv",
        "memorization.md",
        "memorization.tex",
        "memorization.png",
        "memorization.pdf",
        "memorization_gallery.png",
        "memorization_gallery.html",
    }  # and no staging folder left beside them
    assert not list(tmp_path.glob(".report-staging-*"))
    table = pd.read_csv(out / "memorization.csv")
    assert list(table.columns) == ["class", "source", "mean", "std", "median", "p5", "p95", "n"]
    markdown = (out / "memorization.md").read_text()
    assert "copies suspected" in markdown and "Holm-adjusted over the class x source tests (2)" in markdown
    verdict = pd.read_csv(out / "memorization_verdict.csv")
    assert {"exact_p_adjusted", "mwu_p_adjusted", "correction"} <= set(verdict.columns)
    assert "\\begin{tabular}" in (out / "memorization.tex").read_text()
    assert Image.open(out / "memorization.png").size[0] > 400
    assert (out / "memorization.pdf").read_bytes().startswith(b"%PDF")
    page = (out / "memorization_gallery.html").read_text()
    assert page.count("data:image/png;base64,") == 2 * 8
    top = closest_pairs(result, 4)["gen"]
    assert set(top["tile"]) <= set(world["planted"])
    for _, row in top[top["tile"].str.contains("copy_(?:rot|flip|trans)")].iterrows():
        generated, aligned = aligned_pair(row, None)
        assert np.array_equal(generated, aligned), row["tile"]
    # a later run without a baseline must not leave the earlier verdict beside its tables
    again = write_report(dataclasses.replace(result, verdict=None, baseline=None), out, top_k=1)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in again)
    assert "memorization_verdict.csv" not in {p.name for p in again}


def test_bad_inputs_give_clear_errors(world: dict, tmp_path: Path) -> None:
    root = world["root"]
    rng = np.random.default_rng(9)
    with pytest.raises(HistosynthError, match="class folders differ.*lacks B"):
        fill(tmp_path / "base_a", "A", 3, rng)
        audit_memorization(
            root / "train",
            {"gen": root / "gen"},
            tmp_path / "base_a",
            MemorizationSettings(cache_dir=tmp_path),
        )
    with pytest.raises(HistosynthError, match="extra C"):
        for name in "ABC":
            fill(tmp_path / "base_abc", name, 2, rng)
        audit_memorization(
            root / "train",
            {"gen": root / "gen"},
            tmp_path / "base_abc",
            MemorizationSettings(cache_dir=tmp_path),
        )
    (tmp_path / "empty" / "A").mkdir(parents=True)
    with pytest.raises(PoolError, match="holds no images"):
        audit_memorization(
            root / "train", {"e": tmp_path / "empty"}, None, MemorizationSettings(cache_dir=tmp_path)
        )
    (tmp_path / "nothing").mkdir()
    with pytest.raises(HistosynthError, match="no class folders"):
        audit_memorization(
            root / "train", {"e": tmp_path / "nothing"}, None, MemorizationSettings(cache_dir=tmp_path)
        )
    fill(tmp_path / "only_c", "C", 2, rng)
    with pytest.raises(PoolError, match="no folder for class C"):
        audit_memorization(
            root / "train", {"c": tmp_path / "only_c"}, None, MemorizationSettings(cache_dir=tmp_path)
        )
    mixed = fill(tmp_path / "mixed", "A", 2, rng)
    odd = save(texture(rng, 40), tmp_path / "mixed" / "A" / "odd.png")
    with pytest.raises(HistosynthError, match=f"{odd}.*40x40 px but .*32x32 px"):
        audit_memorization(
            root / "train",
            {"m": tmp_path / "mixed"},
            None,
            MemorizationSettings(size=None, classes=["A"], cache_dir=tmp_path),
        )
    odd.unlink()
    for path in mixed:
        save(texture(rng, 40), path)
    with pytest.raises(HistosynthError, match="40x40 px but the training tiles are 32x32"):
        audit_memorization(
            root / "train",
            {"m": tmp_path / "mixed"},
            None,
            MemorizationSettings(size=None, classes=["A"], cache_dir=tmp_path),
        )
    save(np.zeros((32, 20, 3), np.uint8), tmp_path / "wide" / "A" / "w.png")
    with pytest.raises(ImageError, match="square"):
        audit_memorization(
            root / "train",
            {"w": tmp_path / "wide"},
            None,
            MemorizationSettings(size=None, classes=["A"], cache_dir=tmp_path),
        )
    with pytest.raises(HistosynthError, match="also a pool name"):
        audit_memorization(
            root / "train", {"base": root / "gen"}, root / "base", MemorizationSettings(cache_dir=tmp_path)
        )
    with pytest.raises(HistosynthError, match="n must be at least 1, got 0"):
        audit_memorization(
            root / "train", {"gen": root / "gen"}, None, MemorizationSettings(n=0, cache_dir=tmp_path)
        )
    with pytest.raises(HistosynthError, match="size must be at least 1"):
        audit_memorization(
            root / "train", {"gen": root / "gen"}, None, MemorizationSettings(size=0, cache_dir=tmp_path)
        )
    with pytest.raises(HistosynthError, match="no generated pool"):
        audit_memorization(root / "train", {}, None, MemorizationSettings(cache_dir=tmp_path))


def test_cli_writes_the_report_and_fails_in_one_line(
    world: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    run_cli: Callable[..., int],
) -> None:
    root = world["root"]
    monkeypatch.setenv("HISTOSYNTH_CACHE_DIR", str(tmp_path / "cache"))
    base = ["evaluate", "memorization", "--train", str(root / "train"), "--native-size", "--flips"]
    out = tmp_path / "out"
    code = run_cli(
        *base, "--pool", f"gen={root / 'gen'}", "--baseline", str(root / "base"), "--out", str(out)
    )
    assert code == 0
    assert "copies suspected" in capsys.readouterr().out
    assert (out / "memorization_gallery.png").is_file()
    assert list((tmp_path / "cache" / "memorization").glob("*.json"))
    # `--size 0` is the one spelling of the native size; `--native-size` stays as its old alias.
    sized = tmp_path / "sized"
    arguments = ["--pool", f"gen={root / 'gen'}", "--baseline", str(root / "base"), "--out", str(sized)]
    code = run_cli(*base[:4], "--size", "0", "--flips", "--no-progress", *arguments)
    assert code == 0
    assert (sized / "memorization_tiles.csv").read_bytes() == (out / "memorization_tiles.csv").read_bytes()
    bad_out = tmp_path / "bad"
    code = run_cli(*base, "--pool", f"gen={root / 'gen'}", "--threshold", "p100", "--out", str(bad_out))
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and error[-1].startswith("error: threshold 'p100'")
    assert not bad_out.exists()


def test_a_failing_report_leaves_nothing_behind(
    world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import evaluator.memorization.report as report

    def gone(path: object, size: object = None) -> None:
        raise ImageError(f"{path}: no such image file")

    monkeypatch.setattr(report, "load_rgb", gone)
    with pytest.raises(ImageError, match="no such image file"):
        report.write_report(world["result"], tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("mine")
    with pytest.raises(ImageError):
        report.write_report(world["result"], tmp_path / "old")
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["keep.txt"]
