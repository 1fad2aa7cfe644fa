"""The LPIPS perceptual loss (VGG16), built without a download.

The `lpips` package ships its learned linear layers (`weights/v0.1/vgg.pth`) but takes the VGG16
ImageNet backbone from torchvision, which would download it. We build LPIPS with a random
backbone and load the backbone from a local file instead: `--perceptual-weights PATH`, or
torchvision's own cache file `$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth` (torch's hub
folder, `~/.cache/torch` by default). When neither exists the error names the file and where
it goes; `--no-perceptual` trains without LPIPS.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from histosynth.errors import HistosynthError

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"


def vgg16_weights_path(explicit: str | Path | None = None) -> Path:
    """The VGG16 ImageNet state dict to use: `explicit`, else torch's hub cache file.

    Raises:
        HistosynthError: the file does not exist; the message says which file and where.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise HistosynthError(f"--perceptual-weights {path}: no such file (torchvision's {VGG16_FILE})")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
    if not path.is_file():
        raise HistosynthError(
            f"LPIPS needs torchvision's VGG16 ImageNet weights {VGG16_FILE} ({VGG16_URL}): put it at {path} "
            "or pass --perceptual-weights PATH, or train with --no-perceptual"
        )
    return path


def load_lpips(weights: str | Path | None = None) -> torch.nn.Module:
    """LPIPS-VGG with the package's linear layers and the VGG16 backbone read from disk, frozen.

    Args:
        weights: a torchvision VGG16 state dict (`features.*` keys; `classifier.*` ignored);
            None looks in torch's hub cache (see `vgg16_weights_path`).

    Returns:
        An `lpips.LPIPS` module in eval mode taking images in [-1, 1] and returning
        (B, 1, 1, 1) distances.

    Raises:
        HistosynthError: the file is missing or is not a VGG16 state dict.
    """
    import lpips

    path = vgg16_weights_path(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's note on `pretrained=False`
        model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise HistosynthError(f"{path}: cannot read a VGG16 state dict ({error})") from error
    backbone = {}
    for name in model.net.state_dict():  # slice<k>.<index>.<weight|bias> <- features.<index>.<...>
        key = "features." + name.split(".", 1)[1]
        if key not in state:
            raise HistosynthError(f"{path}: not torchvision's VGG16 state dict (no {key})")
        backbone[name] = state[key]
    try:
        model.net.load_state_dict(backbone)
    except RuntimeError as error:
        raise HistosynthError(f"{path}: VGG16 weights of the wrong shape ({error})") from error
    model.eval().requires_grad_(False)
    return model
