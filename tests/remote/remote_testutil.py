"""GeoTIFF writer for the remote tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

CRS32632 = CRS.from_epsg(32632)


def write_tif(path: Path, data: np.ndarray, desc: list[str] | None = None, res: float = 10.0,
              crs: CRS = CRS32632, nodata=0, tags: dict | None = None, origin=(600000.0, 5300000.0)) -> Path:
    """Write [C, H, W] ``data`` as a GeoTIFF with band descriptions and tags."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype.name, crs=crs, transform=from_origin(*origin, res, res), nodata=nodata) as ds:
        ds.write(data)
        for i, d in enumerate(desc or [], 1):
            ds.set_band_description(i, d)
        if tags:
            ds.update_tags(**tags)
    return path


def unet_model_file(path: Path, dates: list[str], n_dates: int) -> Path:
    """A random-weight ``unet2d`` model file (B02 B03 B04 B08 on ``dates``; ``n_dates`` x 4 input channels) whose
    BatchNorms carry non-trivial running means, so padding or halo differences would show."""
    import torch

    from remote.models import CLASSES, UNet2d
    from shared_backbones.checkpoint import ModelFile, save_model_file

    torch.manual_seed(0)
    kw = {"in_channels": n_dates * 4, "encoder_name": "resnet18", "encoder_depth": 2, "decoder_channels": [16, 8]}
    m = UNet2d(**kw).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
    pre = {"bands": ["B02", "B03", "B04", "B08"], "dates": list(dates), "norm_mean": [0.1] * 4, "norm_std": [0.1] * 4}
    return save_model_file(path, ModelFile.from_model(
        m, task="remote", arch="unet2d", arch_kwargs=kw, classes=list(CLASSES), preprocessing=pre))


def predict_whole_and_in_parts(common: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """``remote predict`` once whole (``whole.tif``) and as two parts joined by ``mosaic`` (``j.tif``): the paths of
    the whole run's probability map and of the joined parts' map."""
    from remote.cli import main
    from remote.join import mosaic, part_path

    assert main(["predict", *common, "-o", str(tmp_path / "whole.tif")]) == 0
    for k in range(2):
        assert main(["predict", *common, "-o", str(tmp_path / "u.tif"), "--num-parts", "2", "--part-id",
                     str(k)]) == 0
    mosaic([tmp_path / part_path("u_prob.tif", k, 2) for k in range(2)], tmp_path / "j.tif")
    return tmp_path / "whole_prob.tif", tmp_path / "j.tif"
