"""The paper's third generator: Stable Diffusion v1.4 with its U-Net fine-tuned on the tiles.

The base is a local diffusers-format SD v1.4 folder (`unet/`, `vae/`, `text_encoder/`,
`tokenizer/`, `scheduler/`, as `CompVis/stable-diffusion-v1-4` is published); nothing is
downloaded. The autoencoder and the CLIP text encoder stay frozen; only the U-Net trains. Each
class is one prompt, a template with the class name (stored in `histosynth.json`). Because the
text encoder is frozen, the prompts' embeddings are computed once, before training, together
with the empty prompt's, which SD uses as its unconditional input: they are saved as the model's
`prompt_embeddings/` (`trainer.diffusion.prompt_embedder.PromptEmbedder`), so sampling needs neither
transformers nor the text encoder, and `trainer.diffusion.ldm`'s sampler (DDIM with the CompVis step
placement) serves both models: `generate` treats label i as prompt i and the null class as the
empty prompt. The saved U-Net's
`sample_size` is the training size / 8, so `generate` makes tiles of the size it was tuned on
(SD v1.4's own is 512 px; the paper's tiles are 256 px).

Training is the base's own DDPM (SD v1: T = 1000, betas linear in sqrt space from 0.00085 to
0.012, epsilon prediction, as CompVis' v1 configs), the plain MSE loss on the noise, latents
scaled by the VAE's `scaling_factor` (0.18215), the frozen encoder's posterior cached once per
rotation (`trainer.diffusion.latents`). With probability `cond_drop` a prompt is replaced by the empty one,
as SD was trained, so classifier-free guidance stays meaningful. Like CompVis' SD v1 configs
(`use_ema: False`), no EMA is kept. The learning rate follows the other `train` commands: base x
global batch unless `--no-scale-lr`.

transformers is needed for training only: `pip install 'histosynth[sd]'`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from histosynth.errors import HistosynthError
from trainer.core.data import read_training_pool
from trainer.core.loop import (
    batch_record,
    make_accelerator,
    plain_model,
    publish_on_main_process,
    resume_step,
    run_record,
)
from trainer.core.model_folder import model_hash
from trainer.core.options import RunSettings, learning_rate_rule, to_record
from trainer.diffusion.denoising import Denoiser, DenoiserTraining, encode_pool, training_scheduler
from trainer.diffusion.options import SDFinetuneOptions, sd_finetune_options
from trainer.diffusion.prompt_embedder import PromptEmbedder

logger = logging.getLogger(__name__)

KIND = "sd-finetune"
EXTRA = "sd"
COPIED = ("vae", "text_encoder", "tokenizer", "scheduler")


def check_base(base: str | Path) -> Path:
    """Check that `base` is a complete diffusers SD folder, naming everything absent at once.

    Raises:
        HistosynthError: the folder is missing, or lacks any of unet, vae, text_encoder,
            tokenizer, scheduler (or their config or weights files).
    """
    base = Path(base).expanduser()
    if not base.is_dir():
        raise HistosynthError(
            f"--base {base}: not a folder; give a local diffusers copy of Stable Diffusion v1.4 "
            "(unet/, vae/, text_encoder/, tokenizer/, scheduler/); nothing is downloaded"
        )

    def has(folder: str, *patterns: str) -> bool:
        return any(any((base / folder).glob(pattern)) for pattern in patterns)

    needs = {
        "unet": ("config.json", ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")),
        "vae": ("config.json", ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")),
        "text_encoder": ("config.json", ("model*.safetensors", "pytorch_model*.bin")),
        "tokenizer": (None, ("vocab.json", "tokenizer.json")),
        "scheduler": ("scheduler_config.json", ()),
    }
    absent = []
    for folder, (config, weights) in needs.items():
        if not (base / folder).is_dir():
            absent.append(f"{folder}/")
        elif config is not None and not (base / folder / config).is_file():
            absent.append(f"{folder}/{config}")
        elif weights and not has(folder, *weights):
            absent.append(f"{folder}/{' or '.join(weights)}")
    if absent:
        raise HistosynthError(
            f"--base {base}: not a complete Stable Diffusion folder; absent: {', '.join(absent)} "
            "(the diffusers layout of CompVis/stable-diffusion-v1-4)"
        )
    return base


def base_schedule(base: Path) -> dict[str, Any]:
    """The base's training schedule, as `trainer.diffusion.denoising.training_scheduler` takes it.

    Raises:
        HistosynthError: a schedule other than SD's (scaled_linear betas, epsilon prediction).
    """
    path = base / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key, expected in (("beta_schedule", "scaled_linear"), ("prediction_type", "epsilon")):
        if config.get(key, expected) != expected:
            raise HistosynthError(f"{path}: {key} {config[key]!r}; SD v1 fine-tuning expects {expected!r}")
    return {
        "num_train_timesteps": int(config.get("num_train_timesteps", 1000)),
        "beta_start": float(config.get("beta_start", 0.00085)),
        "beta_end": float(config.get("beta_end", 0.012)),
    }


@torch.no_grad()
def embed_prompts(base: Path, prompts: list[str]) -> PromptEmbedder:
    """Run the frozen CLIP text encoder once over `prompts` and the empty prompt.

    Raises:
        HistosynthError: transformers is not installed (it comes with `histosynth[sd]`).
    """
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as error:
        raise HistosynthError(
            f"train sd-finetune needs transformers for the text encoder: pip install 'histosynth[{EXTRA}]'"
        ) from error
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(base / "text_encoder").eval()
    ids = tokenizer(
        [*prompts, ""],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    hidden = encoder(ids)[0].float()  # the last hidden state, as StableDiffusionPipeline.encode_prompt
    embedder = PromptEmbedder(len(prompts), hidden.shape[1], hidden.shape[2], tuple(prompts))
    embedder.embeddings.copy_(hidden)
    return embedder.eval()


def class_prompts(template: str, classes: list[str]) -> list[str]:
    """One prompt per class from the template.

    Raises:
        HistosynthError: the template lacks `{class_name}`, so every class would get one prompt.
    """
    if "{class_name}" not in template:
        raise HistosynthError(f"--prompt-template {template!r}: must contain {{class_name}}")
    return [template.replace("{class_name}", name) for name in classes]


@dataclass(frozen=True)
class SDFinetuneSettings(RunSettings):
    """How `train_sd_finetune` runs; each field is the CLI option of that name.

    Attributes:
        options: what is trained (`sd_finetune_options`, e.g. `sd_finetune_options("paper", max_steps=100)`);
            default: the tiny preset.
    """

    options: SDFinetuneOptions = field(default_factory=sd_finetune_options)


def train_sd_finetune(
    base: str | Path, data: str | Path, out: str | Path, settings: SDFinetuneSettings | None = None
) -> Path:
    """Fine-tune the U-Net of a local Stable Diffusion v1.4 folder on a pool, one prompt per class.

    Args:
        base: a diffusers SD folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
            `scheduler/`); read only.
        data: the training pool `<pool>/<CLASS>/<image>`; its classes become the prompts.
        out: the model folder: the fine-tuned `unet/`, `prompt_embeddings/`, copies of the
            base's `vae/`, `text_encoder/`, `tokenizer/` and `scheduler/`, `histosynth.json`,
            `checkpoints/`.
        settings: the run (`SDFinetuneSettings`; default: the tiny preset).

    Returns:
        The model folder.

    Raises:
        HistosynthError: `base` missing or incomplete (everything absent is listed), bad pool,
            settings, out folder or resume, or transformers not installed.
    """
    settings = settings or SDFinetuneSettings()
    options, progress = settings.options, settings.progress
    base = check_base(base)
    out = Path(out).expanduser()
    pool = read_training_pool(data, settings.classes, fingerprint=options.fingerprint, progress=progress)
    prompts = class_prompts(options.prompt_template, pool.classes)
    schedule = base_schedule(base)
    embedder = embed_prompts(base, prompts)
    vae = AutoencoderKL.from_pretrained(base / "vae").eval().requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    accelerator = make_accelerator(options)
    cache = encode_pool(
        accelerator, vae, base / "vae", "kl-autoencoder", pool, options.size, progress, options.num_workers
    )
    training = DenoiserTraining.prepare(
        accelerator,
        Denoiser(unet, embedder),
        list(unet.parameters()),  # the prompt embeddings stay CLIP's
        training_scheduler(**schedule),
        cache,
        scaling_factor=float(vae.config.scaling_factor),
        null_class=len(pool.classes),
        seed_name="sd-step",
        options=options,
    )
    record = run_record(KIND, options, pool, base={"path": str(base), "vae_sha256": model_hash(base / "vae")})
    start = resume_step(accelerator, out, settings.resume, options, record)
    done = training.train(pool, out, start, record, "fine-tune stable diffusion", progress)
    model = plain_model(accelerator, training.denoiser)

    def write(staging: Path) -> None:
        model.unet.register_to_config(sample_size=options.size // 8)  # generate at the trained size
        model.unet.save_pretrained(staging / "unet")
        model.embedder.save_pretrained(staging / "prompt_embeddings")
        for name in COPIED:
            shutil.copytree(base / name, staging / name)

    publish_on_main_process(
        accelerator,
        out,
        write,
        kind=KIND,
        classes=pool.classes,
        settings={**to_record(options), **schedule, "effective_learning_rate": training.rate},
        fingerprint=pool.fingerprint,
        steps=done,
        extra={
            "prompts": dict(zip(pool.classes, prompts, strict=True)),
            "scaling_factor": training.scaling_factor,
            "null_class": training.null_class,
            "autoencoder": {"kind": "kl-autoencoder", "sha256": record["base"]["vae_sha256"]},
            "base": str(base),
            **batch_record(training.plan, done, training.rate, learning_rate_rule(options)),
            "latent_cache": str(training.cache.folder),
        },
    )
    return out
