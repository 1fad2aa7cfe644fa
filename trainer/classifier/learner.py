"""One classifier run: fastai `vision_learner` (ResNet34), one-cycle, the best validation loss kept.

The learner trains on stain-normalised tiles (`trainer.classifier.stain`, read from the cache), scaled by
ImageNet's mean and standard deviation, with random 90-degree rotations as the only
augmentation (drawn per (seed, epoch, position) by `trainer.core.data.rotation`, the generators'
rule). fastai's `fit_one_cycle` runs Adam (fastai's, with its decoupled weight decay of 0.01)
at the preset's maximal rate; fastai's `SaveModelCallback(monitor="valid_loss")` saves the
weights whenever the validation loss improves and loads the best at the end, so those are the
weights tested and saved.

ImageNet weights are never downloaded: torchvision's file (`resnet34-b627a593.pth`) is read from
`--pretrained PATH` or torch's hub cache (`$TORCH_HOME/hub/checkpoints/`); `--pretrained none`
trains from scratch. Mixed precision uses fastai's `to_fp16()` (or `to_bf16()`); several GPUs
go through `learn.distrib_ctx()`, fastai's accelerate integration, under `accelerate launch`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from histosynth.errors import HistosynthError
from histosynth.files import atomic_write_text
from histosynth.progress import progress_bar, progress_enabled
from histosynth.sampling import derive_seed
from trainer.classifier.options import ClassifierOptions
from trainer.classifier.stain import load_prepared
from trainer.core.data import rotation
from trainer.core.loop import memory_format

with warnings.catch_warnings():
    # fastai.layers compiles two activations with torch.jit.script at import, which torch deprecates.
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    from fastai.callback.core import Callback

logger = logging.getLogger(__name__)

# torchvision's ImageNet (V1) weight files, as `torch.hub` caches them.
WEIGHT_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
}
# Bodies that only train from scratch: fastai's XResNet18 at a quarter of its widths (0.9M weights
# against ResNet18's 11.7M), so that the tiny preset's fits take a fifth of the time on a CPU and
# its files a thirteenth of the disk.
SCRATCH_ARCHITECTURES = {"xresnet18_narrow": {"widen": 0.25}}
ARCHITECTURES = (*WEIGHT_FILES, *SCRATCH_ARCHITECTURES)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
BEST_NAME = "best"  # SaveModelCallback's file of the best weights, `<learner path>/models/best.pth`


def pretrained_weights(arch: str, pretrained: str | Path | None) -> Path | None:
    """The ImageNet state dict to start from, or None for `--pretrained none` and for a body
    that trains from scratch.

    Args:
        arch: one of `ARCHITECTURES`.
        pretrained: a file, `none`, or None for torch's hub cache.

    Raises:
        HistosynthError: the file is missing (the message names it and where it goes), or the
            body has no ImageNet weights to read.
    """
    architecture(arch)
    if pretrained is not None and str(pretrained).lower() == "none":
        return None
    if arch in SCRATCH_ARCHITECTURES:
        if pretrained is not None:
            raise HistosynthError(
                f"--pretrained {pretrained}: {arch} has no ImageNet weights (it trains from scratch); "
                f"for weights, pass --arch {' or '.join(WEIGHT_FILES)}"
            )
        return None
    name = WEIGHT_FILES[arch]
    if pretrained is not None:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise HistosynthError(f"--pretrained {path}: no such file (torchvision's {name})")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not path.is_file():
        raise HistosynthError(
            f"the classifier starts from torchvision's ImageNet weights {name} "
            f"(https://download.pytorch.org/models/{name}): put it at {path}, "
            "or pass --pretrained PATH, or --pretrained none to train from scratch"
        )
    return path


class TileArrays(torch.utils.data.Dataset):
    """Cached tiles as ImageNet-scaled (3, size, size) float32 tensors with their labels."""

    def __init__(self, items: Sequence[tuple[Path, int]]) -> None:
        self.items = list(items)
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        image = torch.from_numpy(load_prepared(path)).permute(2, 0, 1).float() / 255.0
        return (image - self.mean) / self.std, label


def architecture(arch: str) -> Callable[..., torch.nn.Module]:
    """The model factory of `arch`, as fastai's `vision_learner` takes it (`pretrained=` keyword).

    Raises:
        HistosynthError: `arch` is none of `ARCHITECTURES`.
    """
    if arch in SCRATCH_ARCHITECTURES:
        from fastai.vision.models.xresnet import xresnet18

        return functools.partial(xresnet18, **SCRATCH_ARCHITECTURES[arch])
    if arch in WEIGHT_FILES:
        import torchvision

        return getattr(torchvision.models, arch)
    raise HistosynthError(f"--arch {arch!r}: expected one of {', '.join(ARCHITECTURES)}")


def build_model(arch: str, num_classes: int) -> torch.nn.Module:
    """fastai's vision model (the body cut before pooling, fastai's head), untrained."""
    from fastai.vision.learner import create_vision_model

    return create_vision_model(architecture(arch), num_classes, pretrained=False)


def load_body_weights(model: torch.nn.Module, arch: str, path: Path) -> None:
    """Put torchvision's ImageNet weights from `path` into the model's body (`model[0]`).

    Raises:
        HistosynthError: the file is not that architecture's torchvision state dict.
    """
    import torchvision

    reference = getattr(torchvision.models, arch)(weights=None)
    try:
        reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:
        message = f"--pretrained {path}: not torchvision's {arch} state dict ({error})"
        raise HistosynthError(message) from error
    body = torch.nn.Sequential(*list(reference.children())[:-2])
    model[0].load_state_dict(body.state_dict())


@dataclass(frozen=True)
class FitRecord:
    """What a run's training did: losses per epoch and which epoch's weights were kept.

    `best_epoch` is None for a fit stopped (`max_steps`) before its first validation, which
    keeps its last weights.
    """

    train_losses: list[float]
    valid_losses: list[float]
    best_epoch: int | None
    steps: int


def build_learner(
    train: Sequence[tuple[Path, int]],
    valid: Sequence[tuple[Path, int]],
    num_classes: int,
    options: ClassifierOptions,
    weights: Path | None,
    folder: Path,
):
    """A fastai `vision_learner` over the cached tiles, with the run's seed set first.

    Args:
        train: (cached tile, label) pairs to train on.
        valid: the held-out pairs whose loss picks the checkpoint.
        num_classes: outputs of the head.
        options: batch size, architecture, precision, workers, seed.
        weights: ImageNet weights for the body (`pretrained_weights`), or None.
        folder: where fastai writes the best checkpoint (`models/best.pth`).

    Returns:
        The `fastai.learner.Learner`.
    """
    import fastai.callback.channelslast  # noqa: F401  (adds Learner.to_channelslast)
    import fastai.callback.fp16  # noqa: F401  (adds Learner.to_fp16 and to_bf16)
    from fastai.callback.progress import ProgressCallback
    from fastai.data.core import DataLoaders
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy
    from fastai.torch_core import default_device, set_seed
    from fastai.vision.learner import vision_learner

    set_seed(derive_seed(options.seed, "classifier-init") % 2**32, reproducible=True)
    dls = DataLoaders.from_dsets(
        TileArrays(train),
        TileArrays(valid),
        bs=options.batch_size,
        device=default_device(),
        num_workers=options.num_workers,
        path=folder,
    )
    learn = vision_learner(
        dls,
        architecture(options.arch),
        normalize=False,  # TileArrays scales by ImageNet's statistics itself
        n_out=num_classes,
        pretrained=False,  # ImageNet weights come from a local file, never a download
        loss_func=CrossEntropyLossFlat(),
        metrics=accuracy,
        path=folder,
    )
    if weights is not None:
        load_body_weights(learn.model, options.arch, weights)
        if options.freeze_body:
            learn.freeze()
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda row: logger.debug("epoch %s", row)
    learn.add_cb(QuarterTurns(options.seed))
    precision = options.mixed_precision
    if precision == "auto":
        precision = "fp16" if torch.cuda.is_available() else "no"
    if precision == "fp16":
        learn.to_fp16()
    elif precision == "bf16":
        learn.to_bf16()
    if memory_format(dls.device) is torch.channels_last:  # the ResNet's convolutions in NHWC on a GPU
        learn.to_channelslast(use_amp=False)  # the precision is set above
    return learn


def best_weights_path(learn) -> Path:
    """Where `fit_best`'s `SaveModelCallback` keeps the best weights of a learner."""
    return Path(learn.path) / learn.model_dir / f"{BEST_NAME}.pth"


def fit_best(
    learn,
    options: ClassifierOptions,
    *,
    description: str,
    progress: bool | None = None,
    cbs: Sequence[Callback] = (),
) -> FitRecord:
    """`fit_one_cycle` for the options' epochs; the learner ends with the best-validation-loss weights.

    Args:
        learn: from `build_learner` (callbacks the caller added run too).
        options: epochs and the maximal learning rate.
        description: the progress bar's label.
        progress: show a progress bar (None: when stderr is a terminal).
        cbs: callbacks of this fit only, such as `trainer.classifier.resume.Checkpoints`.

    Returns:
        Losses per epoch and the epoch (0-based) whose weights the learner now holds.
    """
    import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
    import fastai.distributed  # noqa: F401  (adds Learner.distrib_ctx)
    from fastai.callback.tracker import SaveModelCallback

    bar = StepBar(progress, description)
    # fastai prints "Better model found ..." on stdout; stdout stays the user's.
    with contextlib.redirect_stdout(io.StringIO()), learn.distrib_ctx():
        learn.fit_one_cycle(
            options.epochs,
            lr_max=options.learning_rate,
            cbs=[SaveModelCallback(monitor="valid_loss", fname=BEST_NAME), bar, *cbs],
        )
    values = [list(map(float, row)) for row in learn.recorder.values]
    valid_losses = [row[1] for row in values]
    finite = [loss if math.isfinite(loss) else math.inf for loss in valid_losses]
    return FitRecord(
        train_losses=[row[0] for row in values],
        valid_losses=valid_losses,
        best_epoch=int(np.argmin(finite)) if finite else None,
        steps=int(learn.train_iter),
    )


def predict(model: torch.nn.Module, files: Sequence[Path], batch_size: int) -> np.ndarray:
    """Predicted labels of cached tiles (eval mode, no augmentation), on the model's device."""
    device = next(model.parameters()).device
    dataset = TileArrays([(path, 0) for path in files])
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    model.eval()
    labels = []
    with torch.no_grad():
        for images, _ in loader:
            labels.append(model(images.to(device)).float().argmax(dim=1).cpu().numpy())
    return np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)


def save_classifier(folder: Path, model: torch.nn.Module, config: dict[str, object]) -> None:
    """Write the weights (safetensors) and the config that rebuilds the model into `folder`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".weights-", suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
    save_file(state, str(temporary))
    temporary.replace(folder / WEIGHTS_NAME)
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")


def load_classifier(folder: str | Path) -> tuple[torch.nn.Module, dict[str, object]]:
    """Rebuild a saved classifier: the model in eval mode on the CPU, and its config.

    Raises:
        HistosynthError: the folder lacks the config or the weights.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise HistosynthError(f"{folder / name}: missing, so {folder} is not a classifier folder")
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    model = build_model(str(config["arch"]), len(config["classes"]))
    model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    return model.eval(), config


class QuarterTurns(Callback):
    """Rotate each training image by 0-3 quarter turns, seeded per (seed, epoch, position)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def before_batch(self) -> None:
        if not self.training:
            return
        images = self.learn.xb[0]
        start = self.iter * images.shape[0]
        turns = [rotation(self.seed, self.epoch, start + offset) for offset in range(images.shape[0])]
        pairs = zip(images, turns, strict=True)
        turned = torch.stack([torch.rot90(image, k, dims=(1, 2)) for image, k in pairs])
        self.learn.xb = (turned, *self.learn.xb[1:])


class StepBar(Callback):
    """The histosynth progress bar over a fit's training batches, with the loss."""

    order = 61

    def __init__(self, progress: bool | None, description: str) -> None:
        self.progress, self.description = progress, description

    def before_fit(self) -> None:
        self.bar = progress_bar(progress_enabled(self.progress), fields=("loss",), transient=False)
        self.bar.start()
        total = self.n_epoch * len(self.dls.train)
        self.task = self.bar.add_task(self.description, total=total, loss=math.nan)

    def after_batch(self) -> None:
        if self.training:
            self.bar.update(self.task, advance=1, loss=float(self.smooth_loss))

    def after_fit(self) -> None:
        self.bar.stop()
