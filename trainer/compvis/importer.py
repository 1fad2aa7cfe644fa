"""Import a CompVis latent-diffusion checkpoint (the paper's KLF8-DM and VQF8-DM, or a first stage alone).

The published weights are a CompVis `.ckpt` (a Lightning checkpoint whose `state_dict` holds
`model.diffusion_model.*`, `model_ema.*`, `first_stage_model.*`, `cond_stage_model.*` and the
diffusion schedule's buffers) with its YAML config. `import_compvis` turns the pair into the
model folder `histosynth train` writes, so `histosynth generate` samples it unchanged:

- the U-Net goes through diffusers' `convert_ldm_unet_checkpoint`; its config is built here
  because diffusers' `create_unet_diffusers_config_from_ldm` reads the heads only from
  `num_heads` (the class-conditional CompVis configs give `num_head_channels`) and guesses the
  latent size from the checkpoint;
- where the checkpoint carries `model_ema.*` (CompVis `LitEma`, flattened parameter names), the
  denoiser takes those weights, because CompVis samples inside `ema_scope()`;
- the first stage goes through diffusers' `convert_ldm_vae_checkpoint`, which knows neither the
  attention inside VQ-f8's blocks (`encoder.down.N.attn.J`, `decoder.up.N.attn.J`) nor the
  codebook (`quantize.embedding.weight`): those are mapped here with diffusers' attention rule;
- the class embedder (`cond_stage_model.embedding.weight`, CompVis `ClassEmbedder`) becomes
  `trainer.diffusion.ldm.ClassEmbedder`, whose extra null row is zero and untrained (`cond_drop` 0 is
  recorded, so `generate` refuses guidance);
- the schedule's buffers are checked against the config's `linear_start`, `linear_end` and
  `timesteps`, and `scale_factor` (the checkpoint's buffer under `scale_by_std`, else the
  config's) is recorded as the model's scaling factor.

Every checkpoint key must find its place: a key the conversion does not use, or a weight the
model lacks, is an error naming it. Known training-only entries are dropped by name: the first
stage's loss networks (`loss.*`: LPIPS and discriminator) and the raw U-Net weights that the EMA
weights supersede. A config key this module does not understand is an error naming the key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from diffusers import AutoencoderKL, UNet2DConditionModel, VQModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    update_vae_attentions_ldm_to_diffusers,
)

from histosynth.errors import HistosynthError
from histosynth.pools import sha256_file
from trainer.autoencoder.model import build_autoencoder
from trainer.autoencoder.options import AutoencoderOptions
from trainer.core.model_folder import model_hash, publish_model, write_model_info
from trainer.diffusion.denoising import training_scheduler
from trainer.diffusion.ldm import KIND as LDM_KIND
from trainer.diffusion.ldm import ClassEmbedder

logger = logging.getLogger(__name__)

LDM_TARGET = "ldm.models.diffusion.ddpm.LatentDiffusion"
UNET_TARGET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
CLASS_EMBEDDER_TARGET = "ldm.modules.encoders.modules.ClassEmbedder"
FIRST_STAGE_TARGETS = {
    "ldm.models.autoencoder.AutoencoderKL": "kl",
    "ldm.models.autoencoder.VQModel": "vq",
    "ldm.models.autoencoder.VQModelInterface": "vq",
}
AUTOENCODER_KIND = {"kl": "kl-autoencoder", "vq": "vq-autoencoder"}
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)

# Config keys that only steer training or logging: accepted and recorded, never used.
_TRAINING_ONLY = {
    "model": {"base_learning_rate"},
    "ldm": {
        "first_stage_key",
        "cond_stage_key",
        "cond_stage_trainable",
        "monitor",
        "log_every_t",
        "loss_type",
        "ckpt_path",
        "ignore_keys",
        "load_only_unet",
        "clip_denoised",
        "original_elbo_weight",
        "v_posterior",
        "l_simple_weight",
        "logvar_init",
        "scheduler_config",
        "use_positional_encodings",
        "cosine_s",
    },
    "unet": {
        "dropout",
        "use_checkpoint",
        "use_fp16",
        "num_heads_upsample",
        "use_new_attention_order",
        "legacy",
    },
    "first_stage": {
        "lossconfig",
        "ckpt_path",
        "ignore_keys",
        "image_key",
        "colorize_nlabels",
        "monitor",
        "sane_index_shape",
        "batch_resize_range",
        "scheduler_config",
        "lr_g_factor",
    },
    "ddconfig": {"dropout"},
    "cond_stage": {"key"},
}
# Keys that shape the model, with the values this importer can reproduce (None: any value).
_SHAPING = {
    "ldm": {
        "linear_start": None,
        "linear_end": None,
        "timesteps": None,
        "image_size": None,
        "channels": None,
        "scale_factor": None,
        "scale_by_std": None,
        "use_ema": None,
        "unet_config": None,
        "first_stage_config": None,
        "cond_stage_config": None,
        "beta_schedule": ("linear",),
        "parameterization": ("eps",),
        "conditioning_key": ("crossattn",),
        "num_timesteps_cond": (1,),
        "given_betas": (None,),
        "learn_logvar": (False,),
        "concat_mode": (True,),
        "cond_stage_forward": (None,),
    },
    "unet": {
        "image_size": None,
        "in_channels": None,
        "out_channels": None,
        "model_channels": None,
        "attention_resolutions": None,
        "num_res_blocks": None,
        "channel_mult": None,
        "num_head_channels": None,
        "num_heads": None,
        "transformer_depth": None,
        "context_dim": None,
        "use_spatial_transformer": (True,),
        "conv_resample": (True,),
        "dims": (2,),
        "use_scale_shift_norm": (False,),
        "resblock_updown": (False,),
        "num_classes": (None,),
        "n_embed": (None,),
    },
    "first_stage": {
        "embed_dim": None,
        "n_embed": None,
        "ddconfig": None,
        "remap": (None,),
        "use_ema": (False,),
    },
    "ddconfig": {
        "double_z": None,
        "z_channels": None,
        "resolution": None,
        "in_channels": (3,),
        "out_ch": (3,),
        "ch": None,
        "ch_mult": None,
        "num_res_blocks": None,
        "attn_resolutions": None,
        "resamp_with_conv": (True,),
        "give_pre_end": (False,),
        "tanh_out": (False,),
        "use_linear_attn": (False,),
        "attn_type": ("vanilla",),
    },
    "cond_stage": {"embed_dim": None, "n_classes": None},
}


def import_compvis(
    checkpoint: str | Path,
    config: str | Path,
    out: str | Path,
    *,
    classes: Sequence[str] | None = None,
    unsafe_pickle: bool = False,
) -> Path:
    """Convert a CompVis checkpoint and its YAML config into a histosynth model folder.

    Args:
        checkpoint: the CompVis `.ckpt` (Lightning checkpoint or bare state dict) or a
            `.safetensors` file.
        config: its YAML (`configs/latent-diffusion/*.yaml`, or a first stage's
            `models/first_stage_models/*/config.yaml`).
        out: the model folder to write; it must not exist or be empty.
        classes: class names in label order (label i is `classes[i]`); required for a
            class-conditional model, whose checkpoint names no classes; optional for a first
            stage (recorded only).
        unsafe_pickle: load a `.ckpt` that holds Python objects besides tensors (older
            Lightning checkpoints); only for checkpoints from a source you trust, since
            unpickling can run code.

    Returns:
        The model folder: kind `ldm` (`unet/`, `class_embedder/`, `vae/`, `scheduler/`) or
        `kl-autoencoder` / `vq-autoencoder` (a diffusers autoencoder at the top).

    Raises:
        HistosynthError: a config key or value this importer does not understand (named), a
            checkpoint key that finds no place or a weight the checkpoint lacks (named),
            schedule buffers that disagree with the config, a wrong number of classes, or an
            out folder that already holds files.
    """
    checkpoint = Path(checkpoint).expanduser()
    config = Path(config).expanduser()
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HistosynthError(f"{out}: exists and is not an empty folder; choose another --out")
    model_config = _read_config(config)
    state, global_step = _read_checkpoint(checkpoint, unsafe_pickle)
    ledger = _Ledger(state, checkpoint)
    target = model_config.get("target")
    params = model_config.get("params") or {}
    source = {"checkpoint": str(checkpoint), "sha256": sha256_file(checkpoint), "config": str(config)}
    if target in FIRST_STAGE_TARGETS:
        kind = FIRST_STAGE_TARGETS[target]
        autoencoder = _first_stage(params, kind, ledger, "", f"{config}: model")
        ledger.drop_prefix("loss.")  # LPIPS and the discriminator: training only
        ledger.check_all_used()
        publish_model(out, autoencoder.save_pretrained)
        write_model_info(
            out,
            kind=AUTOENCODER_KIND[kind],
            classes=list(classes or []),
            settings={"preset": None, "imported": True},
            fingerprint={},
            steps=global_step,
            extra={"imported_from": {**source, "dropped": ledger.dropped}},
        )
        return out
    if target != LDM_TARGET:
        raise HistosynthError(
            f"{config}: model.target {target!r}: expected {LDM_TARGET} or a first stage "
            f"({', '.join(FIRST_STAGE_TARGETS)})"
        )
    _check_keys(params, "ldm", f"{config}: model.params")
    if params.get("conditioning_key") != "crossattn":  # absent means CompVis' default, concat
        raise HistosynthError(
            f"{config}: model.params.conditioning_key {params.get('conditioning_key')!r}: "
            "the importer supports 'crossattn' (a class embedding the U-Net attends to) only"
        )
    schedule = _schedule(params, ledger, f"{config}: model.params")
    first_stage = params.get("first_stage_config") or {}
    kind = FIRST_STAGE_TARGETS.get(first_stage.get("target"))
    if kind is None:
        raise HistosynthError(
            f"{config}: model.params.first_stage_config.target {first_stage.get('target')!r}: "
            f"expected one of {', '.join(FIRST_STAGE_TARGETS)}"
        )
    vae = _first_stage(
        first_stage.get("params") or {},
        kind,
        ledger,
        "first_stage_model.",
        f"{config}: model.params.first_stage_config",
    )
    ledger.drop_prefix("first_stage_model.loss.")
    labels = _class_names(params, classes, f"{config}: model.params.cond_stage_config")
    embedder = _class_embedder(params["cond_stage_config"], labels, ledger)
    unet, ema = _unet(params, ledger, f"{config}: model.params.unet_config")
    scaling_factor = _scale_factor(params, ledger)
    ledger.check_all_used()

    def write(staging: Path) -> None:
        unet.save_pretrained(staging / "unet")
        embedder.save_pretrained(staging / "class_embedder")
        vae.save_pretrained(staging / "vae")
        training_scheduler(**schedule).save_pretrained(staging / "scheduler")

    publish_model(out, write)
    write_model_info(
        out,
        kind=LDM_KIND,
        classes=labels,
        settings={"preset": None, "imported": True, "cond_drop": 0.0, **schedule},
        fingerprint={},
        steps=global_step,
        extra={
            "scaling_factor": scaling_factor,
            "null_class": len(labels),
            "autoencoder": {"kind": AUTOENCODER_KIND[kind], "sha256": model_hash(out / "vae")},
            "imported_from": {**source, "ema": ema, "dropped": ledger.dropped},
        },
    )
    return out


class _Ledger:
    """The checkpoint's keys and which of them found a place (or were dropped by name)."""

    def __init__(self, state: dict[str, torch.Tensor], checkpoint: Path) -> None:
        self.state = state
        self.checkpoint = checkpoint
        self.used: set[str] = set()
        self.dropped: list[str] = []

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """The entries under `prefix`, with the prefix removed."""
        return {key[len(prefix) :]: value for key, value in self.state.items() if key.startswith(prefix)}

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise HistosynthError(f"{self.checkpoint}: lacks {key}")
        self.used.add(key)
        return self.state[key]

    def mark_converted(self, prefix: str, source: dict[str, torch.Tensor], converted: dict) -> None:
        """Mark the source keys whose tensors (or views of them) the conversion placed."""
        by_address = {tensor.data_ptr(): key for key, tensor in source.items()}
        for tensor in converted.values():
            key = by_address.get(tensor.data_ptr())
            if key is not None:
                self.used.add(prefix + key)

    def drop_prefix(self, prefix: str) -> None:
        keys = [key for key in self.state if key.startswith(prefix) and key not in self.used]
        if keys:
            self.dropped.append(f"{prefix}* ({len(keys)} tensors)")
            self.used.update(keys)

    def check_all_used(self) -> None:
        left = sorted(set(self.state) - self.used)
        if left:
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            raise HistosynthError(f"{self.checkpoint}: {len(left)} keys find no place in the model: {shown}")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise HistosynthError(f"{path}: not a readable YAML config ({error})") from error
    if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
        raise HistosynthError(f"{path}: no `model` section (not a CompVis config)")
    model = document["model"]
    unknown = sorted(set(model) - {"target", "params"} - _TRAINING_ONLY["model"])
    if unknown:
        raise HistosynthError(f"{path}: model.{unknown[0]}: not understood by the CompVis importer")
    return model


def _read_checkpoint(path: Path, unsafe_pickle: bool) -> tuple[dict[str, torch.Tensor], int]:
    """The state dict and the global step (0 where the file records none)."""
    if not path.is_file():
        raise HistosynthError(f"{path}: checkpoint file does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path), 0
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or others for foreign files
        hint = "" if unsafe_pickle else "; if you trust its source, pass --unsafe-pickle"
        raise HistosynthError(
            f"{path}: cannot load the checkpoint ({str(error).splitlines()[0]}){hint}"
        ) from error
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise HistosynthError(f"{path}: not a state dict of tensors (nor a checkpoint holding one)")
    step = loaded.get("global_step", 0) if "state_dict" in loaded else 0
    return dict(state), int(step or 0)


def _check_keys(params: dict[str, Any], section: str, where: str) -> None:
    """Refuse keys this importer does not know, and shaping values it cannot reproduce."""
    for key, value in params.items():
        if key in _TRAINING_ONLY.get(section, set()):
            continue
        if key not in _SHAPING[section]:
            raise HistosynthError(f"{where}.{key}: not understood by the CompVis importer")
        allowed = _SHAPING[section][key]
        if allowed is not None and value not in allowed:
            raise HistosynthError(
                f"{where}.{key} = {value!r}: the importer supports only {', '.join(map(repr, allowed))}"
            )


def _schedule(params: dict[str, Any], ledger: _Ledger, where: str) -> dict[str, Any]:
    """The DDPM schedule of the config, checked against the checkpoint's buffers where present."""
    schedule = {
        "num_train_timesteps": int(params.get("timesteps", 1000)),
        "beta_start": float(params.get("linear_start", 1e-4)),
        "beta_end": float(params.get("linear_end", 2e-2)),
    }
    betas = compvis_betas(**schedule)
    alphas_cumprod = np.cumprod(1.0 - betas)
    expected = {"betas": betas, "alphas_cumprod": alphas_cumprod}
    for name in SCHEDULE_BUFFERS:
        if name not in ledger.state:
            continue
        buffer = ledger.take(name).double().numpy()
        if name in expected and (
            buffer.shape != expected[name].shape
            or not np.allclose(buffer, expected[name], rtol=1e-5, atol=1e-8)
        ):
            raise HistosynthError(
                f"{ledger.checkpoint}: its {name} differ from the schedule of {where} "
                f"(timesteps {schedule['num_train_timesteps']}, linear_start {schedule['beta_start']}, "
                f"linear_end {schedule['beta_end']})"
            )
    return schedule


def compvis_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """CompVis `make_beta_schedule("linear")`: linspace in sqrt space, squared, in float64."""
    return np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2


def _scale_factor(params: dict[str, Any], ledger: _Ledger) -> float:
    """The latent scale: the buffer CompVis computed under `scale_by_std`, else the config's value."""
    if params.get("scale_by_std", False):
        return float(ledger.take("scale_factor"))
    return float(params.get("scale_factor", 1.0))


def _first_stage(
    params: dict[str, Any], kind: str, ledger: _Ledger, prefix: str, where: str
) -> AutoencoderKL | VQModel:
    """Build the diffusers autoencoder the config describes and load the checkpoint's weights."""
    _check_keys(params, "first_stage", f"{where}.params")
    dd = params.get("ddconfig")
    if not isinstance(dd, dict):
        raise HistosynthError(f"{where}.params.ddconfig: missing")
    _check_keys(dd, "ddconfig", f"{where}.params.ddconfig")
    for key in ("z_channels", "resolution", "ch", "ch_mult", "num_res_blocks", "embed_dim"):
        if key not in dd and key not in params:
            raise HistosynthError(f"{where}.params: {key} missing")
    if bool(dd.get("double_z", kind == "kl")) != (kind == "kl"):
        raise HistosynthError(
            f"{where}.params.ddconfig.double_z: must be {kind == 'kl'} for a {kind} first stage"
        )
    if params["embed_dim"] != dd["z_channels"]:
        raise HistosynthError(
            f"{where}.params.embed_dim {params['embed_dim']}: differs from ddconfig.z_channels "
            f"{dd['z_channels']}; diffusers' autoencoders need them equal"
        )
    if kind == "vq" and "n_embed" not in params:
        raise HistosynthError(f"{where}.params.n_embed: missing (the codebook size of a VQ first stage)")
    resolution = int(dd["resolution"])
    levels = len(dd["ch_mult"])
    attention = set(dd.get("attn_resolutions") or [])
    options = AutoencoderOptions(
        kind=kind,
        size=resolution,
        block_out_channels=tuple(int(dd["ch"]) * int(mult) for mult in dd["ch_mult"]),
        layers_per_block=int(dd["num_res_blocks"]),
        attention_levels=tuple(level for level in range(levels) if resolution // 2**level in attention),
        norm_num_groups=32,
        latent_channels=int(dd["z_channels"]),
        num_vq_embeddings=int(params.get("n_embed", 1)),
    )
    autoencoder = build_autoencoder(options)
    source = ledger.section(prefix)
    source = {key: value for key, value in source.items() if not key.startswith("loss.")}
    converted = convert_ldm_vae_checkpoint(source, autoencoder.config)
    _map_block_attention(source, converted, levels)
    if kind == "vq" and "quantize.embedding.weight" in source:
        converted["quantize.embedding.weight"] = source["quantize.embedding.weight"]
    ledger.mark_converted(prefix, source, converted)
    _load(autoencoder, converted, ledger, f"first stage ({prefix or 'top level'})")
    return autoencoder.eval()


def _map_block_attention(source: dict[str, torch.Tensor], converted: dict, levels: int) -> None:
    """VQ-f8's attention inside encoder and decoder levels, which diffusers' VAE helper passes through.

    CompVis `encoder.down.N.attn.J` is diffusers `encoder.down_blocks.N.attentions.J`; the
    decoder's levels run the other way (`decoder.up.N` is `up_blocks.(levels - 1 - N)`).
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for key in source:
        parts = key.split(".")
        if (
            len(parts) > 4
            and parts[0] in ("encoder", "decoder")
            and parts[1:4:2] in (["down", "attn"], ["up", "attn"])
        ):
            old = ".".join(parts[:5])
            level = int(parts[2]) if parts[1] == "down" else levels - 1 - int(parts[2])
            new = f"{parts[0]}.{parts[1]}_blocks.{level}.attentions.{parts[4]}"
            groups.setdefault((old, new), []).append(key)
    for (old, new), keys in groups.items():
        for key in keys:
            converted.pop(key, None)  # passed through under its CompVis name
        update_vae_attentions_ldm_to_diffusers(keys, converted, source, {"old": old, "new": new})


def _class_names(params: dict[str, Any], classes: Sequence[str] | None, where: str) -> list[str]:
    cond = params.get("cond_stage_config")
    if not isinstance(cond, dict) or cond.get("target") != CLASS_EMBEDDER_TARGET:
        target = cond.get("target") if isinstance(cond, dict) else cond
        raise HistosynthError(
            f"{where}.target {target!r}: the importer supports {CLASS_EMBEDDER_TARGET} only"
        )
    _check_keys(cond.get("params") or {}, "cond_stage", f"{where}.params")
    n_classes = int((cond.get("params") or {}).get("n_classes", 1000))
    if not classes:
        raise HistosynthError(
            f"{where}.params.n_classes is {n_classes}, and the checkpoint names no classes: "
            "give their names in label order with --classes"
        )
    if len(classes) != n_classes or len(set(classes)) != len(classes):
        raise HistosynthError(
            f"--classes: {len(classes)} names ({', '.join(classes)}), "
            f"but {where}.params.n_classes is {n_classes}"
            + (" (and names repeat)" if len(set(classes)) != len(classes) else "")
        )
    return list(classes)


def _class_embedder(cond: dict[str, Any], classes: list[str], ledger: _Ledger) -> ClassEmbedder:
    """CompVis `ClassEmbedder` (one row per class) as ours (plus a zero, untrained null row)."""
    weight = ledger.take("cond_stage_model.embedding.weight")
    embed_dim = int((cond.get("params") or {}).get("embed_dim", weight.shape[1]))
    if tuple(weight.shape) != (len(classes), embed_dim):
        raise HistosynthError(
            f"{ledger.checkpoint}: cond_stage_model.embedding.weight is {tuple(weight.shape)}, "
            f"the config says ({len(classes)}, {embed_dim})"
        )
    embedder = ClassEmbedder(len(classes), embed_dim)
    with torch.no_grad():
        embedder.embedding.weight.zero_()
        embedder.embedding.weight[: len(classes)] = weight.float()
    return embedder.eval()


def _unet(params: dict[str, Any], ledger: _Ledger, where: str) -> tuple[UNet2DConditionModel, bool]:
    """Build the U-Net the config describes; load the EMA weights where the checkpoint has them."""
    unet_config = params.get("unet_config") or {}
    if unet_config.get("target") != UNET_TARGET:
        raise HistosynthError(f"{where}.target {unet_config.get('target')!r}: expected {UNET_TARGET}")
    up = unet_config.get("params") or {}
    _check_keys(up, "unet", f"{where}.params")
    if up.get("use_spatial_transformer") is not True:  # CompVis' default False has no cross-attention
        raise HistosynthError(
            f"{where}.params.use_spatial_transformer: must be true for a class-conditional U-Net"
        )
    for key in ("image_size", "in_channels", "out_channels", "model_channels", "channel_mult", "context_dim"):
        if key not in up:
            raise HistosynthError(f"{where}.params.{key}: missing")
    channels = [int(up["model_channels"]) * int(mult) for mult in up["channel_mult"]]
    head_channels, heads = int(up.get("num_head_channels", -1)), int(up.get("num_heads", -1))
    if head_channels == -1 and heads == -1:
        raise HistosynthError(f"{where}.params: neither num_heads nor num_head_channels is set")
    per_level = [width // head_channels if head_channels != -1 else heads for width in channels]
    attention = set(up.get("attention_resolutions") or [])
    with_attention = [2**level in attention for level in range(len(channels))]
    config = dict(
        sample_size=int(up["image_size"]),
        in_channels=int(up["in_channels"]),
        out_channels=int(up["out_channels"]),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in with_attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(with_attention)),
        block_out_channels=tuple(channels),
        layers_per_block=int(up.get("num_res_blocks", 2)),
        attention_head_dim=tuple(per_level),  # diffusers reads this as heads per level
        cross_attention_dim=int(up["context_dim"]),
        transformer_layers_per_block=int(up.get("transformer_depth", 1)),
        norm_num_groups=32,
    )
    unet = UNet2DConditionModel(**config)
    raw_prefix = "model.diffusion_model."
    raw = ledger.section(raw_prefix)
    ema = bool(params.get("use_ema", True)) and any(key.startswith("model_ema.") for key in ledger.state)
    weights = raw
    if ema:  # LitEma keeps each parameter under its name without dots
        weights = {}
        for key in raw:
            flat = "model_ema.diffusion_model" + key.replace(".", "")
            if flat not in ledger.state:
                raise HistosynthError(f"{ledger.checkpoint}: lacks {flat}, the EMA copy of {raw_prefix}{key}")
            weights[key] = ledger.take(flat)
        for counter in ("model_ema.decay", "model_ema.num_updates"):
            if counter in ledger.state:
                ledger.take(counter)
        ledger.dropped.append(f"{raw_prefix}* ({len(raw)} tensors, superseded by model_ema.*)")
    converted = convert_ldm_unet_checkpoint(
        {raw_prefix + key: value for key, value in weights.items()}, config
    )
    placed = {tensor.data_ptr() for tensor in converted.values()}
    unplaced = sorted(key for key, tensor in weights.items() if tensor.data_ptr() not in placed)
    if unplaced:
        raise HistosynthError(
            f"{ledger.checkpoint}: {len(unplaced)} U-Net weights find no place in the model: "
            f"{_few(raw_prefix + key for key in unplaced)}"
        )
    ledger.used.update(raw_prefix + key for key in raw)
    _load(unet, converted, ledger, "U-Net (model.diffusion_model)")
    return unet.eval(), ema


def _load(model: torch.nn.Module, converted: dict[str, torch.Tensor], ledger: _Ledger, what: str) -> None:
    """Load strictly: a weight the checkpoint lacks, or a converted key without a place, is an error."""
    expected = set(model.state_dict())
    missing = sorted(expected - set(converted))
    extra = sorted(set(converted) - expected)
    if missing:
        raise HistosynthError(
            f"{ledger.checkpoint}: lacks {len(missing)} weights of the {what}: {_few(missing)}"
        )
    if extra:
        raise HistosynthError(
            f"{ledger.checkpoint}: {len(extra)} weights find no place in the {what}: {_few(extra)}"
        )
    try:
        model.load_state_dict({key: value.float() for key, value in converted.items()}, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise HistosynthError(
            f"{ledger.checkpoint}: the {what} weights do not fit the config ({detail})"
        ) from error


def _few(names: Iterable[str]) -> str:
    names = list(names)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
