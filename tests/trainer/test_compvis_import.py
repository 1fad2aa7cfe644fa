"""`import compvis`: a tiny model of ours written out in the CompVis layout by a hand-written key map
(from CompVis' `openaimodel.UNetModel`, `autoencoder` and `ClassEmbedder` module trees), then imported:
the same denoiser and decoder outputs; every key used, none missing; EMA weights taken; `generate`
on the imported model against an independent CompVis DDIM loop; configs and keys it must refuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import AutoencoderKL, UNet2DConditionModel, VQModel
from PIL import Image

from histosynth.errors import HistosynthError
from histosynth.sampling import derive_seed
from trainer.compvis.importer import import_compvis
from trainer.core.model_folder import read_model_info
from trainer.diffusion.ldm import load_ldm, sample_latents
from trainer.generate import generate_pool, image_name

LEVELS_UNET = (32, 64)
LAYERS = 1
CONTEXT = 16
CLASSES = ["ADI", "TUM", "STR"]
SCALE = 0.7
SCHEDULE = {"timesteps": 1000, "linear_start": 0.0015, "linear_end": 0.0195}

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight random (diffusers zero-initialises some, which would hide a misplaced tensor)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    return randomised(
        UNet2DConditionModel(
            sample_size=4,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 2,
            up_block_types=("CrossAttnUpBlock2D",) * 2,
            block_out_channels=LEVELS_UNET,
            layers_per_block=LAYERS,
            attention_head_dim=(1, 2),  # heads: 32 channels each, as num_head_channels 32
            cross_attention_dim=CONTEXT,
            norm_num_groups=32,
        ),
        seed,
    )


def tiny_first_stage(kind: str, seed: int = 1) -> AutoencoderKL | VQModel:
    common = dict(
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )
    if kind == "kl":
        model = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **common
        )
    else:  # VQ-f8: attention at the 4 x 4 level (32 px / 8), both in the encoder and the decoder
        model = VQModel(
            down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
            up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
            num_vq_embeddings=32,
            vq_embed_dim=4,
            **common,
        )
    return randomised(model, seed)


def unet_to_compvis(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """Our U-Net's weights under CompVis `UNetModel` names (input_blocks / middle_block / output_blocks)."""
    step = LAYERS + 1
    out = {}
    for key, value in unet.state_dict().items():
        head, *parts = key.split(".")
        if head == "time_embedding":
            name = f"time_embed.{ {'linear_1': 0, 'linear_2': 2}[parts[0]] }.{parts[1]}"
        elif head in ("conv_in", "conv_norm_out", "conv_out"):
            name = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}[head]
            name += "." + parts[0]
        elif head == "down_blocks":
            level, part, index, rest = int(parts[0]), parts[1], int(parts[2]), parts[3:]
            if part == "resnets":
                name = f"input_blocks.{1 + level * step + index}.0.{RESNET.get(rest[0], rest[0])}.{rest[-1]}"
            elif part == "attentions":
                name = f"input_blocks.{1 + level * step + index}.1." + ".".join(rest)
            else:  # downsamplers.0.conv
                name = f"input_blocks.{1 + level * step + LAYERS}.0.op.{rest[-1]}"
        elif head == "mid_block":
            part, index, rest = parts[0], int(parts[1]), parts[2:]
            if part == "resnets":
                name = f"middle_block.{2 * index}.{RESNET.get(rest[0], rest[0])}.{rest[-1]}"
            else:
                name = "middle_block.1." + ".".join(rest)
        else:  # up_blocks: CompVis output_blocks run from the deepest level, LAYERS + 1 per level
            level, part, index, rest = int(parts[0]), parts[1], int(parts[2]), parts[3:]
            if part == "resnets":
                name = f"output_blocks.{level * step + index}.0.{RESNET.get(rest[0], rest[0])}.{rest[-1]}"
            elif part == "attentions":
                name = f"output_blocks.{level * step + index}.1." + ".".join(rest)
            else:  # upsamplers.0.conv after [ResBlock, SpatialTransformer]
                name = f"output_blocks.{level * step + LAYERS}.2.conv.{rest[-1]}"
        out["model.diffusion_model." + name] = value.clone()
    return out


def first_stage_to_compvis(model: AutoencoderKL | VQModel, prefix: str) -> dict[str, torch.Tensor]:
    """Our autoencoder's weights under CompVis `Encoder`/`Decoder` names (down.N.block.J, mid.attn_1, ...)."""
    levels = len(model.config.block_out_channels)
    out = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] in ("encoder", "decoder") and parts[1] in ("down_blocks", "up_blocks"):
            level = int(parts[2]) if parts[1] == "down_blocks" else levels - 1 - int(parts[2])
            where = f"{parts[0]}.{'down' if parts[1] == 'down_blocks' else 'up'}.{level}"
            part, rest = parts[3], parts[4:]
            if part == "resnets":
                name = f"{where}.block.{rest[0]}." + ".".join(rest[1:]).replace(
                    "conv_shortcut", "nin_shortcut"
                )
            elif part in ("downsamplers", "upsamplers"):
                name = f"{where}.{'downsample' if part == 'downsamplers' else 'upsample'}.conv.{rest[-1]}"
            else:
                name = f"{where}.attn.{rest[0]}.{VAE_ATTENTION[rest[1]]}.{rest[-1]}"
        elif parts[0] in ("encoder", "decoder") and parts[1] == "mid_block":
            if parts[2] == "resnets":
                name = f"{parts[0]}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:])
            else:
                name = f"{parts[0]}.mid.attn_1.{VAE_ATTENTION[parts[4]]}.{parts[-1]}"
        else:
            name = key.replace("conv_norm_out", "norm_out")
        if ".attn" in name and value.ndim == 2:  # CompVis attention projections are 1x1 convolutions
            value = value[:, :, None, None]
        out[prefix + name] = value.clone()
    return out


def first_stage_params(kind: str) -> dict:
    params = {
        "embed_dim": 4,
        "ddconfig": {
            "double_z": kind == "kl",
            "z_channels": 4,
            "resolution": 32,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 32,
            "ch_mult": [1, 1, 1, 1],
            "num_res_blocks": 1,
            "attn_resolutions": [4] if kind == "vq" else [],
            "dropout": 0.0,
        },
        "lossconfig": {"target": "torch.nn.Identity"},
    }
    if kind == "vq":
        params["n_embed"] = 32
    return params


def ldm_config(kind: str) -> dict:
    """A cin-ldm-vq-f8.yaml in miniature (same keys; the data and lightning sections left out)."""
    target = (
        "ldm.models.autoencoder.VQModelInterface" if kind == "vq" else "ldm.models.autoencoder.AutoencoderKL"
    )
    return {
        "model": {
            "base_learning_rate": 1e-6,
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                **SCHEDULE,
                "num_timesteps_cond": 1,
                "log_every_t": 200,
                "first_stage_key": "image",
                "cond_stage_key": "class_label",
                "image_size": 4,
                "channels": 4,
                "cond_stage_trainable": True,
                "conditioning_key": "crossattn",
                "monitor": "val/loss_simple_ema",
                "scale_factor": SCALE,
                "unet_config": {
                    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                    "params": {
                        "image_size": 4,
                        "in_channels": 4,
                        "out_channels": 4,
                        "model_channels": 32,
                        "attention_resolutions": [2, 1],
                        "num_res_blocks": LAYERS,
                        "channel_mult": [1, 2],
                        "num_head_channels": 32,
                        "use_spatial_transformer": True,
                        "transformer_depth": 1,
                        "context_dim": CONTEXT,
                    },
                },
                "first_stage_config": {"target": target, "params": first_stage_params(kind)},
                "cond_stage_config": {
                    "target": "ldm.modules.encoders.modules.ClassEmbedder",
                    "params": {"embed_dim": CONTEXT, "n_classes": len(CLASSES), "key": "class_label"},
                },
            },
        }
    }


def compvis_alphas() -> np.ndarray:
    betas = np.linspace(SCHEDULE["linear_start"] ** 0.5, SCHEDULE["linear_end"] ** 0.5, 1000) ** 2
    return np.cumprod(1.0 - betas)


def schedule_buffers() -> dict[str, torch.Tensor]:
    """`DDPM.register_schedule`'s buffers (float64 math, stored as float32)."""
    betas = np.linspace(SCHEDULE["linear_start"] ** 0.5, SCHEDULE["linear_end"] ** 0.5, 1000) ** 2
    alphas = np.cumprod(1.0 - betas)
    previous = np.append(1.0, alphas[:-1])
    posterior = betas * (1.0 - previous) / (1.0 - alphas)
    values = {
        "betas": betas,
        "alphas_cumprod": alphas,
        "alphas_cumprod_prev": previous,
        "sqrt_alphas_cumprod": np.sqrt(alphas),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas),
        "log_one_minus_alphas_cumprod": np.log(1.0 - alphas),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas - 1),
        "posterior_variance": posterior,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(previous) / (1.0 - alphas),
        "posterior_mean_coef2": (1.0 - previous) * np.sqrt(1.0 - betas) / (1.0 - alphas),
    }
    return {key: torch.tensor(value, dtype=torch.float32) for key, value in values.items()}


def compvis_ldm_state(
    kind: str,
) -> tuple[dict[str, torch.Tensor], UNet2DConditionModel, torch.nn.Module, torch.Tensor]:
    """(state dict, the EMA U-Net, the first stage, the class embedding) of a CompVis `LatentDiffusion`.

    The raw `model.diffusion_model.*` weights are another random U-Net: only the EMA ones
    (`model_ema.` + the parameter name without dots, as `LitEma`) make the right model.
    """
    ema_unet, raw_unet, first_stage = tiny_unet(0), tiny_unet(5), tiny_first_stage(kind)
    embedding = torch.randn(len(CLASSES), CONTEXT, generator=torch.Generator().manual_seed(3))
    state = unet_to_compvis(raw_unet)
    for key, value in unet_to_compvis(ema_unet).items():
        state["model_ema." + key[len("model.") :].replace(".", "")] = value
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(7, dtype=torch.int32)
    state.update(first_stage_to_compvis(first_stage, "first_stage_model."))
    state["cond_stage_model.embedding.weight"] = embedding.clone()
    state.update(schedule_buffers())
    return state, ema_unet, first_stage, embedding


def write_pair(folder: Path, state: dict, config: dict, name: str = "model") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint, yaml_path = folder / f"{name}.ckpt", folder / f"{name}.yaml"
    torch.save({"state_dict": state, "global_step": 1234, "epoch": 3}, checkpoint)
    yaml_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return checkpoint, yaml_path


@pytest.fixture(scope="module")
def imported_vq(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("compvis-vq")
    state, unet, first_stage, embedding = compvis_ldm_state("vq")
    checkpoint, config = write_pair(root, state, ldm_config("vq"))
    folder = import_compvis(checkpoint, config, root / "imported", classes=CLASSES)
    return folder, unet, first_stage, embedding


@torch.no_grad()
def test_vq_ldm_round_trip_gives_the_same_denoiser_decoder_and_class_embedding(imported_vq) -> None:
    folder, unet, first_stage, embedding = imported_vq
    info = read_model_info(folder, ["ldm"])
    assert info["classes"] == CLASSES and info["scaling_factor"] == pytest.approx(SCALE)
    assert info["settings"]["beta_start"] == 0.0015 and info["settings"]["num_train_timesteps"] == 1000
    assert info["steps"] == 1234 and info["imported_from"]["ema"] is True
    model = load_ldm(folder, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 4, generator=generator)
    labels = torch.tensor([2, 0])
    context = embedding[labels][:, None, :]
    assert torch.equal(model.embedder(labels), context)
    assert torch.count_nonzero(model.embedder.embedding.weight[len(CLASSES)]) == 0  # untrained null row
    for t in (1, 500, 999):
        ours = unet(x, t, encoder_hidden_states=context).sample
        imported = model.unet(x, t, encoder_hidden_states=context).sample
        assert torch.allclose(ours, imported, atol=1e-5), t
    assert isinstance(model.vae, VQModel)
    assert torch.allclose(model.vae.decode(x).sample, first_stage.decode(x).sample, atol=1e-5)
    images = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    assert torch.allclose(model.vae.encode(images).latents, first_stage.encode(images).latents, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_a_first_stage_alone_imports_and_its_loss_weights_are_dropped_by_name(
    kind: str, tmp_path: Path
) -> None:
    first_stage = tiny_first_stage(kind)
    state = first_stage_to_compvis(first_stage, "")
    state["loss.logvar"] = torch.zeros(())
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    target = {"kl": "ldm.models.autoencoder.AutoencoderKL", "vq": "ldm.models.autoencoder.VQModel"}[kind]
    config = {"model": {"base_learning_rate": 4.5e-6, "target": target}}
    config["model"]["params"] = {**first_stage_params(kind), "monitor": "val/rec_loss"}
    checkpoint, yaml_path = write_pair(tmp_path, state, config)
    folder = import_compvis(checkpoint, yaml_path, tmp_path / kind)
    info = read_model_info(folder, [f"{kind}-autoencoder"])
    assert info["imported_from"]["dropped"] == ["loss.* (2 tensors)"]
    imported = (AutoencoderKL if kind == "kl" else VQModel).from_pretrained(folder)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(imported.decode(x).sample, first_stage.decode(x).sample, atol=1e-5)


def hand_compvis_ddim(model, label: int, generator: torch.Generator, steps: int, eta: float) -> torch.Tensor:
    """CompVis `DDIMSampler.ddim_sampling` for one image: uniform `make_ddim_timesteps` (range(0, T, T // S)
    + 1), alpha_prev of the first step alphas_cumprod[0], sigma = eta sqrt((1 - a') / (1 - a) (1 - a / a')),
    x' = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma z. Noise: our per-image generator's draws."""
    alphas = compvis_alphas()
    timesteps = np.arange(0, 1000, 1000 // steps) + 1
    previous = np.concatenate([[alphas[0]], alphas[timesteps[:-1]]])
    x = torch.randn(model.latent_shape, generator=generator).double()[None]
    context = model.embedder(torch.tensor([label]))
    for position in reversed(range(steps)):
        a, a_prev = alphas[timesteps[position]], previous[position]
        eps = model.unet(x.float(), int(timesteps[position]), encoder_hidden_states=context).sample.double()
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
        noise = torch.randn(model.latent_shape, generator=generator).double()[None] if eta > 0 else 0.0
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps + sigma * noise
    return (x / SCALE).float()


@torch.no_grad()
def test_generate_on_the_imported_model_reproduces_a_hand_written_compvis_ddim(
    imported_vq, tmp_path: Path
) -> None:
    folder = imported_vq[0]
    model = load_ldm(folder, torch.device("cpu"))
    steps, eta, seed = 5, 0.5, 3
    keys = [("TUM", 0), ("STR", 1)]
    expected = {
        key: hand_compvis_ddim(
            model, CLASSES.index(key[0]), torch.Generator().manual_seed(derive_seed(seed, *key)), steps, eta
        )
        for key in keys
    }
    generators = [torch.Generator().manual_seed(derive_seed(seed, *key)) for key in keys]
    latents = sample_latents(model, [CLASSES.index(c) for c, _ in keys], generators, steps=steps, eta=eta)
    for row, key in enumerate(keys):
        assert torch.allclose(latents[row : row + 1], expected[key], atol=1e-4, rtol=1e-4), key
    pool = generate_pool(
        folder, tmp_path / "pool", 2, classes=["TUM", "STR"], steps=steps, eta=eta, seed=seed, batch_size=3
    )
    for c, i in keys:
        decoded = model.vae.decode(expected[(c, i)]).sample
        reference = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
        written = np.asarray(Image.open(pool / c / image_name(i)))
        assert np.abs(written.astype(int) - reference.astype(int)).max() <= 1, (c, i)


def expect_refusal(tmp_path: Path, state: dict, config: dict, match: str, classes=CLASSES) -> None:
    checkpoint, yaml_path = write_pair(tmp_path / "pair", state, config)
    with pytest.raises(HistosynthError, match=match):
        import_compvis(checkpoint, yaml_path, tmp_path / "out", classes=classes)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.fixture(scope="module")
def kl_state() -> dict:
    return compvis_ldm_state("kl")[0]


def test_a_leftover_key_is_an_error_naming_it(tmp_path: Path, kl_state: dict) -> None:
    expect_refusal(
        tmp_path,
        {
            **kl_state,
            "model.diffusion_model.extra.weight": torch.zeros(2),
            "model_ema.diffusion_modelextraweight": torch.zeros(2),
        },
        ldm_config("kl"),
        "find no place.*model.diffusion_model.extra.weight",
    )
    expect_refusal(
        tmp_path,
        {**kl_state, "cond_stage_model.other": torch.zeros(2)},
        ldm_config("kl"),
        "1 keys find no place in the model: cond_stage_model.other",
    )


def test_a_missing_weight_is_an_error_naming_it(tmp_path: Path, kl_state: dict) -> None:
    state = {
        key: value for key, value in kl_state.items() if key != "first_stage_model.decoder.conv_out.bias"
    }
    expect_refusal(
        tmp_path, state, ldm_config("kl"), "lacks 1 weights of the first stage.*decoder.conv_out.bias"
    )
    flat = "model_ema.diffusion_modelout2bias"
    state = {key: value for key, value in kl_state.items() if key != flat}
    expect_refusal(tmp_path, state, ldm_config("kl"), f"lacks {flat}")


def test_configs_it_does_not_understand_fail_naming_the_key(tmp_path: Path, kl_state: dict) -> None:
    config = ldm_config("kl")
    config["model"]["params"]["unet_config"]["params"]["use_scale_shift_norm"] = True
    expect_refusal(tmp_path, kl_state, config, "unet_config.params.use_scale_shift_norm = True")
    config = ldm_config("kl")
    config["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["attn_type"] = "linear"
    expect_refusal(
        tmp_path, kl_state, config, "model.params.first_stage_config.params.ddconfig.attn_type = 'linear'"
    )
    config = ldm_config("kl")
    config["model"]["params"]["mystery"] = 1
    expect_refusal(tmp_path, kl_state, config, r"model.params.mystery: not understood")
    config = ldm_config("kl")
    config["model"]["params"]["linear_end"] = 0.012
    expect_refusal(tmp_path, kl_state, config, "betas differ from the schedule")
    expect_refusal(tmp_path, kl_state, ldm_config("kl"), "n_classes is 3.*--classes", classes=None)
    expect_refusal(tmp_path, kl_state, ldm_config("kl"), "2 names", classes=["ADI", "TUM"])


def test_cli_imports_and_a_filled_out_folder_is_refused(tmp_path: Path, kl_state: dict, cli) -> None:
    checkpoint, yaml_path = write_pair(tmp_path / "pair", kl_state, ldm_config("kl"))
    args = ["import", "compvis", "--checkpoint", checkpoint, "--config", yaml_path, "--out", tmp_path / "m"]
    done = cli(*args, "--classes", "ADI,TUM", "--classes", "STR")
    assert done.returncode == 0, done.stderr
    assert read_model_info(tmp_path / "m", ["ldm"])["autoencoder"]["kind"] == "kl-autoencoder"
    with pytest.raises(HistosynthError, match="is not an empty folder"):
        import_compvis(checkpoint, yaml_path, tmp_path / "m", classes=CLASSES)
