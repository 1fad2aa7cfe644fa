"""FID and KID: the Frechet distance against sqrtm and closed forms, KID against clean-fid,
`compute_fid` end to end against an independent pipeline, the feature cache, the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from PIL import Image

from evaluator.pools.features import Extractor, load_extractor, state_dict_digest
from evaluator.pools.fid import (
    FID_COLUMNS,
    FidSettings,
    FrechetReference,
    compute_fid,
    evaluate_fid,
    frechet_distance,
    sqrtm_psd,
)
from evaluator.pools.kid import kernel_inception_distance
from histosynth.errors import HistosynthError, PoolError

from .conftest import brightness_pool

TINY_EXTRACTOR = '''
import torch


class Tiny(torch.nn.Module):
    """Seeded random conv + pooling: 32-d features, deterministic, no weights to download."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 7, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.05)
            self.conv.bias.zero_()

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x / 255.0)), 2).flatten(1)


def build():
    return Tiny()
'''


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("extractor")
    (folder / "fid_tiny_extractor.py").write_text(TINY_EXTRACTOR)
    sys.path.insert(0, str(folder))
    yield "fid_tiny_extractor:build"
    sys.path.remove(str(folder))
    sys.modules.pop("fid_tiny_extractor", None)


@pytest.fixture
def pools(tmp_path: Path) -> dict[str, Path]:
    return {
        "reference": brightness_pool(tmp_path / "reference", {"ADI": 200, "TUM": 110}, 14, seed=1),
        "shifted": brightness_pool(tmp_path / "shifted", {"ADI": 160, "TUM": 80}, 10, seed=2),
    }


def sqrtm_fid(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula with scipy's general matrix square root (the brute-force reference)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def eigvals_fid(mu1, sigma1, mu2, sigma2) -> float:
    """Tr sqrt(S1 S2) from the eigenvalues of the non-symmetric product: valid for singular covariances."""
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2).real
    diff = mu1 - mu2
    return float(
        diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    )


def gaussian_features(n: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim) + np.eye(dim)
    return rng.normal(size=(n, dim)) @ mixing + shift


def stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def test_frechet_distance_matches_scipy_sqrtm_on_well_conditioned_data() -> None:
    a, b = gaussian_features(600, 48, seed=0), gaussian_features(500, 48, seed=1, shift=0.3)
    expected = sqrtm_fid(*stats(a), *stats(b))
    assert frechet_distance(*stats(a), *stats(b)) == pytest.approx(expected, rel=1e-6)
    assert FrechetReference(b).distance(a) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_closed_forms() -> None:
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2; diagonal: the same per coordinate.
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == (
        pytest.approx(9.0 + 1.0)
    )
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = 3.0 + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    value = frechet_distance(np.zeros(3), np.diag(var1), np.ones(3), np.diag(var2))
    assert value == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_is_stable_when_n_is_below_d() -> None:
    generated, real = gaussian_features(20, 64, seed=2), gaussian_features(30, 64, seed=3, shift=0.5)
    (mu1, sigma1), (mu2, sigma2) = stats(generated), stats(real)
    expected = eigvals_fid(mu1, sigma1, mu2, sigma2)
    value = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert np.isfinite(value) and value == pytest.approx(expected, rel=1e-5)
    # The Gram-matrix path (n <= d) of FrechetReference gives the same number.
    assert FrechetReference(real).distance(generated) == pytest.approx(value, rel=1e-8)
    # One singular covariance against a positive definite one (the Cholesky path on the other side).
    full = gaussian_features(400, 64, seed=4, shift=0.2)
    expected = eigvals_fid(*stats(generated), *stats(full))
    assert frechet_distance(*stats(generated), *stats(full)) == pytest.approx(expected, rel=1e-6)
    assert FrechetReference(full).distance(generated) == pytest.approx(expected, rel=1e-6)


def test_sqrtm_psd_squares_back_and_rejects_bad_shapes() -> None:
    sigma = np.cov(gaussian_features(100, 16, seed=4), rowvar=False)
    root = sqrtm_psd(sigma)
    np.testing.assert_allclose(root @ root, sigma, atol=1e-10)
    with pytest.raises(HistosynthError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_bootstrap_std_equals_brute_force_resampling() -> None:
    real, generated = gaussian_features(300, 24, seed=5), gaussian_features(16, 24, seed=6, shift=0.3)
    rng = np.random.default_rng(3)
    draws = [generated[rng.integers(0, 16, 16)] for _ in range(8)]
    expected = np.std([eigvals_fid(*stats(draw), *stats(real)) for draw in draws], ddof=1)
    assert FrechetReference(real).bootstrap_std(generated, replicates=8, seed=3) == pytest.approx(
        expected, rel=1e-6
    )


def test_bootstrap_spread_shrinks_with_more_images() -> None:
    reference = FrechetReference(gaussian_features(800, 8, seed=5))
    small = reference.bootstrap_std(gaussian_features(30, 8, seed=6), replicates=30)
    large = reference.bootstrap_std(gaussian_features(600, 8, seed=6), replicates=30)
    assert 0 < large < small


def test_kid_equals_clean_fid_kernel_distance_on_whole_sets() -> None:
    from cleanfid.fid import kernel_distance

    a, b = gaussian_features(60, 16, seed=7), gaussian_features(60, 16, seed=8, shift=0.4)
    expected = kernel_distance(a, b, num_subsets=1, max_subset_size=60)  # subsets are permutations
    mean, std = kernel_inception_distance(a, b, num_subsets=3, max_subset_size=60)
    assert mean == pytest.approx(expected, rel=1e-9)
    assert std > 0  # a bootstrap spread, not the 0 of identical subsets
    subset_mean, subset_std = kernel_inception_distance(a, b, num_subsets=20, max_subset_size=20)
    assert subset_std > 0 and subset_mean == pytest.approx(expected, abs=5 * subset_std)


def test_resampled_mmd2_is_the_u_statistic_of_the_resample_without_self_pairs() -> None:
    from evaluator.pools.kid import resampled_mmd2

    a, b = gaussian_features(7, 4, seed=11), gaussian_features(6, 4, seed=12, shift=0.3)
    kernel = lambda x, y: (x @ y / 4 + 1) ** 3  # noqa: E731
    rng = np.random.default_rng(13)
    draws_a, draws_b = rng.integers(0, 7, (3, 7)), rng.integers(0, 6, (3, 6))
    counts_a = np.array([np.bincount(d, minlength=7) for d in draws_a], dtype=float)
    counts_b = np.array([np.bincount(d, minlength=6) for d in draws_b], dtype=float)
    got = resampled_mmd2(*(kernel(x, y.T) for x, y in ((a, a), (b, b), (a, b))), counts_a, counts_b)
    for replicate in range(3):
        da, db = draws_a[replicate], draws_b[replicate]

        def within(draws: np.ndarray, x: np.ndarray) -> float:
            pairs = [kernel(x[i], x[j]) for i in draws for j in draws if i != j]  # distinct images
            return float(np.mean(pairs))

        cross = np.mean([kernel(a[i], b[j]) for i in da for j in db])
        assert got[replicate] == pytest.approx(within(da, a) + within(db, b) - 2 * cross, rel=1e-10)


def test_kid_std_of_small_sets_estimates_its_sampling_spread() -> None:
    # Sets of 80 images: every subset is the whole set, so the std is a bootstrap; it must be of
    # the size of the KID's true sampling spread, simulated over 60 independent pairs of sets.
    truth = [
        kernel_inception_distance(
            gaussian_features(80, 8, seed=100 + i), gaussian_features(80, 8, seed=500 + i, shift=0.3)
        )[0]
        for i in range(60)
    ]
    _, std = kernel_inception_distance(
        gaussian_features(80, 8, seed=1), gaussian_features(80, 8, seed=2, shift=0.3), num_subsets=200
    )
    assert 0.6 < std / np.std(truth, ddof=1) < 1.6


def test_kid_kernel_gives_the_same_value_on_torch_tensors() -> None:
    from evaluator.pools.kid import _unbiased_mmd2  # the CUDA path runs the same code on tensors

    a, b = gaussian_features(40, 16, seed=9), gaussian_features(40, 16, seed=10, shift=0.2)
    expected = _unbiased_mmd2(a, b)
    assert _unbiased_mmd2(torch.as_tensor(a), torch.as_tensor(b)) == pytest.approx(expected, rel=1e-12)


def test_fid_of_a_folder_with_itself_is_zero(pools: dict[str, Path], tiny_spec: str, tmp_path: Path) -> None:
    table = evaluate_fid(
        pools["reference"],
        {"same": pools["reference"]},
        tmp_path / "out",
        FidSettings(extractor=tiny_spec, kid_subsets=5),
    ).table
    assert list(table.columns) == FID_COLUMNS
    assert list(table["class"]) == ["ADI", "TUM", "ALL"]
    assert table["fid"].abs().max() < 1e-6
    # MMD_u of a set against a permutation of itself is 2 (1'K1 / m - tr K) / (m (m - 1)) <= 0 (K is PSD).
    assert (table["kid_mean"] <= 1e-12).all()
    assert list(table["n_generated"]) == [14, 14, 28] and list(table["n_reference"]) == [14, 14, 28]


def test_compute_fid_matches_an_independent_clean_fid_pipeline(
    pools: dict[str, Path], tiny_spec: str, tmp_path: Path
) -> None:
    from cleanfid.utils import ResizeDataset

    out = tmp_path / "out"
    table = evaluate_fid(
        pools["reference"],
        {"shifted": pools["shifted"]},
        out,
        FidSettings(extractor=tiny_spec, n_bootstrap=5),
    ).table
    model = load_extractor(tiny_spec, device="cpu").model

    def features(folder: Path) -> np.ndarray:
        dataset = ResizeDataset(sorted(folder.iterdir()), mode="clean")  # clean-fid's own loader
        with torch.no_grad():
            return model(torch.stack([dataset[i] for i in range(len(dataset))])).numpy().astype(np.float64)

    for name in ("ADI", "TUM"):
        # 10 and 14 images of 32-d features: singular covariances, so not scipy's sqrtm.
        generated, real = features(pools["shifted"] / name), features(pools["reference"] / name)
        expected = eigvals_fid(*stats(generated), *stats(real))
        row = table[table["class"] == name].iloc[0]
        assert row["fid"] == pytest.approx(expected, rel=1e-5)
        assert row["fid"] > 10 * row["fid_boot_std"] > 0
    written = pd.read_csv(out / "fid.csv")
    assert list(written.columns) == FID_COLUMNS and len(written) == 3
    markdown = (out / "fid.md").read_text()
    assert "| shifted" in markdown and "10 / 14" in markdown and "20 / 28" in markdown
    assert r"$\pm$" in (out / "fid.tex").read_text()
    assert tiny_spec in (out / "fid.json").read_text()


class CountingModel:
    """Wraps an extractor model and counts the images it sees."""

    def __init__(self, model) -> None:
        self.model, self.images = model, 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.images += len(batch)
        return self.model(batch)


def test_second_run_reads_cached_features(
    pools: dict[str, Path], tiny_spec: str, isolated_cache: Path
) -> None:
    base = load_extractor(tiny_spec, device="cpu")
    counter = CountingModel(base.model)
    extractor = Extractor(spec="counting", identity=base.identity, model=counter, device=base.device)
    first = compute_fid(
        pools["reference"], {"shifted": pools["shifted"]}, FidSettings(extractor=extractor, kid_subsets=5)
    ).table
    assert counter.images == 14 * 2 + 10 * 2
    assert len(list((isolated_cache / "features").glob("*.npy"))) == 4
    second = compute_fid(
        pools["reference"], {"shifted": pools["shifted"]}, FidSettings(extractor=extractor, kid_subsets=5)
    ).table
    assert counter.images == 48  # nothing recomputed
    pd.testing.assert_frame_equal(first, second)
    # Rewriting one tile invalidates only its class folder.
    tile = pools["reference"] / "TUM" / "TUM-000.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tile)
    compute_fid(
        pools["reference"], {"shifted": pools["shifted"]}, FidSettings(extractor=extractor, kid_subsets=5)
    )
    assert counter.images == 48 + 14


def test_cache_key_follows_the_extractor_weights(pools: dict[str, Path], tiny_spec: str) -> None:
    first, again = load_extractor(tiny_spec, device="cpu"), load_extractor(tiny_spec, device="cpu")
    assert first.identity == again.identity
    with torch.no_grad():
        again.model.conv.bias.add_(1.0)
    from evaluator.pools.features import features_cache_path, state_dict_digest

    assert state_dict_digest(again.model) not in first.identity
    files = sorted((pools["reference"] / "ADI").iterdir())
    changed = Extractor(
        again.spec, f"{tiny_spec}:{state_dict_digest(again.model)}", again.model, again.device
    )
    assert features_cache_path(files, first, "clean") != features_cache_path(files, changed, "clean")


def test_bad_pools_fail_before_anything_is_written(
    pools: dict[str, Path], tiny_spec: str, tmp_path: Path
) -> None:
    extra = brightness_pool(tmp_path / "extra", {"ADI": 150, "MUC": 90}, 3, seed=3)
    out = tmp_path / "out"
    with pytest.raises(PoolError, match="MUC"):
        evaluate_fid(pools["reference"], {"extra": extra}, out, FidSettings(extractor=tiny_spec))
    with pytest.raises(PoolError, match="no folder for class BACK"):
        evaluate_fid(
            pools["reference"],
            {"s": pools["shifted"]},
            out,
            FidSettings(classes=["BACK"], extractor=tiny_spec),
        )
    lonely = brightness_pool(tmp_path / "lonely", {"ADI": 150}, 1, seed=4)
    with pytest.raises(PoolError, match="lonely/ADI: FID and KID need at least 2 images"):
        evaluate_fid(pools["reference"], {"lonely": lonely}, out, FidSettings(extractor=tiny_spec))
    with pytest.raises(HistosynthError, match="bootstrap"):
        evaluate_fid(
            pools["reference"], {"s": pools["shifted"]}, out, FidSettings(extractor=tiny_spec, n_bootstrap=1)
        )
    assert not out.exists()


def test_cli_writes_tables_and_reports_errors_in_one_line(
    pools: dict[str, Path], tiny_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from histosynth.cli import main

    out = tmp_path / "cli"
    arguments = [
        "evaluate",
        "fid",
        "--reference",
        str(pools["reference"]),
        "--pool",
        f"shifted={pools['shifted']}",
    ]
    options = [
        "--out",
        str(out),
        "--extractor",
        tiny_spec,
        "--kid-subsets",
        "5",
        "--workers",
        "2",
        "--progress",
    ]
    monkeypatch.setattr(sys, "argv", ["histosynth", *arguments, *options])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    assert {"fid.csv", "fid.md", "fid.tex", "fid.json"} <= {p.name for p in out.iterdir()}
    assert "shifted" in capsys.readouterr().out

    monkeypatch.setattr(
        sys, "argv", ["histosynth", *arguments, "--out", str(tmp_path / "bad"), "--device", "cpu"]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "inception-2015-12-05.pt" in error
    assert not (tmp_path / "bad").exists()


def test_tables_go_through_the_core_table_writer() -> None:
    """fid.md/.tex are rendered by histosynth.tables like every other table: captions, escaping."""
    from evaluator.pools.fid import render_fid_tables

    table = pd.DataFrame(
        {
            "class": ["ADI", "ALL"],
            "source": ["KLF8_DM", "KLF8_DM"],
            "fid": [12.34, 20.0],
            "fid_boot_std": [1.0, float("nan")],
            "kid_mean": [0.01, 0.02],
            "kid_std": [0.001, 0.002],
            "n_generated": [10, 20],
            "n_reference": [10, 20],
        }
    )
    files = render_fid_tables(table)
    assert "| source | ADI | ALL |\n|---|---|---|\n| KLF8_DM | 12.3 ± 1.0 | 20.0 |" in files["fid.md"]
    tex = files["fid.tex"]
    assert tex.count(r"\begin{table}") == 3 and r"\caption{FID per class ($\pm$" in tex
    assert r"KLF8\_DM & 12.3 $\pm$ 1.0 & 20.0 \\" in tex  # names escaped once, not twice


RESNET_EXTRACTOR = '''
import torch
import torchvision


class ResNetFeatures(torch.nn.Module):
    """torchvision's ResNet18 (random, seeded weights; BatchNorm buffers included) as a 512-d extractor."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torchvision.models.resnet18(weights=None)
        self.body.fc = torch.nn.Identity()

    def forward(self, x):  # (N, 3, H, W) floats in [0, 255] -> (N, 512)
        return self.body(x / 255.0)


def build():
    return ResNetFeatures()
'''


def test_a_torchvision_resnet_is_an_extractor_from_the_cli(
    pools: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network with BatchNorm (a 0-dim `num_batches_tracked` buffer) keys the cache and runs."""
    from histosynth.cli import main

    (tmp_path / "resnet_extractor.py").write_text(RESNET_EXTRACTOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "resnet_extractor", raising=False)
    first = load_extractor("resnet_extractor:build", device="cpu")
    again = load_extractor("resnet_extractor:build", device="cpu")
    assert first.identity == again.identity  # the digest is a function of the weights
    with torch.no_grad():
        first.model.body.layer1[0].bn1.num_batches_tracked.add_(1)
    assert state_dict_digest(first.model) != again.identity.rsplit(":", 1)[1]
    out = tmp_path / "resnet"
    command = [
        "evaluate",
        "fid",
        "--reference",
        str(pools["reference"]),
        "--pool",
        f"shifted={pools['shifted']}",
    ]
    options = ["--out", str(out), "--extractor", "resnet_extractor:build", "--kid-subsets", "3"]
    monkeypatch.setattr(sys, "argv", ["histosynth", *command, *options, "--n-bootstrap", "2"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    table = pd.read_csv(out / "fid.csv")
    assert set(table["class"]) >= {"ADI", "TUM"} and (table["fid"] > 0).all()
