"""Row-block parts of an output grid (``--num-parts N --part-id K``) and ``remote mosaic``, which joins them.

On one machine the same row blocks (or tiles) are computed by a bounded pool of threads, each with its own copy of the
series (:func:`map_ordered`, :func:`worker_copies`). A cluster run splits the OUTPUT grid, not the inputs: part K of N
covers a contiguous band of rows whose edges fall on multiples of the Cloud-Optimised GeoTIFF tile
(:data:`remote.writer.COG_BLOCK`, 512 rows; on grids with fewer such blocks than parts, the largest power of two down
to 16 that gives every part rows), and writes it as a georeferenced raster of its own, ``map.part-K-of-N.tif`` (K as
given to ``--part-id``, 0-based). Each part carries tags naming the part and the whole grid, so :func:`mosaic` can
check what it joins: one CRS, one pixel size, one pixel lattice, the same bands, data type and nodata; no two parts
covering a pixel, no gap; and for parts of a run, all N parts present and together exactly the run's grid. The join
copies pixels (nothing is resampled), so the mosaic equals the run without parts pixel for pixel. ``-o map.vrt``
writes a GDAL VRT referring to the parts (relative paths when they share a folder tree with it) instead of a copy.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from xml.sax.saxutils import escape

from shared_backbones.cliutil import atomic_output
from shared_backbones.errors import InputError

from .resample import Grid
from .writer import COG_BLOCK, copy_as

T = TypeVar("T")
S = TypeVar("S")
R = TypeVar("R")

#: tags of a part file: which part of how many, and the whole grid it belongs to
PART_TAG = "CONVSUITE_PART"             # "K/N"
PART_ROWS_TAG = "CONVSUITE_PART_ROWS"   # "ROW0 ROW1" of the whole grid
FULL_GRID_TAG = "CONVSUITE_FULL_GRID"   # "WIDTH HEIGHT a b c d e f" (affine of the whole grid)
CATEGORICAL_TAG = "CONVSUITE_CATEGORICAL"  # "1": nearest-neighbour overviews in the joined COG
_PART_TAGS = (PART_TAG, PART_ROWS_TAG, FULL_GRID_TAG, CATEGORICAL_TAG)


def part_path(path: str | Path, part_id: int, num_parts: int) -> Path:
    """``map.tif`` -> ``map.part-K-of-N.tif`` (the name part K of N of ``path`` is written under)."""
    p = Path(path)
    return p.with_name(f"{p.stem}.part-{part_id}-of-{num_parts}{p.suffix}")


_PART_NAME = re.compile(r"\.part-\d+-of-\d+$")


def whole_path(path: str | Path) -> Path:
    """The inverse of :func:`part_path`: ``map.part-K-of-N.tif`` -> ``map.tif`` (other names unchanged)."""
    p = Path(path)
    return p.with_name(f"{_PART_NAME.sub('', p.stem)}{p.suffix}")


def part_rows(height: int, num_parts: int, part_id: int, block: int = COG_BLOCK) -> tuple[int, int]:
    """Rows ``[row0, row1)`` of part ``part_id`` of ``num_parts`` of a grid ``height`` rows high (module docstring:
    edges on multiples of ``block``, or of a smaller power of two down to 16 on small grids). Raises
    :class:`InputError` when the grid has fewer than ``num_parts`` blocks of 16 rows."""
    unit = block
    while -(-height // unit) < num_parts and unit > 16:
        unit //= 2
    n_blocks = -(-height // unit)
    if n_blocks < num_parts:
        raise InputError(f"--num-parts {num_parts} is more than the output grid's {n_blocks} row block(s) of "
                         f"{unit} rows ({height} rows): use at most {n_blocks} parts")
    b0, b1 = part_id * n_blocks // num_parts, (part_id + 1) * n_blocks // num_parts
    return b0 * unit, min(height, b1 * unit)


@dataclass(frozen=True)
class RowBlock:
    """Rows ``[row0, row1)`` of the output grid ``grid``: what one part (or the whole run) computes. Reads use
    windows of ``grid`` (so a halo reaches across the block edge, as in the whole run); writes use windows of
    :attr:`out_grid`, the block's own georeferenced grid."""

    grid: Grid
    row0: int
    row1: int
    part_id: int = 0
    num_parts: int = 1

    @classmethod
    def whole(cls, grid: Grid) -> RowBlock:
        return cls(grid, 0, grid.height)

    @classmethod
    def part(cls, grid: Grid, num_parts: int, part_id: int, block: int = COG_BLOCK) -> RowBlock:
        r0, r1 = part_rows(grid.height, num_parts, part_id, block)
        return cls(grid, r0, r1, part_id, num_parts)

    @property
    def is_part(self) -> bool:
        return self.num_parts > 1

    @property
    def height(self) -> int:
        return self.row1 - self.row0

    @property
    def out_grid(self) -> Grid:
        from rasterio.windows import Window, transform

        return Grid(self.grid.crs, transform(Window(0, self.row0, self.grid.width, self.height), self.grid.transform),
                    self.grid.width, self.height)

    def windows(self, tile: int) -> Iterator[tuple[Any, Any]]:
        """``(read window in grid, write window in out_grid)`` tiles of ``tile`` pixels, row-major; tiles start
        at the block's first row (a multiple of the tile edge whenever that divides the part alignment)."""
        from rasterio.windows import Window

        for r in range(self.row0, self.row1, tile):
            h = min(tile, self.row1 - r)
            for c in range(0, self.grid.width, tile):
                w = min(tile, self.grid.width - c)
                yield Window(c, r, w, h), Window(c, r - self.row0, w, h)

    def n_windows(self, tile: int) -> int:
        return -(-self.height // tile) * -(-self.grid.width // tile)

    def tags(self, categorical: bool) -> dict[str, str]:
        """The part tags (empty for the whole run)."""
        if not self.is_part:
            return {}
        t = self.grid.transform
        return {PART_TAG: f"{self.part_id}/{self.num_parts}", PART_ROWS_TAG: f"{self.row0} {self.row1}",
                FULL_GRID_TAG: " ".join(map(repr, (self.grid.width, self.grid.height, t.a, t.b, t.c, t.d, t.e,
                                                   t.f))),
                CATEGORICAL_TAG: "1" if categorical else "0"}


# -- one machine: row blocks on every core -----------------------------------------------------------------------------
def worker_copies(series: Any, workers: int) -> list[Any]:
    """``series`` and ``workers - 1`` independent copies of it for reader threads (a GDAL dataset must not be
    shared between threads: each copy opens its own files; no more copies than half the open-file limit allows).
    Copies are made before any file is opened; a series that cannot be copied (already holding open files) gets no
    copies: the work then runs on one reader."""
    import copy

    copies = [series]
    workers = min(workers, _copies_within_file_limit(series))
    for _ in range(max(0, workers - 1)):
        try:
            copies.append(copy.deepcopy(series))
        except Exception:  # noqa: BLE001 - open handles cannot be copied: fall back to one reader
            break
    return copies


def _copies_within_file_limit(series: Any) -> int:
    """How many copies of ``series`` may hold all their band files open at once within half the process's open-file
    limit (each copy opens its own handles; an area of many tiles has many files)."""
    files = {str(ref.path) for src in getattr(series, "sources", []) for ref in getattr(src, "bands", {}).values()}
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY or soft <= 0:
            soft = 1 << 16
    except (ImportError, OSError, ValueError):   # not on POSIX
        soft = 512
    return max(1, (soft // 2) // max(1, len(files)))


def map_ordered(items: Iterable[T], work: Callable[[S, T], R], states: Sequence[S], depth: int | None = None
                ) -> Iterator[tuple[T, R]]:
    """``(item, work(state, item))`` for every item, in item order, computed by ``len(states)`` threads (thread i
    only ever uses ``states[i]``: e.g. its own copy of a series) with at most ``depth`` items in flight (default
    twice the threads), so memory stays bounded by ``depth`` results whatever the number of items. GDAL reads and
    NumPy release the GIL, so the threads run on separate cores. An error in ``work`` is raised in the consumer;
    closing the iterator early cancels what is queued and waits for the running items."""
    import collections
    import queue
    import threading
    from concurrent.futures import ThreadPoolExecutor

    n = max(1, len(states))
    depth = max(1, depth or 2 * n)
    free: queue.Queue = queue.Queue()
    for st in states:
        free.put(st)
    local = threading.local()

    def take_state() -> None:
        local.state = free.get_nowait()

    def run(item: T) -> R:
        return work(local.state, item)

    pending: collections.deque = collections.deque()
    ex = ThreadPoolExecutor(max_workers=n, initializer=take_state, thread_name_prefix="remote-block")
    try:
        for item in items:
            pending.append((item, ex.submit(run, item)))
            if len(pending) >= depth:
                it, fut = pending.popleft()
                yield it, fut.result()
        while pending:
            it, fut = pending.popleft()
            yield it, fut.result()
    finally:
        for _, fut in pending:
            fut.cancel()
        ex.shutdown(wait=True)


# -- mosaic ----------------------------------------------------------------------------------------------------------
@dataclass
class _Part:
    path: Path
    crs: Any
    transform: Any
    width: int
    height: int
    count: int
    dtype: str
    nodata: Any
    descriptions: tuple
    tags: dict[str, str]
    colormap: dict | None
    scales: tuple
    offsets: tuple
    block: tuple[int, int]
    col: int = 0          # offset in the mosaic
    row: int = 0


def _read_part(path: Path) -> _Part:
    import rasterio

    if not path.is_file():
        raise InputError("no such file", path)
    try:
        with rasterio.open(path) as ds:
            try:
                cmap = ds.colormap(1)
            except ValueError:
                cmap = None
            return _Part(path, ds.crs, ds.transform, ds.width, ds.height, ds.count, ds.dtypes[0], ds.nodata,
                         tuple(ds.descriptions), ds.tags(), cmap, tuple(ds.scales), tuple(ds.offsets),
                         tuple(ds.block_shapes[0]))
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"not a readable raster ({str(exc).splitlines()[0] if str(exc) else 'unreadable'})",
                         path) from None


def _same_nodata(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


@dataclass
class Mosaic:
    """The checked layout of a join: the parts with their pixel offsets and the mosaic's grid."""

    parts: list[_Part]
    grid: Grid
    categorical: bool

    @property
    def first(self) -> _Part:
        return self.parts[0]


def plan_mosaic(paths: Sequence[str | Path]) -> Mosaic:
    """Check that ``paths`` tile one grid exactly (module docstring) and lay them out; one-line
    :class:`InputError` naming the file otherwise."""
    if not paths:
        raise InputError("no parts given")
    seen: dict[str, Path] = {}
    for p in paths:
        key = os.path.realpath(p)
        if key in seen:
            raise InputError(f"given twice (also as {seen[key]})", p)
        seen[key] = Path(p)
    parts = [_read_part(Path(p)) for p in paths]
    a = parts[0]
    t0 = a.transform
    if t0.b != 0 or t0.d != 0:
        raise InputError("a rotated grid cannot be joined", a.path)
    for p in parts[1:]:
        t = p.transform
        if p.crs != a.crs:
            raise InputError(f"different CRS: {p.crs} here, {a.crs} in {a.path.name}", p.path)
        if not (math.isclose(t.a, t0.a, rel_tol=1e-9) and math.isclose(t.e, t0.e, rel_tol=1e-9)) or t.b or t.d:
            raise InputError(f"different pixel size: {t.a:g} x {-t.e:g} here, {t0.a:g} x {-t0.e:g} in {a.path.name}",
                             p.path)
        if p.count != a.count or p.dtype != a.dtype:
            raise InputError(f"different bands: {p.count} x {p.dtype} here, {a.count} x {a.dtype} in {a.path.name}",
                             p.path)
        if not _same_nodata(p.nodata, a.nodata):
            raise InputError(f"different nodata: {p.nodata} here, {a.nodata} in {a.path.name}", p.path)
        if p.descriptions != a.descriptions:
            raise InputError(f"different band descriptions than {a.path.name} (parts of different outputs?)", p.path)
    _check_run_ids(parts)
    # pixel offsets on the lattice of the first part
    for p in parts:
        fc, fr = (p.transform.c - t0.c) / t0.a, (p.transform.f - t0.f) / t0.e
        if abs(fc - round(fc)) > 1e-6 or abs(fr - round(fr)) > 1e-6:
            raise InputError(f"not on the pixel lattice of {a.path.name} (offset {fc:.3f}, {fr:.3f} px)", p.path)
        p.col, p.row = round(fc), round(fr)
    c0, r0 = min(p.col for p in parts), min(p.row for p in parts)
    c1, r1 = max(p.col + p.width for p in parts), max(p.row + p.height for p in parts)
    for p in parts:
        p.col, p.row = p.col - c0, p.row - r0
    # no overlap (pairwise), then no gap (areas add up to the bounding rectangle)
    order = sorted(parts, key=lambda q: (q.row, q.col))
    for i, p in enumerate(order):
        for q in order[i + 1:]:
            if q.row >= p.row + p.height:
                break
            if q.col < p.col + p.width and p.col < q.col + q.width and q.row < p.row + p.height:
                raise InputError(f"overlaps {p.path.name} (rows {max(p.row, q.row)}.."
                                 f"{min(p.row + p.height, q.row + q.height) - 1} of the mosaic)", q.path)
    area = sum(p.width * p.height for p in parts)
    if area != (c1 - c0) * (r1 - r0):
        raise InputError(f"the parts leave a gap: they cover {area} of the {(c1 - c0) * (r1 - r0)} pixels of their "
                         "bounding rectangle", a.path)
    from rasterio.windows import Window, transform

    grid = Grid(a.crs, transform(Window(c0, r0, c1 - c0, r1 - r0), t0), c1 - c0, r1 - r0)
    _check_run_parts(parts, grid)
    categorical = a.tags.get(CATEGORICAL_TAG) == "1" or (a.colormap is not None and a.count == 1)
    return Mosaic(parts, grid, categorical)


def _part_of(p: _Part) -> tuple[int, int]:
    """(K, N) of a part's ``K/N`` tag."""
    try:
        k, n = (int(v) for v in p.tags[PART_TAG].split("/"))
    except ValueError:
        raise InputError(f"malformed {PART_TAG} tag {p.tags[PART_TAG]!r}", p.path) from None
    if not 0 <= k < n:
        raise InputError(f"malformed {PART_TAG} tag {p.tags[PART_TAG]!r}", p.path)
    return k, n


def _check_run_ids(parts: list[_Part]) -> None:
    """Parts of a ``--num-parts`` run: all of one run, every part present once."""
    tagged = [p for p in parts if PART_TAG in p.tags]
    if not tagged:
        return
    if len(tagged) != len(parts):
        other = next(p for p in parts if PART_TAG not in p.tags)
        raise InputError(f"not a part of a --num-parts run, unlike {tagged[0].path.name}", other.path)
    ref = tagged[0]
    n = _part_of(ref)[1]
    ids: dict[int, Path] = {}
    for p in tagged:
        k, m = _part_of(p)
        if m != n or p.tags.get(FULL_GRID_TAG) != ref.tags.get(FULL_GRID_TAG):
            raise InputError(f"part {k} of {m} of another run than {ref.path.name} (part of {n}; grids or part "
                             "counts differ)", p.path)
        if k in ids:
            raise InputError(f"part {k} of {n} given twice (also {ids[k].name})", p.path)
        ids[k] = p.path
    missing = [k for k in range(n) if k not in ids]
    if missing:
        raise InputError(f"missing part(s) {', '.join(map(str, missing))} of {n} (e.g. "
                         f"{part_path(_strip_part(ref.path), missing[0], n).name})", ref.path)


def _check_run_parts(parts: list[_Part], grid: Grid) -> None:
    """Parts of a ``--num-parts`` run together make up exactly the run's grid."""
    ref = parts[0]
    if PART_TAG not in ref.tags:
        return
    n = _part_of(ref)[1]
    try:
        vals = ref.tags[FULL_GRID_TAG].split()
        width, height = int(vals[0]), int(vals[1])
        a, b, c, d, e, f = (float(v) for v in vals[2:])
    except (KeyError, ValueError, IndexError):
        raise InputError(f"malformed {FULL_GRID_TAG} tag", ref.path) from None
    t = grid.transform
    if (grid.width, grid.height) != (width, height) or not all(
            math.isclose(x, y, rel_tol=0, abs_tol=1e-6 * max(1.0, abs(a))) for x, y in
            zip((t.a, t.b, t.c, t.d, t.e, t.f), (a, b, c, d, e, f))):
        raise InputError(f"the {n} parts do not make up the run's grid ({width} x {height} px)", ref.path)


def _strip_part(path: Path) -> Path:
    stem = path.stem
    i = stem.rfind(".part-")
    return path.with_name(stem[:i] + path.suffix) if i >= 0 else path


def _vrt_xml(m: Mosaic, vrt_dir: Path | None) -> str:
    """A GDAL VRT (https://gdal.org/drivers/raster/vrt.html) placing every part at its offset; source paths relative
    to ``vrt_dir`` when given and reachable without leaving the drive, else absolute."""
    a, g = m.first, m.grid
    t = g.transform
    vrt_type = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
                "int32": "Int32", "float32": "Float32", "float64": "Float64"}[a.dtype]
    out = [f'<VRTDataset rasterXSize="{g.width}" rasterYSize="{g.height}">',
           f"  <SRS>{escape(g.crs.to_wkt())}</SRS>" if g.crs is not None else "",
           f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>",
           "  <Metadata>"]
    out += [f'    <MDI key="{escape(k)}">{escape(v)}</MDI>' for k, v in a.tags.items()
            if k not in _PART_TAGS and k != "AREA_OR_POINT"]
    out.append("  </Metadata>")
    for b in range(1, a.count + 1):
        out.append(f'  <VRTRasterBand dataType="{vrt_type}" band="{b}">')
        if a.descriptions[b - 1]:
            out.append(f"    <Description>{escape(a.descriptions[b - 1])}</Description>")
        if a.nodata is not None:
            out.append(f"    <NoDataValue>{'nan' if math.isnan(a.nodata) else repr(a.nodata)}</NoDataValue>")
        if a.scales[b - 1] != 1.0 or a.offsets[b - 1] != 0.0:
            out.append(f"    <Offset>{a.offsets[b - 1]!r}</Offset>\n    <Scale>{a.scales[b - 1]!r}</Scale>")
        if b == 1 and a.colormap is not None:
            out.append("    <ColorInterp>Palette</ColorInterp>\n    <ColorTable>")
            for i in range(max(a.colormap) + 1):
                r, gg, bb, al = a.colormap.get(i, (0, 0, 0, 0))
                out.append(f'      <Entry c1="{r}" c2="{gg}" c3="{bb}" c4="{al}"/>')
            out.append("    </ColorTable>")
        for p in m.parts:
            rel = "0"
            src = str(p.path.resolve())
            if vrt_dir is not None:
                try:
                    src = os.path.relpath(p.path.resolve(), vrt_dir.resolve())
                    rel = "1"
                except ValueError:  # another drive
                    pass
            nd = "" if a.nodata is None else \
                f"      <NODATA>{'nan' if math.isnan(a.nodata) else repr(a.nodata)}</NODATA>\n"
            out.append(
                f"    <{'ComplexSource' if nd else 'SimpleSource'}>\n"
                f'      <SourceFilename relativeToVRT="{rel}">{escape(src)}</SourceFilename>\n'
                f"      <SourceBand>{b}</SourceBand>\n"
                f'      <SourceProperties RasterXSize="{p.width}" RasterYSize="{p.height}" DataType="{vrt_type}" '
                f'BlockXSize="{p.block[1]}" BlockYSize="{p.block[0]}"/>\n'
                f'      <SrcRect xOff="0" yOff="0" xSize="{p.width}" ySize="{p.height}"/>\n'
                f'      <DstRect xOff="{p.col}" yOff="{p.row}" xSize="{p.width}" ySize="{p.height}"/>\n'
                f"{nd}"
                f"    </{'ComplexSource' if nd else 'SimpleSource'}>")
        out.append("  </VRTRasterBand>")
    out.append("</VRTDataset>")
    return "\n".join(x for x in out if x) + "\n"


def mosaic(paths: Sequence[str | Path], output: str | Path, *, fmt: str = "COG", compress: str = "deflate",
           overwrite: bool = False, preview: str | Path | None = None) -> dict[str, Any]:
    """Join ``paths`` (parts of a ``--num-parts`` run, or any rasters that tile one grid exactly) into ``output``:
    a Cloud-Optimised GeoTIFF (``fmt="COG"``), a tiled GeoTIFF (``"GTiff"``) or, for a ``.vrt`` name, a GDAL VRT
    referring to the parts. Checked before anything is written (:func:`plan_mosaic`); the copy is block by block
    through GDAL, so memory does not grow with the mosaic. ``preview``: also a quick-look PNG of the result with the
    parts outlined (:func:`remote.preview.preview_map`). Returns a summary (parts, size, path, format)."""
    from shared_backbones.planning import Job, Writer, plan_outputs

    out = Path(output)
    is_vrt = out.suffix.lower() == ".vrt"
    outputs = {"mosaic": out, **({"preview": Path(preview)} if preview is not None else {})}
    plan_outputs([Job(str(out), [Path(p) for p in paths], outputs)], overwrite=overwrite,
                 writers={"mosaic": Writer((".tif", ".tiff", ".vrt")),
                          "preview": Writer((".png",), option="--preview")})
    m = plan_mosaic(paths)
    with atomic_output(out, overwrite) as tmp:
        if is_vrt:
            tmp.write_text(_vrt_xml(m, out.parent), encoding="utf-8")
        else:
            vrt = tmp.with_name(f"{tmp.stem}.join.vrt")
            try:
                vrt.write_text(_vrt_xml(m, None), encoding="utf-8")
                copy_as(vrt, tmp, fmt, categorical=m.categorical, compress=compress)
            finally:
                vrt.unlink(missing_ok=True)
    if preview is not None:
        from .preview import Footprint, preview_map

        def ring(p: _Part) -> list[tuple[float, float]]:
            t = m.grid.transform
            corners = [(p.col, p.row + p.height), (p.col + p.width, p.row + p.height), (p.col + p.width, p.row),
                       (p.col, p.row), (p.col, p.row + p.height)]
            return [tuple(t @ c) for c in corners]

        preview_map(out, preview, title=f"remote mosaic: {out.name} ({len(m.parts)} parts)",
                    footprints=[Footprint(_part_label(p), ring(p)) for p in m.parts], overwrite=overwrite)
    return {"path": str(out), "parts": len(m.parts), "size": [m.grid.height, m.grid.width],
            "format": "VRT" if is_vrt else fmt}


def _part_label(p: _Part) -> str:
    tag = p.tags.get(PART_TAG)
    return f"part {tag.replace('/', ' of ')}" if tag else p.path.name

