"""Per-frame features from a folder of frames with a ResNet-50 frame encoder (torchvision), as ColonTCN uses.

Frames are read in name order (PNG/JPG/BMP), sampled from ``source_fps`` down to ``fps``, resized (shorter side 256,
centre crop 224), ImageNet-normalised, and encoded to the 2048-d pooled ResNet-50 features. The encoder's weights come
from a file you give (``torch.load(weights_only=True)``; a torchvision ResNet-50 state_dict, optionally with the ``fc``
layer); without one the encoder is randomly initialised, which is only useful for testing the pipeline.

Imports: torchvision (ResNet-50 and its transforms) and Pillow (image reading), both runtime dependencies of
convsuite (pyproject.toml); they are imported only by this command, and a missing one is a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared_backbones.checkpoint import read_torch_file
from shared_backbones.cliutil import atomic_output, progress
from shared_backbones.errors import InputError, ModelFileError

FRAME_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg"}


def _require(module: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise InputError(f"'medseg phases extract' needs {package} (pip install {package})")


def frame_encoder(weights: str | Path | None = None) -> torch.nn.Module:
    """ResNet-50 without its classifier (outputs [N, 2048])."""
    _require("torchvision", "torchvision")
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    if weights is not None:
        sd = read_torch_file(weights)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        try:
            model.load_state_dict(sd, strict=False)
        except RuntimeError as exc:
            raise ModelFileError(f"not a ResNet-50 state_dict ({str(exc).splitlines()[1].strip()})", weights) from None
        missing = [k for k in model.state_dict() if k not in sd and not k.startswith("fc.")]
        if missing:
            raise ModelFileError(
                f"not a ResNet-50 state_dict ({len(missing)} weights missing, e.g. {missing[0]})", weights
            )
    model.fc = torch.nn.Identity()
    return model.eval()


def list_frames(folder: str | Path) -> list[Path]:
    """Frame files of a folder in name order; a video file gets a clear error."""
    folder = Path(folder)
    if folder.suffix.lower() in VIDEO_SUFFIXES:
        raise InputError(
            "video decoding is not available in this version; extract frames first, e.g. "
            "'ffmpeg -i video.mp4 -vf fps=5 frames/%06d.png', then 'medseg phases extract frames/'",
            folder,
        )
    if not folder.is_dir():
        raise InputError("not a folder of frames", folder)
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not frames:
        raise InputError("no PNG/JPG frames in the folder", folder)
    return frames


def _load(path: Path) -> torch.Tensor:
    _require("PIL", "Pillow")
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import center_crop, normalize, pil_to_tensor, resize

    try:
        img = Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError):
        raise InputError("not a readable image", path) from None
    t = center_crop(resize(pil_to_tensor(img), 256, antialias=True), 224).float() / 255
    return normalize(t, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@torch.inference_mode()
def extract_features(
    folder: str | Path,
    out: str | Path,
    encoder: torch.nn.Module,
    source_fps: float = 25.0,
    fps: float = 5.0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    quiet: bool = True,
) -> Path:
    """Encode the frames (sampled to ``fps``) and save [T, 2048] float32 features atomically."""
    frames = list_frames(folder)
    step = max(1.0, source_fps / fps)
    picked = [frames[int(i)] for i in np.arange(0, len(frames), step)]
    encoder = encoder.to(device)
    feats = []
    bar = progress(total=len(picked), desc="frames", unit="frame", quiet=quiet)
    with bar:
        for s in range(0, len(picked), batch_size):
            batch = torch.stack([_load(p) for p in picked[s : s + batch_size]]).to(device)
            feats.append(encoder(batch).float().cpu().numpy())
            bar.update(len(batch))
    with atomic_output(out, overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.concatenate(feats).astype(np.float32))
    return Path(out)
