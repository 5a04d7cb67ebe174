"""Quick-look PNGs of ``remote`` maps (``--preview map.png``): small enough to mail, drawn with matplotlib (Agg).

One panel per map, side by side: the class map (its colour table, a legend of the class names) and one continuous
raster (the stress probability ``1 - p(healthy)`` of ``remote predict``, or one band of a ``remote indices`` stack
with a colour bar). The rasters are read decimated (GDAL picks the Cloud-Optimised GeoTIFF's overviews), so a
preview of a 100,000-pixel-wide map reads about a megapixel. The footprints of the products the map was made from
are outlined and labelled (tile IDs), a scale bar and a title say what and where; the image is at most
``max_width`` pixels wide (1200 by default).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared_backbones.cliutil import atomic_output
from shared_backbones.errors import InputError

#: the widest preview (pixels); the height follows the map's aspect, at most 3/4 of it per row of panels
MAX_WIDTH = 1200
_DPI = 100
_TILE_ID = re.compile(r"(?:^|[_/])T?(\d{2}[C-X][A-Z]{2})(?:[_./]|$)")


@dataclass
class Footprint:
    """An outline drawn on the preview: a label (a tile ID, a file name) and a ring of (x, y) in the map's CRS."""

    label: str
    ring: list[tuple[float, float]]


@dataclass
class Preview:
    """What :func:`write_preview` drew: the PNG, its size in pixels, the legend entries (class name, RGB hex),
    the continuous panel's label and colour-bar range, the footprints and the scale-bar length (map units)."""

    path: Path
    size: tuple[int, int]
    legend: list[tuple[str, str]] = field(default_factory=list)
    colorbar: tuple[str, float, float] | None = None
    footprints: list[str] = field(default_factory=list)
    scale_bar: float | None = None


@dataclass
class _Panel:
    data: np.ndarray
    extent: tuple[float, float, float, float]   # left, right, bottom, top
    crs: Any
    res: tuple[float, float]                    # map units per preview pixel
    title: str
    classes: list[str] | None = None
    colors: list[tuple[int, int, int]] | None = None
    label: str = ""


def _decimated_shape(width: int, height: int, max_px: int) -> tuple[int, int]:
    f = max(1.0, max(width, height) / max_px)
    return max(1, round(height / f)), max(1, round(width / f))


def _open(path: str | Path) -> Any:
    import rasterio

    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"not a readable raster ({str(exc).splitlines()[0] if str(exc) else 'unreadable'})",
                         path) from None


def _read(ds: Any, bands: int | Sequence[int], max_px: int, categorical: bool) -> np.ndarray:
    from rasterio.enums import Resampling

    h, w = _decimated_shape(ds.width, ds.height, max_px)
    idx = [bands] if isinstance(bands, int) else list(bands)
    a = ds.read(idx, out_shape=(len(idx), h, w), masked=True,
                resampling=Resampling.nearest if categorical else Resampling.average)
    return a


def _extent(ds: Any) -> tuple[float, float, float, float]:
    b = ds.bounds
    return b.left, b.right, b.bottom, b.top


def class_panel(path: str | Path, max_px: int) -> _Panel:
    """The class map ``path`` (``remote predict`` output: ``CLASSES`` tag, colour table) read decimated."""
    with _open(path) as ds:
        a = _read(ds, 1, max_px, True)[0]
        tags = ds.tags()
        classes = [c for c in tags.get("CLASSES", "").split(",") if c]
        try:
            cmap = ds.colormap(1)
        except ValueError:
            cmap = {}
        if not classes:
            vals = np.unique(a.compressed())
            classes = [str(v) for v in range(int(vals.max()) + 1)] if vals.size else []
        colors = [tuple(cmap.get(i, _fallback_color(i))[:3]) for i in range(len(classes))]
        return _Panel(a.filled(255).astype(np.int64), _extent(ds), ds.crs,
                      (ds.res[0] * ds.width / a.shape[1], ds.res[1] * ds.height / a.shape[0]),
                      f"classes ({Path(path).name})", classes, colors)


def _fallback_color(i: int) -> tuple[int, int, int, int]:
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["tab10"](i % 10)
    return round(r * 255), round(g * 255), round(b * 255), 255


def probability_panel(path: str | Path, max_px: int) -> _Panel:
    """The stress probability ``1 - p(healthy)`` (the largest probability when no class is called healthy) from a
    ``remote predict`` probability raster (float32, or uint8 with its scale), read decimated."""
    with _open(path) as ds:
        a = _read(ds, list(range(1, ds.count + 1)), max_px, False).astype(np.float32)
        scales = np.asarray(ds.scales, dtype=np.float32)[:, None, None]
        p = a * scales
        names = [(d or "").removeprefix("p(").removesuffix(")") for d in ds.descriptions]
        if "healthy" in names:
            v = 1.0 - p[names.index("healthy")]
            label = "stress probability 1 - p(healthy)"
        else:
            v = p.max(0)
            label = "largest class probability"
        data = np.ma.filled(v.astype(np.float32), np.nan)
        return _Panel(np.asarray(data), _extent(ds), ds.crs,
                      (ds.res[0] * ds.width / data.shape[1], ds.res[1] * ds.height / data.shape[0]),
                      label, label=label)


def index_panel(path: str | Path, max_px: int, band: int | None = None) -> _Panel:
    """One band of a ``remote indices`` stack, read decimated: ``band`` (1-based), or the first index on the date
    with the most valid pixels."""
    with _open(path) as ds:
        names = [d or f"band {i + 1}" for i, d in enumerate(ds.descriptions)]
        if band is None:
            first = names[0].split(" ")[0]
            cand = [i + 1 for i, n in enumerate(names) if n.split(" ")[0] == first]
            a = _read(ds, cand, max(64, max_px // 4), False)
            band = cand[int(np.argmax([np.count_nonzero(np.isfinite(np.ma.filled(x, np.nan))) for x in a]))]
        elif not 1 <= band <= ds.count:
            raise InputError(f"band {band} does not exist ({ds.count} bands)", path)
        data = np.ma.filled(_read(ds, band, max_px, False)[0].astype(np.float32), np.nan)
        return _Panel(np.asarray(data), _extent(ds), ds.crs,
                      (ds.res[0] * ds.width / data.shape[1], ds.res[1] * ds.height / data.shape[0]),
                      names[band - 1], label=names[band - 1])


def _ring(x0: float, y0: float, x1: float, y1: float, n: int = 16) -> list[tuple[float, float]]:
    """A closed ring around a box with ``n`` points per edge (edges bend when reprojected to another zone)."""
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    edges = [(x0 + (x1 - x0) * t, np.full(n, y0)), (np.full(n, x1), y0 + (y1 - y0) * t),
             (x1 - (x1 - x0) * t, np.full(n, y1)), (np.full(n, x0), y1 - (y1 - y0) * t)]
    pts = [(float(x), float(y)) for xs, ys in edges for x, y in zip(xs, ys)]
    return pts + [pts[0]]


def footprints_of(paths: Sequence[str | Path], crs: Any) -> list[Footprint]:
    """The outlines of the rasters ``paths`` (e.g. one band file per product) in ``crs``, one per distinct outline,
    labelled with the Sentinel-2 tile ID in the path (else the file name); unreadable files are left out."""
    import rasterio
    from rasterio.warp import transform_geom

    out: list[Footprint] = []
    seen: set[tuple] = set()
    for p in paths:
        try:
            with rasterio.open(str(p)) as ds:
                b, src_crs = ds.bounds, ds.crs
        except Exception:  # noqa: BLE001 - a footprint is decoration: an unreadable file has none
            continue
        if src_crs is None:
            continue
        geom = {"type": "Polygon", "coordinates": [_ring(b.left, b.bottom, b.right, b.top)]}
        if crs is not None and src_crs != crs:
            geom = transform_geom(src_crs, crs, geom, precision=-1)
        pts = [(float(x), float(y)) for x, y in geom["coordinates"][0]]
        key = tuple((round(x, 1), round(y, 1)) for x, y in pts)
        if key in seen:
            continue
        seen.add(key)
        m = _TILE_ID.search(str(p))
        out.append(Footprint(m.group(1) if m else Path(str(p)).name, pts))
    return out


def series_footprints(series: Any, crs: Any) -> list[Footprint]:
    """Footprints of the products of a :class:`remote.reader.S2Series`: one band file of every source (product,
    date) outlined in ``crs`` (an area series' own product footprints when it has them: no file is opened)."""
    known = getattr(series, "footprints", None)
    if known and all(hasattr(f, "bounds") and hasattr(f, "crs") for f in known):
        from rasterio.warp import transform_geom

        out: list[Footprint] = []
        seen: set[tuple] = set()
        for key, f in zip(getattr(series, "keys", [""] * len(known)), known):
            geom = {"type": "Polygon", "coordinates": [_ring(*f.bounds)]}
            if crs is not None and f.crs != crs:
                geom = transform_geom(f.crs, crs, geom, precision=-1)
            pts = [(float(x), float(y)) for x, y in geom["coordinates"][0]]
            sig = tuple((round(x, 1), round(y, 1)) for x, y in pts)
            if sig not in seen:
                seen.add(sig)
                m = _TILE_ID.search(str(key))
                out.append(Footprint(m.group(1) if m else str(key), pts))
        return out
    paths: list[str] = []
    for src in getattr(series, "sources", []):
        bands = getattr(src, "bands", {})
        ref = next((bands[b] for b in bands if b != "SCL"), None) or next(iter(bands.values()), None)
        if ref is not None and str(ref.path) not in paths:
            paths.append(str(ref.path))
    return footprints_of(paths, crs)


def _nice_length(span: float) -> float:
    """A 1/2/5 x 10^k length near a fifth of ``span``."""
    target = span / 5
    k = 10 ** math.floor(math.log10(target))
    return max(m * k for m in (1, 2, 5, 10) if m * k <= target * 1.0001) if target > 0 else 0.0


def _metres_per_unit(crs: Any, lat: float) -> float:
    if crs is not None and crs.is_geographic:
        return 111_320.0 * max(0.01, math.cos(math.radians(lat)))
    try:
        return float(crs.linear_units_factor[1]) if crs is not None else 1.0
    except Exception:  # noqa: BLE001 - CRSs without linear units: metres assumed
        return 1.0


def _draw_scale_bar(ax: Any, p: _Panel) -> float:
    left, right, bottom, top = p.extent
    mpu = _metres_per_unit(p.crs, (bottom + top) / 2)
    metres = _nice_length((right - left) * mpu)
    if metres <= 0:
        return 0.0
    length = metres / mpu
    x0, y0 = left + 0.05 * (right - left), bottom + 0.05 * (top - bottom)
    h = 0.012 * (top - bottom)
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((x0, y0), length, h, facecolor="black", edgecolor="white", linewidth=0.8, zorder=5))
    ax.add_patch(Rectangle((x0, y0), length / 2, h, facecolor="white", edgecolor="black", linewidth=0.8, zorder=6))
    text = f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
    ax.text(x0 + length / 2, y0 + 1.8 * h, text, ha="center", va="bottom", fontsize=8, zorder=7,
            bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
    return metres


def _hex(c: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*c)


def write_preview(output: str | Path, *, class_map: str | Path | None = None, probabilities: str | Path | None = None,
                  indices: str | Path | None = None, index_band: int | None = None,
                  footprints: Sequence[Footprint] = (), title: str = "", max_width: int = MAX_WIDTH,
                  overwrite: bool = False) -> Preview:
    """Write the quick-look PNG ``output`` (module docstring) of a class map and/or one continuous raster (the
    stress probability from ``probabilities``, or band ``index_band`` of ``indices``); returns what was drawn."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    out = Path(output)
    if out.suffix.lower() != ".png":
        raise InputError(f"--preview cannot write a '{out.suffix or 'no extension'}' file (use .png)", out)
    max_width = max(200, min(int(max_width), 4000))
    panels: list[_Panel] = []
    n = max(1, sum(x is not None for x in (class_map, probabilities, indices)))
    px = max(64, (max_width - 80) // n)
    if class_map is not None:
        panels.append(class_panel(class_map, px))
    if probabilities is not None:
        panels.append(probability_panel(probabilities, px))
    if indices is not None:
        panels.append(index_panel(indices, px, index_band))
    if not panels:
        raise InputError("nothing to preview (no class map, probabilities or index stack)", out)
    left, right, bottom, top = panels[0].extent
    aspect = (top - bottom) / max(1e-9, right - left)
    width_px = max_width
    height_px = int(min(0.75 * max_width, max(300, width_px / len(panels) * aspect + 140)))
    fig = plt.figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, layout="constrained")
    res = Preview(out, (width_px, height_px))
    try:
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, p in zip(axes, panels):
            if p.classes is not None:
                k = len(p.classes)
                colors = [np.asarray(c) / 255 for c in p.colors] + [np.asarray((0.85, 0.85, 0.85))]
                data = np.where((p.data >= 0) & (p.data < k), p.data, k)
                ax.imshow(data, extent=p.extent, cmap=ListedColormap(colors), vmin=-0.5, vmax=k + 0.5,
                          interpolation="nearest")
                res.legend = [(c, _hex(col)) for c, col in zip(p.classes, p.colors)]
                handles = [Patch(facecolor=h, edgecolor="black", label=c) for c, h in res.legend]
                handles.append(Patch(facecolor=(0.85, 0.85, 0.85), edgecolor="black", label="no data"))
                ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.85)
            else:
                finite = p.data[np.isfinite(p.data)]
                lo, hi = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
                if "probab" in p.label:
                    lo, hi, cm = 0.0, 1.0, "magma_r"
                else:
                    cm = "RdYlGn"
                    hi = hi if hi > lo else lo + 1e-6
                im = ax.imshow(np.ma.masked_invalid(p.data), extent=p.extent, cmap=cm, vmin=lo, vmax=hi,
                               interpolation="nearest")
                ax.set_facecolor((0.85, 0.85, 0.85))
                fig.colorbar(im, ax=ax, shrink=0.8, label=p.label)
                res.colorbar = (p.label, float(lo), float(hi))
            for f in footprints:
                xs, ys = zip(*f.ring)
                ax.plot(xs, ys, color="white", linewidth=2.2)
                ax.plot(xs, ys, color="black", linewidth=1.0, linestyle="--")
                ax.text(min(xs) + 0.01 * (max(xs) - min(xs)), max(ys), f.label, fontsize=7, va="top",
                        clip_on=True)
            ax.set_xlim(p.extent[0], p.extent[1])
            ax.set_ylim(p.extent[2], p.extent[3])
            ax.set_title(p.title, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.ticklabel_format(useOffset=False, style="plain")
            res.scale_bar = _draw_scale_bar(ax, p)
        crs = panels[0].crs
        crs_name = crs.to_string() if crs is not None else "no CRS"
        fig.suptitle(f"{title} ({crs_name})" if title else crs_name, fontsize=11)
        res.footprints = [f.label for f in footprints]
        with atomic_output(out, overwrite) as tmp:
            fig.savefig(tmp, dpi=_DPI, format="png")
    finally:
        plt.close(fig)
    return res


def preview_map(raster: str | Path, output: str | Path, *, title: str = "", footprints: Sequence[Footprint] = (),
                max_width: int = MAX_WIDTH, overwrite: bool = False) -> Preview:
    """The preview of one ``remote`` raster, drawn as what it is: a class map (``CLASSES`` tag or a colour table),
    a probability raster (bands ``p(class)``: the stress probability) or an index stack (one band)."""
    with _open(raster) as ds:
        tags, desc, count = ds.tags(), ds.descriptions, ds.count
        try:
            has_cmap = count == 1 and bool(ds.colormap(1))
        except ValueError:
            has_cmap = False
    kind = "class_map" if "CLASSES" in tags or has_cmap else \
        "probabilities" if desc and all((d or "").startswith("p(") for d in desc) else "indices"
    return write_preview(output, footprints=footprints, title=title, max_width=max_width, overwrite=overwrite,
                         **{kind: raster})
