"""`train sd-finetune`: a tiny Stable Diffusion folder built from configs (CLIP text model, a CLIP tokenizer
from a vocabulary and merges written here, U-Net, KL VAE, SD's scheduler) fine-tunes a few steps through the
CLI and generates a pool; the prompt embeddings against the text encoder run by hand; a missing or incomplete
`--base` lists what is absent; the modules that do not train SD import without transformers."""

from __future__ import annotations

import json
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file

from histosynth.errors import HistosynthError
from histosynth.pools import read_manifest
from trainer.core.model_folder import read_model_info
from trainer.diffusion.options import sd_finetune_options
from trainer.diffusion.prompt_embedder import PromptEmbedder
from trainer.diffusion.sd_finetune import SDFinetuneSettings, check_base
from trainer.generate import generate_pool

transformers = pytest.importorskip("transformers", reason="the sd extra (transformers) is not installed")

TOKENS = 32
WIDTH = 32
MERGES = ["i s", "t i", "s s", "ti ss", "u e</w>"]


def write_tokenizer(folder: Path) -> None:
    """A CLIP BPE vocabulary over printable ASCII (with and without the word-end mark) and a few merges."""
    folder.mkdir(parents=True)
    chars = [c for c in string.printable if not c.isspace()]
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in MERGES]
    vocab = {token: index for index, token in enumerate([*tokens, "<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": TOKENS}), encoding="utf-8")


@pytest.fixture(scope="module")
def sd_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers SD v1 layout at toy size: every component real, weights random."""
    base = tmp_path_factory.mktemp("sd-base")
    write_tokenizer(base / "tokenizer")
    vocab_size = len(json.loads((base / "tokenizer" / "vocab.json").read_text(encoding="utf-8")))
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENS,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    transformers.CLIPTextModel(config).save_pretrained(base / "text_encoder")
    UNet2DConditionModel(
        sample_size=8,  # SD v1.4: 64 latents (512 px), tuned on smaller tiles (32 px here, 256 in the paper)
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        cross_attention_dim=WIDTH,
        norm_num_groups=8,
    ).save_pretrained(base / "unet")
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).save_pretrained(base / "vae")
    PNDMScheduler(  # CompVis/stable-diffusion-v1-4's scheduler_config.json
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    ).save_pretrained(base / "scheduler")
    return base


def test_finetune_through_the_cli_then_generate(sd_base: Path, make_tiles, cli, tmp_path: Path) -> None:
    pool = make_tiles(classes=("ADI", "TUM"), per_class=2)
    out = tmp_path / "sd"
    args = ["train", "sd-finetune", "--base", sd_base, "--data", pool, "--out", out, "--preset", "tiny"]
    done = cli(
        *args, "--max-steps", "2", "--batch-size", "2", "--prompt-template", "an image of {class_name} tissue"
    )
    assert done.returncode == 0, done.stderr
    info = read_model_info(out, ["sd-finetune"])
    assert info["prompts"] == {"ADI": "an image of ADI tissue", "TUM": "an image of TUM tissue"}
    assert info["steps"] == 2 and info["scaling_factor"] == pytest.approx(0.18215)
    assert (info["settings"]["beta_start"], info["settings"]["beta_end"]) == (0.00085, 0.012)

    tokenizer = transformers.CLIPTokenizer.from_pretrained(sd_base / "tokenizer")
    encoder = transformers.CLIPTextModel.from_pretrained(sd_base / "text_encoder")
    ids = tokenizer(
        ["an image of TUM tissue", ""],
        padding="max_length",
        max_length=TOKENS,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    stored = PromptEmbedder.from_pretrained(out / "prompt_embeddings")
    with torch.no_grad():
        by_hand = encoder(input_ids=ids).last_hidden_state
        # label 1 = TUM, 2 = the empty prompt
        assert torch.allclose(stored(torch.tensor([1, 2])), by_hand, atol=1e-6)

    base_unet, tuned = (
        load_file(sd_base / "unet" / "diffusion_pytorch_model.safetensors"),
        load_file(out / "unet" / "diffusion_pytorch_model.safetensors"),
    )
    assert any(not torch.equal(base_unet[key], tuned[key]) for key in base_unet)  # the U-Net trained
    for name in ("vae", "text_encoder"):  # frozen: copied byte for byte
        for path in (sd_base / name).iterdir():
            assert (out / name / path.name).read_bytes() == path.read_bytes(), path

    pool_out = generate_pool(out, tmp_path / "generated", 2, steps=3, guidance=2.0, batch_size=3, seed=1)
    manifest = read_manifest(pool_out)
    assert Image.open(pool_out / "ADI" / "000000.png").size == (32, 32)  # the tuned size, not the base's
    assert sorted(manifest["files"]) == [
        "ADI/000000.png",
        "ADI/000001.png",
        "TUM/000000.png",
        "TUM/000001.png",
    ]
    again = generate_pool(
        out, tmp_path / "again", 2, classes=["TUM"], steps=3, guidance=2.0, batch_size=1, seed=1
    )
    assert (again / "TUM" / "000001.png").read_bytes() == (pool_out / "TUM" / "000001.png").read_bytes()


def test_a_missing_or_incomplete_base_lists_what_is_absent(sd_base: Path, make_tiles, tmp_path: Path) -> None:
    from trainer.diffusion.sd_finetune import train_sd_finetune

    pool = make_tiles()
    with pytest.raises(HistosynthError, match="not a folder"):
        train_sd_finetune(
            tmp_path / "nowhere", pool, tmp_path / "out", SDFinetuneSettings(sd_finetune_options())
        )
    partial = tmp_path / "partial"
    shutil.copytree(sd_base / "unet", partial / "unet")
    (partial / "tokenizer").mkdir()
    (partial / "scheduler").mkdir()
    with pytest.raises(HistosynthError) as error:
        train_sd_finetune(partial, pool, tmp_path / "out", SDFinetuneSettings(sd_finetune_options()))
    assert (
        "absent: vae/, text_encoder/, tokenizer/vocab.json or tokenizer.json, scheduler/scheduler_config.json"
        in (str(error.value))
    )
    assert check_base(sd_base) == sd_base and not (tmp_path / "out").exists()


def test_without_transformers_everything_imports_and_training_sd_names_the_extra() -> None:
    """diffusers imports transformers when it is installed, so it is hidden here (as if not installed)."""
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import histosynth.cli, trainer.generate, trainer.diffusion.ldm\n"
        "import trainer.autoencoder.train, trainer.compvis.importer\n"
        "from pathlib import Path\n"
        "from histosynth.errors import HistosynthError\n"
        "from trainer.diffusion.sd_finetune import embed_prompts\n"
        "try:\n    embed_prompts(Path('.'), ['x'])\n"
        "except HistosynthError as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "needs transformers for the text encoder: pip install 'histosynth[sd]'" in done.stdout
