"""Speed of latent-diffusion sampling (and, on a GPU, training steps), against baselines in the same run.

1. Sampling: `trainer.diffusion.ldm.sample_latents` + `decode_images` in batches of `--batch-size` against a
   one-image-at-a-time loop of the same model (no padding, one image per U-Net pass), as
   images per second and their ratio. The model is an untrained LDM of the chosen preset built
   from its configuration (random weights cost the same as trained ones): `tiny` for the CPU,
   `paper` for the paper's KLF8-DM (KL-f8 at 256 px, the cin-ldm U-Net at 32 x 32 x 4).
2. With `--device cuda --preset paper`: seconds per image at 200 DDIM steps in fp16/bf16 against
   the paper's 0.7 s per image (RTX A6000), and one LDM training step at the paper's batch size
   (64) and one KL-f8 autoencoder step at its batch size (10, L1 + LPIPS-sized VGG16 +
   discriminator): steps per second and peak GPU memory.

Run:
  .venv/bin/python benchmarks/generate_speed.py                       # CPU, tiny
  .venv/bin/python benchmarks/generate_speed.py --device cuda --preset paper --precision fp16 \\
      --batch-size 128 --images 256 --single-images 2 --steps 200 --repeats 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

PAPER_SECONDS_PER_IMAGE = 0.7  # Niehues et al. 2024, two RTX A6000, 200 DDIM steps


def build_ldm_folder(folder: Path, preset: str) -> Path:
    """An untrained LDM model folder of `preset`, laid out exactly as `train ldm` writes one."""
    from trainer.autoencoder.model import build_autoencoder
    from trainer.autoencoder.options import autoencoder_options
    from trainer.core.model_folder import write_model_info
    from trainer.core.options import to_record
    from trainer.diffusion.denoising import training_scheduler
    from trainer.diffusion.ldm import ClassEmbedder, build_unet
    from trainer.diffusion.options import ldm_options

    torch.manual_seed(0)
    autoencoder_options = autoencoder_options("kl", preset)
    options = ldm_options(preset)
    classes = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
    build_autoencoder(autoencoder_options).save_pretrained(folder / "vae")
    build_unet(options, 4, options.size // 8).save_pretrained(folder / "unet")
    ClassEmbedder(len(classes), options.class_embed_dim).save_pretrained(folder / "class_embedder")
    training_scheduler(options.num_train_timesteps, options.beta_start, options.beta_end).save_pretrained(
        folder / "scheduler"
    )
    write_model_info(
        folder,
        kind="ldm",
        classes=classes,
        settings=to_record(options),
        fingerprint={},
        steps=0,
        extra={"scaling_factor": 1.0, "null_class": len(classes), "autoencoder": {"kind": "kl-autoencoder"}},
    )
    return folder


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(model, count: int, batch: int, steps: int, pad_to: int) -> float:
    from trainer.diffusion.ldm import decode_images, sample_latents

    synchronize(model.device)
    start = time.perf_counter()
    for first in range(0, count, batch):
        size = min(batch, count - first)
        generators = [torch.Generator().manual_seed(first + k) for k in range(size)]
        latents = sample_latents(model, [k % 9 for k in range(size)], generators, steps=steps, pad_to=pad_to)
        decode_images(model, latents, pad_to=pad_to)
    synchronize(model.device)
    return count / (time.perf_counter() - start)


def bench_sampling(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    from trainer.diffusion.ldm import PAD_TO, load_ldm

    with tempfile.TemporaryDirectory() as scratch:
        model = load_ldm(build_ldm_folder(Path(scratch), args.preset), device, dtype)
        images_per_second(model, min(args.batch_size, 8), args.batch_size, 2, PAD_TO)  # warm-up
        batched_rates, single_rates = [], []
        for _ in range(args.repeats):  # interleaved, best of each: the machine may be shared
            batched_rates.append(images_per_second(model, args.images, args.batch_size, args.steps, PAD_TO))
            single_rates.append(images_per_second(model, args.single_images, 1, args.steps, 1))
        batched, single = max(batched_rates), max(single_rates)
    print(
        f"[sampling {args.preset}, {device.type} {args.precision}, {args.steps} DDIM steps, "
        f"best of {args.repeats}] "
        f"batched ({args.batch_size}/pass, {args.images} images): {batched:.2f} img/s  "
        f"one at a time ({args.single_images} images): {single:.2f} img/s  ratio {batched / single:.1f}x"
    )
    if args.preset == "paper":
        seconds = 1 / batched
        print(
            f"[paper comparison] {seconds:.3f} s per image vs the paper's {PAPER_SECONDS_PER_IMAGE} s "
            f"(RTX A6000): {PAPER_SECONDS_PER_IMAGE / seconds:.1f}x faster"
        )


def bench_ldm_training(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    """One LDM optimizer step at the paper's batch size (64), as in `train ldm`."""
    from trainer.diffusion.ldm import build_unet
    from trainer.diffusion.options import ldm_options

    options = ldm_options(args.preset)
    unet = build_unet(options, 4, options.size // 8).to(device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    latents = torch.randn(options.batch_size, 4, options.size // 8, options.size // 8, device=device)
    context = torch.randn(options.batch_size, 1, options.class_embed_dim, device=device)
    timesteps = torch.randint(0, 1000, (options.batch_size,), device=device)

    def ldm_step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = torch.nn.functional.mse_loss(
                unet(latents, timesteps, encoder_hidden_states=context).sample, latents
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    report("LDM", options.batch_size, ldm_step, args.train_steps, device)


def bench_autoencoder_training(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    """One KL-f8 step at the paper's batch size: L1 + LPIPS (random VGG16, same cost) + discriminator."""
    import lpips

    from trainer.autoencoder.discriminator import PatchDiscriminator, hinge_loss
    from trainer.autoencoder.model import build_autoencoder
    from trainer.autoencoder.options import autoencoder_options
    from trainer.autoencoder.train import Reconstruction

    ae_options = autoencoder_options("kl", args.preset)
    model = Reconstruction(build_autoencoder(ae_options)).to(device)
    discriminator = PatchDiscriminator(3, ae_options.disc_channels, ae_options.disc_layers).to(device)
    perceptual = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).to(device).eval().requires_grad_(False)
    ae_optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.9))
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
    images = torch.rand(ae_options.batch_size, 3, ae_options.size, ae_options.size, device=device) * 2 - 1

    def ae_step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            reconstruction, kl = model(images)
            loss = (torch.abs(images - reconstruction) + perceptual(images, reconstruction)).sum() / len(
                images
            )
            loss = loss + 1e-6 * kl - 0.5 * discriminator(reconstruction).mean()
        ae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ae_optimizer.step()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            d_loss = hinge_loss(discriminator(images), discriminator(reconstruction.detach()))
        d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        d_optimizer.step()

    report("KL-f8 autoencoder", ae_options.batch_size, ae_step, args.train_steps, device)


def report(name: str, batch: int, step, count: int, device: torch.device) -> None:
    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    synchronize(device)
    rate = count / (time.perf_counter() - start)
    memory = (
        f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB peak" if device.type == "cuda" else ""
    )
    print(f"[training {name}, batch {batch}] {rate:.2f} steps/s ({rate * batch:.1f} images/s) {memory}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=("tiny", "paper"), default="tiny")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--single-images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=5, help="training steps timed (GPU paper mode)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    bench_sampling(args, device, dtype)
    if device.type == "cuda" or args.train_steps and args.preset == "tiny":
        bench_ldm_training(args, device, dtype)
        bench_autoencoder_training(args, device, dtype)


if __name__ == "__main__":
    main()
