"""The paper's class-conditional latent diffusion model (KLF8-DM, VQF8-DM): training and sampling.

A diffusers `UNet2DConditionModel` denoises the frozen autoencoder's latents and cross-attends to
a learned class embedding (CompVis `ClassEmbedder`: one 512-d vector per class, a context of one
token). The embedding has one extra row, the null class (index = number of classes): training
replaces a label by it with probability `cond_drop`, which makes classifier-free guidance
possible (`eps = eps(null) + g (eps(class) - eps(null))`, CompVis `p_sample_ddim`).

Diffusion follows CompVis `LatentDiffusion`: T = 1000, betas linear in sqrt space from 0.0015 to
0.0195 (diffusers `scaled_linear`), epsilon prediction with the plain MSE loss, t uniform,
AdamW at a constant rate, latents multiplied by a scaling factor = 1 / std of the training
latents (computed once over the latent cache and recorded), an EMA of the U-Net's weights
(diffusers `EMAModel`, decay 0.9999 with CompVis' warm-up (1 + n) / (10 + n)); the EMA weights
are the model's `unet/`, as CompVis samples inside `ema_scope()`. The class embedder, outside
CompVis' EMA, is saved as trained.

Sampling is DDIM with CompVis' schedule: timesteps 1, 1 + 1000/S, ..., ("leading" spacing with
offset 1), the last step going to alpha_bar[0] (`set_alpha_to_one=False`), eta as given. Every
image's noise (its start and, for eta > 0, every step's) comes from its own CPU generator, and
every U-Net and decoder pass runs on a multiple of `PAD_TO` images (zero padding): on CPU that
makes each image's arithmetic independent of its companions and of the batch size, so the same
image comes out bit for bit in any batch (tested); GPU kernels may still round differently
between batch shapes.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDIMScheduler, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from histosynth.errors import HistosynthError
from histosynth.sampling import derive_seed
from trainer.core.data import TrainingPool, read_training_pool
from trainer.core.loop import (
    batch_record,
    in_memory_format,
    make_accelerator,
    plain_model,
    publish_on_main_process,
    resume_step,
    run_record,
)
from trainer.core.model_folder import model_hash, read_model_info
from trainer.core.options import RunSettings, learning_rate_rule, to_record
from trainer.diffusion.denoising import Denoiser, DenoiserTraining, encode_pool, training_scheduler
from trainer.diffusion.latents import AUTOENCODER_KINDS, LatentCache, load_autoencoder
from trainer.diffusion.options import LDMOptions, ldm_options
from trainer.diffusion.prompt_embedder import PromptEmbedder

logger = logging.getLogger(__name__)

KIND = "ldm"
PAD_TO = 8


class ClassEmbedder(ModelMixin, ConfigMixin):
    """A learned vector per class plus one for the null class, as a one-token context (B, 1, dim)."""

    @register_to_config
    def __init__(self, num_classes: int, embed_dim: int = 512) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes + 1, embed_dim)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels)[:, None, :]


def build_unet(options: LDMOptions, latent_channels: int, latent_size: int) -> UNet2DConditionModel:
    """The CompVis class-conditional U-Net as diffusers blocks: cross-attention at every level."""
    levels = len(options.block_out_channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * levels,
        up_block_types=("CrossAttnUpBlock2D",) * levels,
        block_out_channels=tuple(options.block_out_channels),
        layers_per_block=options.layers_per_block,
        attention_head_dim=tuple(options.attention_heads),  # diffusers reads this as heads per level
        cross_attention_dim=options.class_embed_dim,
        norm_num_groups=options.norm_num_groups,
    )


def ddim_scheduler(train_config: dict[str, Any]) -> DDIMScheduler:
    """DDIM over the training schedule with CompVis' step placement (see the module docstring)."""
    return DDIMScheduler(
        num_train_timesteps=train_config["num_train_timesteps"],
        beta_schedule="scaled_linear",
        beta_start=train_config["beta_start"],
        beta_end=train_config["beta_end"],
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )


@dataclass(frozen=True)
class LDMSettings(RunSettings):
    """How `train_ldm` runs; each field is the CLI option of that name.

    Attributes:
        options: what is trained (`ldm_options`, e.g. `ldm_options("paper", max_steps=100)`);
            default: the tiny preset.
    """

    options: LDMOptions = field(default_factory=ldm_options)


def train_ldm(
    autoencoder: str | Path, data: str | Path, out: str | Path, settings: LDMSettings | None = None
) -> Path:
    """Train a class-conditional latent diffusion model on a pool and save it as a model folder.

    Args:
        autoencoder: a model folder from `train_autoencoder` (KL or VQ); it stays frozen and
            is copied into the model as `vae/`.
        data: the training pool `<pool>/<CLASS>/<image>`; its classes become the labels.
        out: the model folder (`unet/` with EMA weights, `class_embedder/`, `vae/`,
            `scheduler/`, `histosynth.json`, `checkpoints/`).
        settings: the run (`LDMSettings`; default: the tiny preset).

    Returns:
        The model folder.

    Raises:
        HistosynthError: bad pool, settings, autoencoder folder, out folder or resume.
    """
    settings = settings or LDMSettings()
    options, progress = settings.options, settings.progress
    out = Path(out).expanduser()
    autoencoder = Path(autoencoder).expanduser()
    vae, vae_info = load_autoencoder(autoencoder)
    pool = read_training_pool(data, settings.classes, fingerprint=options.fingerprint, progress=progress)
    accelerator = make_accelerator(options)
    cache = encode_pool(
        accelerator, vae, autoencoder, vae_info["kind"], pool, options.size, progress, options.num_workers
    )
    training = _prepare_training(accelerator, cache, pool, options)
    record = run_record(KIND, options, pool, autoencoder_sha256=model_hash(autoencoder))
    start = resume_step(accelerator, out, settings.resume, options, record)
    done = training.train(pool, out, start, record, "train latent diffusion", progress)
    _publish(out, training, pool, autoencoder, vae_info, record, done)
    return out


def _prepare_training(
    accelerator: Accelerator, cache: LatentCache, pool: TrainingPool, options: LDMOptions
) -> DenoiserTraining:
    """A fresh U-Net and class embedder (seeded), AdamW, warm-up and the U-Net's EMA, prepared."""
    torch.manual_seed(derive_seed(options.seed, "ldm-init"))
    denoiser = Denoiser(
        build_unet(options, cache.latent_channels, options.size // 8),
        ClassEmbedder(len(pool.classes), options.class_embed_dim),
    )
    return DenoiserTraining.prepare(
        accelerator,
        denoiser,
        list(denoiser.parameters()),
        training_scheduler(options.num_train_timesteps, options.beta_start, options.beta_end),
        cache,
        scaling_factor=1.0 / cache.std,
        null_class=len(pool.classes),
        seed_name="ldm-step",
        options=options,
        ema_decay=options.ema_decay,
    )


def _publish(
    out: Path,
    training: DenoiserTraining,
    pool: TrainingPool,
    autoencoder: Path,
    vae_info: dict[str, Any],
    record: dict[str, Any],
    done: int,
) -> None:
    """The model folder: the EMA U-Net (as CompVis samples it), the class embedder, the schedule
    and a copy of the autoencoder, sealed by `histosynth.json`."""
    accelerator, options, ema = training.accelerator, training.options, training.ema
    model = plain_model(accelerator, training.denoiser)
    unet_parameters = training.ema_parameters

    def write(staging: Path) -> None:
        ema.store(unet_parameters)
        ema.copy_to(unet_parameters)
        model.unet.save_pretrained(staging / "unet")
        ema.restore(unet_parameters)
        model.embedder.save_pretrained(staging / "class_embedder")
        training.noise_schedule.save_pretrained(staging / "scheduler")
        (staging / "vae").mkdir()
        for name in ("config.json", "diffusion_pytorch_model.safetensors"):
            shutil.copy2(autoencoder / name, staging / "vae" / name)

    publish_on_main_process(
        accelerator,
        out,
        write,
        kind=KIND,
        classes=pool.classes,
        settings={**to_record(options), "effective_learning_rate": training.rate},
        fingerprint=pool.fingerprint,
        steps=done,
        extra={
            "scaling_factor": training.scaling_factor,
            "null_class": training.null_class,
            "autoencoder": {
                "path": str(autoencoder),
                "kind": vae_info["kind"],
                "sha256": record["autoencoder_sha256"],
                "classes": vae_info["classes"],
            },
            **batch_record(training.plan, done, training.rate, learning_rate_rule(options)),
            "latent_cache": str(training.cache.folder),
        },
    )


@dataclass
class LatentDiffusionModel:
    """A trained LDM loaded for sampling: EMA U-Net, class embedder, decoder, schedule, classes.

    The embedder maps labels to the U-Net's context: `ClassEmbedder` for kind `ldm`,
    `trainer.diffusion.prompt_embedder.PromptEmbedder` (fixed prompt embeddings) for kind `sd-finetune`.
    """

    folder: Path
    info: dict[str, Any]
    unet: UNet2DConditionModel
    embedder: ModelMixin
    vae: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def scaling_factor(self) -> float:
        return float(self.info["scaling_factor"])

    @property
    def cond_drop(self) -> float:
        return float(self.info["settings"]["cond_drop"])


# The label -> context module of each kind `load_ldm` samples, and its subfolder.
EMBEDDERS: dict[str, tuple[type[ModelMixin], str]] = {
    KIND: (ClassEmbedder, "class_embedder"),
    "sd-finetune": (PromptEmbedder, "prompt_embeddings"),  # trainer.diffusion.sd_finetune
}


def load_ldm(
    folder: str | Path, device: torch.device, dtype: torch.dtype = torch.float32
) -> LatentDiffusionModel:
    """Load an LDM (or fine-tuned SD) model folder for sampling; the U-Net in `dtype`, the decoder in float32.

    Raises:
        HistosynthError: no `histosynth.json`, another kind of model, or a component missing.
    """
    folder = Path(folder).expanduser()
    info = read_model_info(folder, list(EMBEDDERS))
    kind = info["autoencoder"]["kind"]
    embedder_class, embedder_folder = EMBEDDERS[info["kind"]]
    try:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype)
        embedder = embedder_class.from_pretrained(folder / embedder_folder, torch_dtype=dtype)
        vae = AUTOENCODER_KINDS[kind].from_pretrained(folder / "vae")
    except OSError as error:
        raise HistosynthError(f"{folder}: incomplete model folder ({error})") from error
    unet = unet.to(device).eval().requires_grad_(False)
    embedder = embedder.to(device).eval().requires_grad_(False)
    vae = vae.to(device).eval().requires_grad_(False)
    in_memory_format(device, unet, vae)
    return LatentDiffusionModel(folder, info, unet, embedder, vae, device, dtype)


StepCallback = Callable[[int, torch.Tensor], None]


@torch.no_grad()
def sample_latents(
    model: LatentDiffusionModel,
    labels: Sequence[int],
    generators: Sequence[torch.Generator],
    *,
    steps: int = 200,
    eta: float = 0.0,
    guidance: float = 1.0,
    on_step: StepCallback | None = None,
    pad_to: int = PAD_TO,
) -> torch.Tensor:
    """DDIM-sample latents for `labels`, image b drawing all its noise from `generators[b]` (CPU).

    Args:
        model: the loaded model.
        labels: class index per image.
        generators: one seeded CPU generator per image; its first draw is the image's start
            noise, then one draw per step when eta > 0.
        steps: DDIM steps (the paper: 200).
        eta: 0 is deterministic DDIM; 1 is DDPM-like.
        guidance: classifier-free guidance scale; 1 uses the class alone.
        on_step: called with (step index, predicted x0 in latent space) after each step.
        pad_to: run the U-Net on a multiple of this many images (1: no padding, for timing
            an unpadded baseline; images may then differ between batch sizes by rounding).

    Returns:
        Latents (B, C, h, w) in the autoencoder's scale (divided by the scaling factor).
    """
    scheduler = ddim_scheduler(model.info["settings"])
    scheduler.set_timesteps(steps)
    shape = model.latent_shape
    count = len(generators)
    padding = -count % pad_to

    def draw() -> torch.Tensor:
        noise = [torch.randn(shape, generator=g) for g in generators] + [torch.zeros(shape)] * padding
        return torch.stack(noise).to(model.device, model.dtype)

    sample = draw()
    label_list = list(labels) + [model.embedder.null_class] * padding
    label_tensor = torch.tensor(label_list, device=model.device)
    context = model.embedder(label_tensor)
    if guidance != 1.0:
        null = torch.full_like(label_tensor, model.embedder.null_class)
        context = torch.cat([model.embedder(null), context])
    for index, timestep in enumerate(scheduler.timesteps):
        batch = torch.cat([sample, sample]) if guidance != 1.0 else sample
        eps = model.unet(batch, timestep, encoder_hidden_states=context).sample
        if guidance != 1.0:
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance * (cond - uncond)
        noise = draw() if eta > 0 else None
        result = scheduler.step(eps, timestep, sample, eta=eta, variance_noise=noise)
        sample = result.prev_sample
        if on_step is not None:
            on_step(index, result.pred_original_sample[:count] / model.scaling_factor)
    return sample[:count] / model.scaling_factor


@torch.no_grad()
def decode_images(
    model: LatentDiffusionModel, latents: torch.Tensor, pad_to: int = PAD_TO, chunk: int = 32
) -> np.ndarray:
    """Latents -> (B, H, W, 3) uint8 RGB: the float32 decoder on chunks of at most `chunk` latents,
    each padded to a multiple of `pad_to` (bounded memory at 256 px); [-1, 1] rounded to 0..255."""
    parts = []
    for start in range(0, latents.shape[0], chunk):
        part = latents[start : start + chunk].to(model.device, torch.float32)
        count = part.shape[0]
        padded = torch.cat([part, part.new_zeros((-count % pad_to, *part.shape[1:]))])
        images = model.vae.decode(padded).sample[:count]
        parts.append(((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
    return torch.cat(parts).numpy()
