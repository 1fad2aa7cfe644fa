"""The latent diffusion model: the CompVis schedule and DDIM against hand-written references, the
scaling factor against an independent encoding, tiny KL and VQ runs, resume, wrong folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file

from histosynth.errors import HistosynthError
from histosynth.images import load_rgb
from trainer.autoencoder.options import autoencoder_options
from trainer.autoencoder.train import AutoencoderSettings, train_autoencoder
from trainer.core.data import to_model_input
from trainer.core.model_folder import read_model_info
from trainer.diffusion.denoising import training_scheduler
from trainer.diffusion.ldm import (
    ClassEmbedder,
    LDMSettings,
    ddim_scheduler,
    load_ldm,
    sample_latents,
    train_ldm,
)
from trainer.diffusion.options import ldm_options

COMPVIS = {"num_train_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0195}


def compvis_alphas_cumprod() -> np.ndarray:
    """CompVis `make_beta_schedule("linear")`: linspace in sqrt space, squared, in float64."""
    betas = np.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def test_training_betas_are_the_compvis_formula() -> None:
    scheduler = training_scheduler(**COMPVIS)
    expected = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(scheduler.betas.double(), expected, rtol=1e-6, atol=0)
    assert np.allclose(scheduler.alphas_cumprod.double().numpy(), compvis_alphas_cumprod(), rtol=1e-5)


def hand_ddim(x: np.ndarray, eps_of, steps: int, eta: float, noises: list[np.ndarray]) -> list[np.ndarray]:
    """CompVis `DDIMSampler` written out: uniform timesteps range(0, 1000, 1000 // S) + 1, alpha_prev of
    the last step = alpha_bar[0], sigma = eta sqrt((1 - a') / (1 - a) (1 - a / a'))."""
    alphas = compvis_alphas_cumprod()
    timesteps = np.arange(0, 1000, 1000 // steps) + 1
    previous = np.concatenate([[alphas[0]], alphas[timesteps[:-1]]])
    states = []
    for position in reversed(range(steps)):
        a, a_prev = alphas[timesteps[position]], previous[position]
        eps = eps_of(x)
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps + sigma * noises[len(states)]
        states.append(x)
    return states


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_steps_match_a_hand_written_compvis_update(eta: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 4, 4))
    noises = [rng.standard_normal(x.shape) for _ in range(200)]

    def eps_of(sample):  # a fixed "model": any function of x will do
        return 0.3 * sample + 0.1

    expected = hand_ddim(x, eps_of, 200, eta, noises)
    scheduler = ddim_scheduler(COMPVIS)
    scheduler.set_timesteps(200)
    assert scheduler.timesteps[:3].tolist() == [996, 991, 986] and scheduler.timesteps[-1] == 1
    sample = torch.tensor(x, dtype=torch.float32)
    for position, timestep in enumerate(scheduler.timesteps):
        noise = torch.tensor(noises[position], dtype=torch.float32)
        sample = scheduler.step(eps_of(sample), timestep, sample, eta=eta, variance_noise=noise).prev_sample
        if position < 3 or position == 199:
            assert np.allclose(sample.numpy(), expected[position], atol=1e-5), position


def test_sampler_with_guidance_equals_a_hand_written_loop(tiny_models) -> None:
    """`sample_latents` against the same model driven by hand: per-image CPU noise, CFG, eta."""
    model = load_ldm(tiny_models.ldm, torch.device("cpu"))
    steps, eta, guidance, labels = 4, 0.5, 2.0, [1, 0]
    generators = [torch.Generator().manual_seed(seed) for seed in (11, 12)]
    got = sample_latents(model, labels, generators, steps=steps, eta=eta, guidance=guidance)

    replay = [torch.Generator().manual_seed(seed) for seed in (11, 12)]
    shape = model.latent_shape
    x = torch.stack([torch.randn(shape, generator=g) for g in replay]).double().numpy()
    noises = [
        torch.stack([torch.randn(shape, generator=g) for g in replay]).double().numpy() for _ in range(steps)
    ]
    null = torch.full((2,), model.embedder.null_class)
    timesteps = iter(np.arange(0, 1000, 1000 // steps)[::-1] + 1)

    def eps_of(sample):
        t = int(next(timesteps))
        batch = torch.tensor(sample, dtype=torch.float32)
        with torch.no_grad():
            cond = model.unet(batch, t, encoder_hidden_states=model.embedder(torch.tensor(labels))).sample
            uncond = model.unet(batch, t, encoder_hidden_states=model.embedder(null)).sample
        return (uncond + guidance * (cond - uncond)).double().numpy()

    expected = hand_ddim(x, eps_of, steps, eta, noises)[-1] / model.scaling_factor
    assert np.allclose(got.numpy(), expected, atol=1e-4)


def test_tiny_ldm_folder_and_scaling_factor(tiny_models) -> None:
    info = read_model_info(tiny_models.ldm, ["ldm"])
    assert info["classes"] == ["ADI", "TUM"] and info["steps"] == 4 and info["null_class"] == 2
    assert info["autoencoder"]["kind"] == "kl-autoencoder"
    for part in ("unet", "class_embedder", "vae", "scheduler"):
        assert (tiny_models.ldm / part).is_dir()
    unet = UNet2DConditionModel.from_pretrained(tiny_models.ldm / "unet")
    assert 100_000 < sum(p.numel() for p in unet.parameters()) < 1_000_000  # "a few hundred thousand"
    assert ClassEmbedder.from_pretrained(tiny_models.ldm / "class_embedder").embedding.num_embeddings == 3

    # 1 / std of z = mean + std * noise over every tile in its 4 rotations, encoded here directly.
    vae = AutoencoderKL.from_pretrained(tiny_models.autoencoder).eval()
    means, variances = [], []
    for path in sorted(tiny_models.pool.rglob("*.png")):
        tile = load_rgb(path, size=32)
        for turns in range(4):
            with torch.no_grad():
                posterior = vae.encode(to_model_input(np.rot90(tile, turns))[None]).latent_dist
            means.append(posterior.mean.double())
            variances.append(posterior.var.double())
    mean, variance = torch.cat(means), torch.cat(variances)
    std = ((mean**2 + variance).mean() - mean.mean() ** 2).sqrt().item()
    assert info["scaling_factor"] == pytest.approx(1 / std, rel=1e-5)


def test_ldm_resume_equals_an_uninterrupted_run(tiny_models, tmp_path: Path) -> None:
    settings = dict(epochs=2, checkpoint_every=100)
    whole = train_ldm(
        tiny_models.autoencoder,
        tiny_models.pool,
        tmp_path / "whole",
        LDMSettings(ldm_options("tiny", max_steps=6, **settings)),
    )
    part = train_ldm(
        tiny_models.autoencoder,
        tiny_models.pool,
        tmp_path / "part",
        LDMSettings(ldm_options("tiny", max_steps=3, **settings)),
    )
    train_ldm(
        tiny_models.autoencoder,
        tiny_models.pool,
        part,
        LDMSettings(ldm_options("tiny", max_steps=6, **settings), resume=True),
    )
    for component in ("unet", "class_embedder"):
        first = load_file(whole / component / "diffusion_pytorch_model.safetensors")
        second = load_file(part / component / "diffusion_pytorch_model.safetensors")
        assert all(torch.equal(first[key], second[key]) for key in first), component
    ema = [
        torch.load(f / "checkpoints" / "step-6" / "custom_checkpoint_0.pkl", weights_only=False)
        for f in (whole, part)
    ]
    assert ema[0]["optimization_step"] == ema[1]["optimization_step"] == 6


def test_ldm_on_a_vq_autoencoder_from_the_cli(make_tiles, tmp_path: Path, cli) -> None:
    pool = make_tiles()
    vq = train_autoencoder(
        pool,
        tmp_path / "vq",
        AutoencoderSettings(autoencoder_options("vq", "tiny", perceptual=False, max_steps=2)),
    )
    out = tmp_path / "vqf8-dm"
    result = cli(
        "train",
        "ldm",
        "--preset",
        "tiny",
        "--autoencoder",
        vq,
        "--data",
        pool,
        "--out",
        out,
        "--max-steps",
        "2",
        "--cond-drop",
        "0.5",
    )
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "histosynth.json").read_text())
    assert info["autoencoder"]["kind"] == "vq-autoencoder" and info["settings"]["cond_drop"] == 0.5


def test_ldm_refuses_folders_that_are_not_autoencoders(tiny_models, tmp_path: Path, cli) -> None:
    with pytest.raises(HistosynthError, match="of kind ldm, expected kl-autoencoder or vq-autoencoder"):
        train_ldm(tiny_models.ldm, tiny_models.pool, tmp_path / "x", LDMSettings(ldm_options()))
    bare = tmp_path / "bare"
    AutoencoderKL(block_out_channels=(8,), norm_num_groups=4).save_pretrained(bare)
    result = cli(
        "train",
        "ldm",
        "--preset",
        "tiny",
        "--autoencoder",
        bare,
        "--data",
        tiny_models.pool,
        "--out",
        tmp_path / "y",
    )
    assert result.returncode == 1 and "histosynth.json: missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "y").exists()
