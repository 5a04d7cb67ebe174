"""Tiled (windowed) prediction over Sentinel-2 time series of any size, with memory bounded by the tile.

For each tile: read the bands of every date in the window (20/60 m bands resampled onto the 10 m grid), scale to
reflectance, mask clouds with SCL, fill gaps onto the model's regular time grid, run the model, write the tile into
a class map (uint8, colour table, nodata 255) and a probability GeoTIFF (one band per class), both tiled and
deflate-compressed with the source CRS and transform, written atomically. Pixels without a single valid date stay
nodata. The spatial model reads each tile with a halo (aligned to its downsampling factor) and keeps the centre,
so the tiled map equals the whole-raster map when the halo covers the receptive field.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared_backbones.checkpoint import ModelFile
from shared_backbones.cliutil import atomic_output, check_output, progress
from shared_backbones.errors import InputError
from shared_backbones.loaded import LoadedModel
from shared_backbones.planning import Job, Plan, Writer

from .batch import GEOTIFF, OUTPUT_TAG, plan_series, run_jobs
from .discovery import SeriesOptions
from .fields import FieldSeries, field_series, open_fields
from .join import RowBlock, part_path, worker_copies
from .models import CLASSES, class_probabilities, date_attribution, frequency_attribution
from .naming import DEFAULT_SCL_INVALID, parse_dates
from .reader import S2Series
from .resample import Grid
from .timeseries import align_grid, day_numbers, fill_gaps
from .writer import raster_output

CLASS_NODATA = 255
PROB_UINT8_SCALE = 250.0  # uint8 probabilities: value = round(p * 250), 255 = nodata
PALETTE = [(26, 150, 65), (230, 97, 1), (253, 219, 60), (44, 123, 182), (215, 25, 28), (171, 217, 233),
           (166, 97, 26), (128, 128, 128)]


@dataclass
class RemoteModel(LoadedModel):
    """A loaded remote model (:class:`shared_backbones.loaded.LoadedModel`) with the preprocessing it was trained
    with: bands, the regular time grid, normalisation (spatial model) and the SCL classes it masked."""

    TASK = "remote"

    bands: list[str] = field(init=False)
    grid_dates: list[dt.date] = field(init=False)
    norm_mean: np.ndarray | None = field(init=False, default=None)
    norm_std: np.ndarray | None = field(init=False, default=None)
    scl_invalid: tuple[int, ...] = field(init=False, default=DEFAULT_SCL_INVALID)

    def __post_init__(self) -> None:
        pp = self.file.preprocessing
        if "bands" not in pp or "dates" not in pp:
            raise InputError("model file lacks the preprocessing (bands, dates) of a remote model",
                             self.path or "model")
        self.bands = list(pp["bands"])
        self.grid_dates = parse_dates(pp["dates"])
        if pp.get("norm_mean") is not None:
            self.norm_mean = np.asarray(pp["norm_mean"], dtype=np.float32)
            self.norm_std = np.asarray(pp["norm_std"], dtype=np.float32)
        self.scl_invalid = tuple(pp.get("scl_invalid", DEFAULT_SCL_INVALID))

    @property
    def classes(self) -> list[str]:
        return list(self.file.classes or CLASSES)

    @property
    def spatial(self) -> bool:
        return getattr(self.net, "input_kind", "pixel") == "spatial"

    @property
    def output_kind(self) -> str:
        return getattr(self.net, "output_kind", "logits")

    # -- model calls ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def pixel_probabilities(self, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """[P, G, B] reflectance -> [P, K] probabilities (per-pixel models)."""
        out = np.empty((x.shape[0], len(self.classes)), dtype=np.float32)
        for s in range(0, x.shape[0], batch_size):
            # strided inputs are fine (the reader hands a samples-last array transposed; FFDNN reads it as is)
            xb = torch.from_numpy(x[s:s + batch_size]).to(self.device)
            with self.policy.autocast():
                scores = self.model(xb)
            out[s:s + batch_size] = class_probabilities(scores.float(), self.output_kind).cpu().numpy()
        return out

    def explain_pixels(self, x: np.ndarray, batch_size: int = 4096
                       ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(capsule lengths [P, K] or None, date attribution [P, G], frequency attribution [P, G // 2 + 1]) for
        per-pixel models: gradient x input of the predicted class over the dates (bands summed) and over the rfft
        modes of the index traits (:func:`remote.models.frequency_attribution`)."""
        caps = np.empty((x.shape[0], len(self.classes)), dtype=np.float32) if self.output_kind == "capsule" else None
        attr = np.empty(x.shape[:2], dtype=np.float32)
        freq = np.empty((x.shape[0], x.shape[1] // 2 + 1), dtype=np.float32)
        for s in range(0, x.shape[0], batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size])).to(self.device)
            attr[s:s + batch_size] = date_attribution(self.model, xb).cpu().numpy()
            freq[s:s + batch_size] = frequency_attribution(self.model, xb).cpu().numpy()
            if caps is not None:
                with torch.inference_mode():
                    caps[s:s + batch_size] = self.model(xb).float().cpu().numpy()
        return caps, attr, freq

    @torch.inference_mode()
    def spatial_probabilities(self, filled: np.ndarray) -> np.ndarray:
        """[G, B, h, w] reflectance (NaN = no data) -> [K, h, w] probabilities (spatial model)."""
        x = filled
        if self.norm_mean is not None:
            x = (x - self.norm_mean[None, :, None, None]) / self.norm_std[None, :, None, None]
        x = np.nan_to_num(x, nan=0.0).reshape(-1, *x.shape[2:])
        xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device)
        with self.policy.autocast():
            logits = self.model(xb)
        return class_probabilities(logits.float(), self.output_kind)[0].cpu().numpy()

    @property
    def size_divisor(self) -> int:
        return int(getattr(self.model, "size_divisor", 1))


def filled_window(series: S2Series, window: Any, bands: Sequence[str], grid_dates: Sequence[dt.date],
                  scl_invalid: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(gap-filled reflectance [G, B, h, w], valid [h, w]: at least one valid date) for ``window``."""
    obs = series.read(window, bands, scl_invalid)
    valid = ~np.isnan(obs).any(1).all(0)
    filled = fill_gaps(obs, day_numbers(series.dates), day_numbers(grid_dates))
    return filled, valid


def _halo_window(window: Any, halo: int, grid: Grid) -> tuple[Any, int, int]:
    """The window grown by ``halo`` and clipped to the raster; also the offsets of ``window`` inside it."""
    from rasterio.windows import Window

    r0, c0 = max(0, int(window.row_off) - halo), max(0, int(window.col_off) - halo)
    r1 = min(grid.height, int(window.row_off + window.height) + halo)
    c1 = min(grid.width, int(window.col_off + window.width) + halo)
    return Window(c0, r0, c1 - c0, r1 - r0), int(window.row_off) - r0, int(window.col_off) - c0


def class_colormap(n: int) -> dict[int, tuple[int, int, int, int]]:
    cmap = {i: (*PALETTE[i % len(PALETTE)], 255) for i in range(n)}
    cmap[CLASS_NODATA] = (0, 0, 0, 0)
    return cmap


@dataclass
class PredictOutputs:
    """Paths of the files :func:`predict_series` writes (None: not written)."""

    class_map: Path
    probabilities: Path | None = None
    capsules: Path | None = None
    attribution: Path | None = None
    frequency: Path | None = None
    fields_csv: Path | None = None

    @classmethod
    def beside(cls, class_map: str | Path, probabilities: bool = True, explain: bool = False,
               fields: bool = False) -> PredictOutputs:
        """``X.tif`` -> ``X_prob.tif``, ``X_capsules.tif``, ``X_attribution.tif``, ``X_frequency.tif``,
        ``X_fields.csv``."""
        p = Path(class_map)
        stem = p.parent / p.stem
        return cls(p, Path(f"{stem}_prob.tif") if probabilities else None,
                   Path(f"{stem}_capsules.tif") if explain else None,
                   Path(f"{stem}_attribution.tif") if explain else None,
                   Path(f"{stem}_frequency.tif") if explain else None,
                   Path(f"{stem}_fields.csv") if fields else None)

    def paths(self) -> list[Path]:
        return [p for p in vars(self).values() if p is not None]


class _FieldStats:
    """Per-field pixel counts per class and summed probabilities, accumulated tile by tile (per-pixel mode)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.ids: dict[int, int] = {}
        self.counts = np.zeros((0, k), dtype=np.int64)
        self.prob = np.zeros((0, k), dtype=np.float64)
        self.total = np.zeros(0, dtype=np.int64)

    def add(self, fid: np.ndarray, cls: np.ndarray, prob: np.ndarray, valid: np.ndarray) -> None:
        keep = fid > 0
        new = [int(f) for f in np.unique(fid[keep]) if int(f) not in self.ids]
        if new:
            for f in new:
                self.ids[f] = len(self.ids)
            self.counts = np.vstack([self.counts, np.zeros((len(new), self.k), np.int64)])
            self.prob = np.vstack([self.prob, np.zeros((len(new), self.k))])
            self.total = np.concatenate([self.total, np.zeros(len(new), np.int64)])
        if not keep.any():
            return
        u, inv = np.unique(fid[keep], return_inverse=True)
        rows = np.asarray([self.ids[int(f)] for f in u], dtype=np.int64)[inv]
        self.total += np.bincount(rows, minlength=len(self.ids))
        ok = valid[keep]
        r, c = rows[ok], cls[keep][ok]
        np.add.at(self.counts, (r, c), 1)
        np.add.at(self.prob, r, prob[:, keep][:, ok].T)

    def write(self, path: Path, classes: Sequence[str], label: Any, overwrite: bool) -> None:
        with atomic_output(path, overwrite) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["field_id", "pixels", "valid_pixels", "majority"] + [f"frac_{c}" for c in classes]
                       + [f"mean_p_{c}" for c in classes])
            for f, i in sorted(self.ids.items()):
                n = int(self.counts[i].sum())
                maj = classes[int(self.counts[i].argmax())] if n else ""
                w.writerow([label(f), int(self.total[i]), n, maj]
                           + [f"{self.counts[i, j] / n:.4f}" if n else "" for j in range(self.k)]
                           + [f"{self.prob[i, j] / n:.4f}" if n else "" for j in range(self.k)])


def _write_field_table(path: Path, fs: FieldSeries, prob: np.ndarray, classes: Sequence[str], label: Any,
                       overwrite: bool) -> None:
    """Per-field mode CSV: one row per field with its class and probabilities."""
    with atomic_output(path, overwrite) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["field_id", "pixels", "valid_pixels", "dates_observed", "class"] + [f"p_{c}" for c in classes])
        for i, f in enumerate(fs.ids):
            ok = bool(fs.valid[i])
            w.writerow([label(int(f)), int(fs.pixels[i]), int(fs.valid_pixels[i]), int(fs.dates_observed[i]),
                        classes[int(prob[i].argmax())] if ok else ""]
                       + [f"{prob[i, j]:.4f}" if ok else "" for j in range(len(classes))])


@dataclass
class _Plan:
    """What :func:`predict_series` settled before any work: the time grid, masking, tiling and explanations."""

    grid_dates: list[dt.date]
    scl: tuple[int, ...]
    tile: int
    halo: int
    explain: bool
    classes: list[str]

    @property
    def k(self) -> int:
        return len(self.classes)


def _check_request(rm: RemoteModel, explain: bool, fields: str | Path | None, per_field: bool,
                   prob_dtype: str) -> None:
    """What the model and the options must agree on (one-line :class:`InputError` otherwise)."""
    if prob_dtype not in ("float32", "uint8"):
        raise InputError(f"probability dtype must be float32 or uint8, not {prob_dtype!r}")
    if explain and rm.spatial:
        raise InputError("--explain needs a per-pixel model (ffdnn or cnn1d), not the spatial unet2d")
    if per_field and fields is None:
        raise InputError("--per-field needs --fields (a field-ID raster or a vector file)")
    if per_field and rm.spatial:
        raise InputError("--per-field needs a per-pixel model (ffdnn or cnn1d), not the spatial unet2d")


def _plan(series: S2Series, rm: RemoteModel, outputs: PredictOutputs, tile: int, halo: int | None, prob_dtype: str,
          fields: str | Path | None, per_field: bool, scl_invalid: Sequence[int] | None, overwrite: bool) -> _Plan:
    """Check the request against the inputs and the model (one-line :class:`InputError` otherwise), settle the
    output paths and the tiling, and check the outputs can be written; nothing is read or written yet."""
    series.require_bands(rm.bands)
    explain = any(p is not None for p in (outputs.capsules, outputs.attribution, outputs.frequency))
    _check_request(rm, explain, fields, per_field, prob_dtype)
    if fields is not None and outputs.fields_csv is None:
        outputs.fields_csv = PredictOutputs.beside(outputs.class_map, fields=True).fields_csv
    grid_dates = align_grid(rm.grid_dates, series.dates)
    if series.dates[-1] < grid_dates[0] or series.dates[0] > grid_dates[-1]:
        raise InputError(f"no valid dates: the inputs ({series.dates[0]} .. {series.dates[-1]}) lie outside the "
                         f"model's season ({grid_dates[0]} .. {grid_dates[-1]})")
    scl = tuple(rm.scl_invalid if scl_invalid is None else scl_invalid)
    d = rm.size_divisor
    tile = -(-tile // d) * d
    halo = (2 * d if halo is None else -(-halo // d) * d) if rm.spatial else 0
    if rm.output_kind != "capsule":
        outputs.capsules = None    # only the capsule model has capsule activations
    for p in outputs.paths():
        check_output(p, overwrite)
    return _Plan(grid_dates, scl, tile, halo, explain, list(rm.classes))


# -- threads -----------------------------------------------------------------------------------------------------
def _env_count(*names: str) -> int | None:
    for var in names:
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    return None


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:     # not on Linux
        return os.cpu_count() or 1


#: share of the CPUs (beyond one for the writer and one for the main thread) given to reader threads on machines
#: with more than four CPUs: per pixel, reading + resampling + masking + gap filling costs 0.55-0.85 of the FFDNN's
#: single-thread time (benchmarks/remote_tile.py, remote_area.py CPU splits), and torch threads scale sublinearly
READER_SHARE = 0.4


def default_readers(device: Any = "cpu") -> int:
    """Reader threads (each with its own copy of the series) beside the network and the writer.

    ``CONVSUITE_READERS`` in the environment wins. Up to four CPUs: one (the network takes the rest; on two CPUs
    the single reader already keeps pace with a one-thread network). With more CPUs the network's many threads
    outrun one reader: a GPU network leaves every CPU but two to the readers; a CPU network shares them,
    :data:`READER_SHARE` of ``CPUs - 2`` for the readers (8 CPUs: 2 readers, 5 network threads; 16 CPUs: 6 and 9).
    When ``OMP_NUM_THREADS`` / ``CONVSUITE_THREADS`` fix the network's threads, the readers get what is left."""
    n = _env_count("CONVSUITE_READERS")
    if n is not None:
        return n
    cpus = _usable_cpus()
    if cpus <= 4:
        return 1
    if getattr(device, "type", str(device)) != "cpu":
        return max(1, cpus - 2)
    fixed = _env_count("CONVSUITE_THREADS", "OMP_NUM_THREADS")
    if fixed is not None:
        return max(1, cpus - 1 - fixed)
    return max(1, round(READER_SHARE * (cpus - 2)))


def default_threads(readers: int | None = None) -> int:
    """Torch threads for the network while the reader thread(s) and one writer thread run beside it.

    ``OMP_NUM_THREADS`` (or ``CONVSUITE_THREADS``) in the environment wins; otherwise the CPUs this process may run
    on (affinity / cgroup aware) minus one for the reader (up to four CPUs), or minus the writer and the
    ``readers`` (default :func:`default_readers`) above four.
    On a 2-core machine that is one network thread: with the reader on the other core the pipeline keeps both
    busy, while torch's default (one thread per core) would fight the reader and writer for the cores, and on a
    loaded machine its spinning OpenMP workers cost several times the wall time of a single thread. GDAL
    decompression/compression stays single-threaded per call (``GDAL_NUM_THREADS=1``): the reader and writer
    threads are its parallelism. NumPy's BLAS is not on the hot path (gap filling and resampling are elementwise)."""
    n = _env_count("CONVSUITE_THREADS", "OMP_NUM_THREADS")
    if n is not None:
        return n
    cpus = _usable_cpus()
    if cpus <= 4:
        return max(1, cpus - 1)
    return max(1, cpus - 1 - (default_readers() if readers is None else readers))


@contextlib.contextmanager
def torch_threads(n: int) -> Any:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Prefetch:
    """Runs ``read(item)`` for each item in one background thread, ``depth`` items ahead of the consumer, and yields
    ``(item, result)`` in order. GDAL reads and NumPy resampling / gap filling release the GIL, so reading the next
    tile overlaps the network on the current one. An error in the reader is raised in the consumer."""

    _END = object()

    def __init__(self, items: Any, read: Any, depth: int = 2) -> None:
        import queue
        import threading

        self._q: Any = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._items, self._read = items, read
        self.cpu_seconds = 0.0               # CPU time of the reader thread
        self._thread = threading.Thread(target=self._run, name="remote-predict-reader", daemon=True)
        self._thread.start()

    def _put(self, obj: Any) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        t0 = time.thread_time()
        try:
            for item in self._items:
                result = self._read(item)
                self.cpu_seconds = time.thread_time() - t0
                if self._stop.is_set() or not self._put((item, result, None)):
                    return
        except BaseException as exc:  # handed to the consumer
            self._put((None, None, exc))
            return
        self._put(self._END)

    def __iter__(self) -> Any:
        while True:
            got = self._q.get()
            if got is self._END:
                return
            item, result, exc = got
            if exc is not None:
                raise exc
            yield item, result

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _Readers:
    """:class:`_Prefetch` with ``len(states)`` reader threads, each reading through its own copy of the series
    (:func:`remote.join.map_ordered`, :func:`remote.join.worker_copies`); results in item order, at most two per
    thread in flight. ``cpu_seconds`` sums the CPU time of the reads."""

    def __init__(self, items: Any, read: Callable[[Any, Any], Any], states: Sequence[Any]) -> None:
        import threading

        from .join import map_ordered

        self.cpu_seconds = 0.0
        self._lock = threading.Lock()
        self._read = read

        def work(state: Any, item: Any) -> Any:
            t0 = time.thread_time()
            try:
                return read(state, item)
            finally:
                with self._lock:
                    self.cpu_seconds += time.thread_time() - t0

        self._it = map_ordered(items, work, states)

    def __iter__(self) -> Any:
        return self._it

    def close(self) -> None:
        self._it.close()


class _Writer:
    """Writes tiles in one background thread (GDAL compresses the blocks there, off the network's critical path);
    ``submit`` blocks when ``depth`` tiles wait. An error in the writer is raised at the next ``submit`` or at
    ``close``."""

    def __init__(self, write: Any, depth: int = 2) -> None:
        import queue
        import threading

        self._write = write
        self._q: Any = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self.cpu_seconds = 0.0               # CPU time of the writer thread
        self._thread = threading.Thread(target=self._run, name="remote-predict-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.thread_time()
        while True:
            args = self._q.get()
            if args is None:
                return
            if self._error is None:
                try:
                    self._write(*args)
                except BaseException as exc:  # handed to the producer
                    self._error = exc
            self.cpu_seconds = time.thread_time() - t0

    def submit(self, *args: Any) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(args)

    def close(self) -> None:
        """Wait for the queued tiles to be written; raise the writer's error, if any."""
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


# -- outputs -------------------------------------------------------------------------------------------------------
@dataclass
class _Outputs:
    """The open output rasters (inside atomic temporary names) and how probabilities are stored."""

    cls: Any
    prob: Any | None
    expl: list[Any]              # capsules, date attribution, frequency attribution (None: not written)
    prob_dtype: str

    def write_tile(self, window: Any, cls: np.ndarray, prob: np.ndarray, valid: np.ndarray,
                   expl_vals: Sequence[np.ndarray | None]) -> None:
        """Write one tile of every output (``cls`` already nodata outside ``valid``)."""
        h, w = int(window.height), int(window.width)
        self.cls.write(cls, 1, window=window)
        if self.prob is not None:
            if self.prob_dtype == "uint8":
                pw = np.round(prob * PROB_UINT8_SCALE).astype(np.uint8)
                pw[:, ~valid] = 255
            else:
                pw = prob.astype(np.float32)
                pw[:, ~valid] = np.nan
            self.prob.write(pw, window=window)
        for ds, vals in zip(self.expl, expl_vals):
            if ds is None:
                continue
            arr = np.full((ds.count, h, w), np.nan, dtype=np.float32)
            if vals is not None:
                arr[:, valid] = vals.T
            ds.write(arr, window=window)


def _open_outputs(stack: contextlib.ExitStack, outputs: PredictOutputs, rm: RemoteModel, block: RowBlock,
                  plan: _Plan, prob_dtype: str, per_field: bool, overwrite: bool, fmt: str = "COG",
                  compress: str = "deflate") -> _Outputs:
    """Open the class map, probabilities and explanation rasters on the block's grid (Cloud-Optimised GeoTIFFs or
    tiled GeoTIFFs, :func:`remote.writer.raster_output`) under atomic temporary names registered on ``stack``, with
    band descriptions, colour table and tags (and the part tags of a ``--num-parts`` part)."""

    def open_out(path: Path, count: int, dtype: str, nodata: Any, desc: Sequence[str],
                 categorical: bool = False) -> Any:
        ds = stack.enter_context(raster_output(path, block.out_grid, count, dtype, nodata, fmt=fmt,
                                               categorical=categorical, compress=compress, overwrite=overwrite))
        for i, s in enumerate(desc, 1):
            ds.set_band_description(i, s)
        ds.update_tags(**{OUTPUT_TAG: "remote predict"}, **block.tags(categorical))
        return ds

    k, classes, grid_dates = plan.k, plan.classes, plan.grid_dates
    cls_ds = open_out(outputs.class_map, 1, "uint8", CLASS_NODATA,
                      ["class: " + ", ".join(f"{i}={c}" for i, c in enumerate(classes))], categorical=True)
    cls_ds.write_colormap(1, class_colormap(k))
    cls_ds.update_tags(CLASSES=",".join(classes), NODATA_MEANING="no valid observation",
                       MODE="per-field" if per_field else "per-pixel",
                       **{f"CLASS_{i}": c for i, c in enumerate(classes)})
    prob_ds = None
    if outputs.probabilities is not None:
        prob_nodata = 255 if prob_dtype == "uint8" else float("nan")
        prob_ds = open_out(outputs.probabilities, k, prob_dtype, prob_nodata, [f"p({c})" for c in classes])
        if prob_dtype == "uint8":
            prob_ds.scales = [1.0 / PROB_UINT8_SCALE] * k
    expl_ds: list[Any] = [None, None, None]
    if outputs.capsules is not None and rm.output_kind == "capsule":
        expl_ds[0] = open_out(outputs.capsules, k, "float32", float("nan"), [f"capsule length {c}" for c in classes])
    if outputs.attribution is not None:
        expl_ds[1] = open_out(outputs.attribution, len(grid_dates), "float32", float("nan"),
                              [f"attribution {x.isoformat()}" for x in grid_dates])
    if outputs.frequency is not None:
        n_freq = len(grid_dates) // 2 + 1
        season = (grid_dates[-1] - grid_dates[0]).days + (grid_dates[1] - grid_dates[0]).days \
            if len(grid_dates) > 1 else 1
        expl_ds[2] = open_out(outputs.frequency, n_freq, "float32", float("nan"),
                              ["attribution mode 0 (mean)"] + [f"attribution mode {m} (period {season / m:.0f} d)"
                                                               for m in range(1, n_freq)])
    return _Outputs(cls_ds, prob_ds, expl_ds, prob_dtype)


# -- per tile ------------------------------------------------------------------------------------------------------
@dataclass
class _TileInput:
    """What the reader thread prepares for one tile."""

    fid: np.ndarray | None                 # field IDs [h, w]
    filled: np.ndarray | None = None       # gap-filled reflectance [G, B, H, W] of the read window (spatial model)
    x: np.ndarray | None = None            # model input of the valid pixels [P, G, B] (a view of [G, B, P])
    valid: np.ndarray | None = None        # [H, W] at least one valid date
    offset: tuple[int, int] = (0, 0)       # the tile's offset inside the read window (halo)


def _read_tile(series: S2Series, window: Any, rm: RemoteModel, plan: _Plan, grid: Grid, field_src: Any,
               per_field: bool) -> _TileInput:
    """Reader-thread work for one tile: field IDs, then (unless per field) the bands of every date in the window
    (with the halo), SCL masking and gap filling onto the grid, and the per-pixel model input."""
    fid = field_src.read(window) if field_src is not None else None
    if per_field:
        return _TileInput(fid)
    read_win, dr, dc = _halo_window(window, plan.halo, grid)
    filled, valid = filled_window(series, read_win, rm.bands, plan.grid_dates, plan.scl)
    if rm.spatial:
        return _TileInput(fid, filled=filled, valid=valid, offset=(dr, dc))
    x = filled[:, :, valid].transpose(2, 0, 1)     # [P, G, B] view of [G, B, P]: no transposing copy here
    return _TileInput(fid, x=x, valid=valid)


def _pixel_tile(rm: RemoteModel, inp: _TileInput, window: Any, plan: _Plan, batch_size: int
                ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]:
    """The model on one tile: (probabilities [K, h, w], valid [h, w], explanation values per valid pixel)."""
    h, w = int(window.height), int(window.width)
    expl_vals: list[np.ndarray | None] = [None, None, None]
    if rm.spatial:
        dr, dc = inp.offset
        prob = rm.spatial_probabilities(inp.filled)[:, dr:dr + h, dc:dc + w]
        return prob, inp.valid[dr:dr + h, dc:dc + w], expl_vals
    prob = np.zeros((plan.k, h, w), dtype=np.float32)
    if inp.x.shape[0]:
        prob[:, inp.valid] = rm.pixel_probabilities(inp.x, batch_size).T
        if plan.explain:
            expl_vals = list(rm.explain_pixels(inp.x, batch_size))
    return prob, inp.valid, expl_vals


@dataclass
class _FieldPredictions:
    """Per-field mode: each field's mean series classified once."""

    fs: FieldSeries
    prob: np.ndarray                                   # [F, K] (NaN rows: field without data)
    expl: tuple[Any, ...] | None                       # explanation values of the valid fields

    def tile(self, fid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]:
        """(probabilities [K, h, w], valid [h, w], explanation values) painted from the fields in ``fid``."""
        fs = self.fs
        h, w = fid.shape
        pos = np.clip(np.searchsorted(fs.ids, fid), 0, len(fs.ids) - 1)   # fs.ids is sorted
        rows = np.where((fid > 0) & (fs.ids[pos] == fid), pos, -1)
        valid = rows >= 0
        valid[valid] = fs.valid[rows[valid]]
        prob = np.zeros((k, h, w), dtype=np.float32)
        prob[:, valid] = self.prob[rows[valid]].T
        expl_vals: list[np.ndarray | None] = [None, None, None]
        if self.expl is not None:
            vrow = np.cumsum(fs.valid) - 1            # field row -> row among the valid fields
            for j, vals in enumerate(self.expl):
                if vals is not None:
                    expl_vals[j] = vals[vrow[rows[valid]]]
        return prob, valid, expl_vals


def _field_predictions(series: S2Series, rm: RemoteModel, field_src: Any, plan: _Plan, batch_size: int,
                       quiet: bool) -> _FieldPredictions:
    fs = field_series(series, field_src, rm.bands, plan.grid_dates, plan.scl, plan.tile, quiet)
    fprob = np.full((len(fs.ids), plan.k), np.nan, dtype=np.float32)
    fexpl = None
    if fs.valid.any():
        fprob[fs.valid] = rm.pixel_probabilities(fs.x[fs.valid], batch_size)
        if plan.explain:
            fexpl = rm.explain_pixels(fs.x[fs.valid], batch_size)
    return _FieldPredictions(fs, fprob, fexpl)


def _summary(series: S2Series, plan: _Plan, outputs: PredictOutputs, counts: np.ndarray, n_valid: int,
             per_field: bool, fp: _FieldPredictions | None, threads: int, block: RowBlock) -> dict[str, Any]:
    total = block.grid.width * block.height
    out = {"pixels": total, "valid_pixels": n_valid, "nodata_pixels": total - n_valid,
           "tiles": block.n_windows(plan.tile), "tile": plan.tile, "halo": plan.halo, "dates": len(series.dates),
           "grid_dates": len(plan.grid_dates), "mode": "per-field" if per_field else "per-pixel",
           "class_counts": {c: int(n) for c, n in zip(plan.classes, counts)},
           "outputs": {k_: str(v) for k_, v in vars(outputs).items() if v is not None}, "threads": threads}
    if fp is not None:
        out.update(fields=len(fp.fs.ids), fields_with_data=int(fp.fs.valid.sum()))
    if block.is_part:
        out.update(part=f"{block.part_id}/{block.num_parts}", rows=[block.row0, block.row1])
    return out


def predict_series(series: S2Series, rm: RemoteModel, outputs: PredictOutputs, *, tile: int = 256,
                   halo: int | None = None, batch_size: int = 8192, prob_dtype: str = "float32",
                   fields: str | Path | None = None, field_id_attr: str | None = None, per_field: bool = False,
                   scl_invalid: Sequence[int] | None = None, overwrite: bool = False,
                   quiet: bool = False, threads: int | None = None, fmt: str = "COG", compress: str = "deflate",
                   num_parts: int = 1, part_id: int = 0, readers: int | None = None) -> dict[str, Any]:
    """Predict the whole raster tile by tile; returns a summary (pixels, valid pixels, class counts, tiles).

    ``halo`` (spatial model only) defaults to ``2 x size_divisor`` pixels around each tile; ``tile`` and ``halo``
    are rounded up to multiples of the model's ``size_divisor``. ``fields`` (a field-ID raster or a vector file)
    adds the per-field CSV; with ``per_field`` each field's mean time series is classified once and the field's
    pixels get its class and probabilities (pixels outside fields stay nodata).

    The work is a three-stage pipeline: reader threads prepare the next tiles (reading, resampling, masking, gap
    filling) while the network runs on the current one, and a writer thread writes (and compresses) the previous
    one. ``readers`` (default :func:`default_readers`: one up to four CPUs, more on larger machines and beside a
    GPU) reader threads each read through their own copy of the series (:func:`remote.join.worker_copies`,
    :func:`remote.join.map_ordered`: tiles come back in order, at most two per reader in flight; the outputs are
    the same bit for bit whatever the count). ``threads``: torch threads for the network (default
    :func:`default_threads`). The summary's ``seconds`` gives the loop's wall time and the CPU time of each stage
    (``network``: the main thread: model and bookkeeping; ``read``: the reader threads together; ``write``: the
    writer thread): when ``read`` (per reader) and ``write`` stay below ``network`` and cores are free for them,
    the wall time is the network's.

    Outputs are Cloud-Optimised GeoTIFFs (``fmt="COG"``) or tiled GeoTIFFs (``"GTiff"``), see :mod:`remote.writer`.
    With ``num_parts`` > 1 only row block ``part_id`` of the grid is predicted and written, each output a raster of
    its own on the block's grid (:class:`remote.join.RowBlock`; ``outputs`` are then the part paths); reads use the
    whole grid's windows, so a spatial model's halo reaches across the block edge as in the whole run. A part
    without valid pixels is written (nodata), as the whole run's rows would be.
    """
    plan = _plan(series, rm, outputs, tile, halo, prob_dtype, fields, per_field, scl_invalid, overwrite)
    g = series.grid
    if num_parts > 1 and (fields is not None or per_field):
        raise InputError("--fields needs the whole map: not with --num-parts (join the parts with 'remote mosaic', "
                         "or run the fields without parts)")
    block = RowBlock.part(g, num_parts, part_id) if num_parts > 1 else RowBlock.whole(g)
    field_src = open_fields(fields, g, field_id_attr) if fields is not None else None
    readers = default_readers(rm.device) if readers is None else max(1, int(readers))
    threads = default_threads(readers) if threads is None else max(1, int(threads))

    import rasterio

    counts = np.zeros(plan.k, dtype=np.int64)
    n_valid = 0
    fp = None
    env = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": 256}
    if "GDAL_NUM_THREADS" not in os.environ:
        env["GDAL_NUM_THREADS"] = "1"
    with contextlib.ExitStack() as stack:
        # a bounded GDAL block cache (MB; GDAL_CACHEMAX in the environment wins) keeps memory flat in raster size
        stack.enter_context(rasterio.Env(**env))
        stack.enter_context(torch_threads(threads))
        if per_field:
            fp = _field_predictions(series, rm, field_src, plan, batch_size, quiet)
        outs = _open_outputs(stack, outputs, rm, block, plan, prob_dtype, per_field, overwrite, fmt, compress)
        stats = _FieldStats(plan.k) if field_src is not None and not per_field else None
        # several readers only where each has its own series copy and no shared field raster is read
        copies = worker_copies(series, readers) if readers > 1 and field_src is None and not per_field else [series]
        with contextlib.ExitStack() as opened:
            for c in copies:
                opened.enter_context(c)
            # threads are stopped before the series and the outputs close (ExitStack runs this first)
            if len(copies) > 1:
                reader = _Readers(block.windows(plan.tile),
                                  lambda src, wins: _read_tile(src, wins[0], rm, plan, g, field_src, per_field),
                                  copies)
            else:
                reader = _Prefetch(block.windows(plan.tile),      # (read window in g, write window in the block)
                                   lambda wins: _read_tile(series, wins[0], rm, plan, g, field_src, per_field))
            writer = _Writer(outs.write_tile)
            t_wall, t_cpu = time.perf_counter(), time.thread_time()
            try:
                for (window, write_window), inp in progress(reader, total=block.n_windows(plan.tile),
                                                            desc="predict", unit="tile", quiet=quiet):
                    if per_field:
                        prob, valid, expl_vals = fp.tile(inp.fid, plan.k)
                    else:
                        prob, valid, expl_vals = _pixel_tile(rm, inp, window, plan, batch_size)
                    cls = prob.argmax(0).astype(np.uint8)
                    cls[~valid] = CLASS_NODATA
                    writer.submit(write_window, cls, prob, valid, expl_vals)
                    counts += np.bincount(cls[valid], minlength=plan.k)[:plan.k]
                    n_valid += int(valid.sum())
                    if stats is not None:
                        stats.add(inp.fid, cls, prob, valid)
            except BaseException:
                reader.close()
                with contextlib.suppress(BaseException):
                    writer.close()
                raise
            reader.close()
            writer.close()
            timing = {"wall": time.perf_counter() - t_wall, "network": time.thread_time() - t_cpu,
                      "read": reader.cpu_seconds, "write": writer.cpu_seconds}
        if n_valid == 0 and not block.is_part:   # raised inside the atomic outputs: nothing is left behind
            where = "field " if per_field else ""
            masked = f" or masked by SCL classes {','.join(map(str, plan.scl))}" if plan.scl else ""
            raise InputError(f"no valid dates: every {where}pixel is nodata{masked} on every date "
                             "(check the inputs, --scl-invalid, --offset)")
        if per_field:
            _write_field_table(outputs.fields_csv, fp.fs, fp.prob, rm.classes, field_src.label, overwrite)
        elif stats is not None:
            stats.write(outputs.fields_csv, rm.classes, field_src.label, overwrite)
    out = _summary(series, plan, outputs, counts, n_valid, per_field, fp, threads, block)
    out["readers"] = len(copies)
    out["seconds"] = {k: round(v, 2) for k, v in timing.items()}
    return out


# -- batches -------------------------------------------------------------------------------------------------------
def writes_capsules(model_file: ModelFile) -> bool:
    """True when the architecture of ``model_file`` outputs class capsules (its ``--explain`` writes
    ``X_capsules.tif``); read from the registered class, without building the network."""
    from shared_backbones.registry import model_entry

    from . import models

    try:
        ret = model_entry(model_file.arch).factory.__annotations__.get("return")
    except Exception:  # an unknown architecture is refused when the model is built  # noqa: BLE001
        return False
    cls = getattr(models, ret, None) if isinstance(ret, str) else ret
    return getattr(cls, "output_kind", "logits") == "capsule"


def plan_predict(inputs: Sequence[str | Path], output: str | Path, *, model: str | Path | None = None,
                 each: bool = False, probabilities: bool = True, explain: bool = False, capsules: bool = True,
                 fields: bool = False, fields_csv: str | Path | None = None, overwrite: bool = False,
                 num_parts: int = 1, part_id: int = 0, preview: str | Path | None = None) -> Plan:
    """Plan ``remote predict``: all inputs -> the class map ``output`` (and ``X_prob.tif``, explanations,
    ``X_fields.csv`` beside it), or with ``each`` one set per input in the folder ``output``. Roles: ``class_map``,
    ``probabilities``, ``capsules``, ``attribution``, ``frequency``, ``fields_csv``. ``capsules``: the model has
    class capsules (:func:`writes_capsules`). Checked before any work (:func:`remote.batch.plan_series`). Without
    ``each``, ``num_parts`` > 1 splits the output grid into row blocks: this run writes part ``part_id`` of every
    raster, ``X.part-K-of-N.tif`` (:func:`remote.join.part_path`; joined by ``remote mosaic``). ``preview``: a
    quick-look PNG (role ``preview``; not with ``each`` or grid parts)."""
    if each and fields_csv is not None:
        raise InputError("--fields-csv names one file: it cannot be used with --each")
    grid_parts = num_parts > 1 and not each
    if grid_parts and (fields or fields_csv is not None):
        raise InputError("--fields needs the whole map: not with --num-parts (join the parts with 'remote mosaic', "
                         "or run the fields without parts)")
    if preview is not None and (each or grid_parts):
        raise InputError("--preview shows one map: not with --each or --num-parts (preview the joined map with "
                         "'remote mosaic ... --preview')")

    def outputs_of(class_map: Path) -> dict[str, Path]:
        outs = PredictOutputs.beside(class_map, probabilities=probabilities, explain=explain,
                                     fields=fields or fields_csv is not None)
        if not capsules:
            outs.capsules = None
        if fields_csv is not None:
            outs.fields_csv = Path(fields_csv)
        named = {k: v for k, v in vars(outs).items() if v is not None}
        if grid_parts:
            named = {k: part_path(v, part_id, num_parts) for k, v in named.items()}
        return named | ({"preview": Path(preview)} if preview is not None else {})

    writers = {"class_map": Writer(GEOTIFF, hints={".png": "the class map is a GeoTIFF; --preview writes a PNG"}),
               "fields_csv": Writer((".csv",), option="--fields-csv"),
               "preview": Writer((".png",), option="--preview")}
    plan = plan_series(inputs, output, outputs_of, each=each, writers=writers,
                       other_inputs=[model] if model is not None else [], overwrite=overwrite,
                       num_parts=1 if grid_parts else num_parts, part_id=0 if grid_parts else part_id)
    if grid_parts:
        from shared_backbones.options import check_part

        check_part(num_parts, part_id)
        for job in plan.jobs:
            job.data["part"] = (part_id, num_parts)
    return plan


def predict_files(plan: Plan, rm: RemoteModel, *, read: SeriesOptions | None = None, tile: int = 256,
                  halo: int | None = None, batch_size: int = 8192, prob_dtype: str = "float32",
                  fields: str | Path | None = None, field_id_attr: str | None = None, per_field: bool = False,
                  scl_invalid: Sequence[int] | None = None, overwrite: bool = False, quiet: bool = False,
                  threads: int | None = None, fmt: str = "COG", compress: str = "deflate",
                  on_series: Callable[[S2Series], None] | None = None,
                  report: Callable[[Job, dict[str, Any]], None] | None = None, prog: str = "remote") -> int:
    """Predict every job of ``plan`` (:func:`plan_predict`) with :func:`predict_series` (a job planned as a part of
    the output grid, ``job.data["part"]``, predicts that row block; a ``preview`` output is drawn from the written
    maps, :func:`remote.preview.write_preview`); a bad input is reported and the others go on. The series are
    read with ``read`` (the model's stored offset applies when it sets none);
    ``on_series`` sees each opened series, ``report`` each summary. Returns 0, or 2 when some input failed."""
    read = read or SeriesOptions()
    if plan.jobs:  # the model and the options agree before any work
        explain = any(r in j.outputs for j in plan.jobs for r in ("capsules", "attribution", "frequency"))
        _check_request(rm, explain, fields, per_field, prob_dtype)

    def work(job: Job) -> None:
        t0 = time.perf_counter()
        series = read.open(job.data["inputs"], exclude=job.data["exclude"],
                           default_offset=rm.preprocessing.get("offset"),
                           cloud_mask=bool(rm.scl_invalid if scl_invalid is None else scl_invalid))
        if on_series is not None:
            on_series(series)
        outputs = {k: v for k, v in job.outputs.items() if k != "preview"}
        part_id, num_parts = job.data.get("part", (0, 1))
        s = predict_series(series, rm, PredictOutputs(**outputs), tile=tile, halo=halo, batch_size=batch_size,
                           prob_dtype=prob_dtype, fields=fields, field_id_attr=field_id_attr, per_field=per_field,
                           scl_invalid=scl_invalid, overwrite=overwrite, quiet=quiet, threads=threads, fmt=fmt,
                           compress=compress, num_parts=num_parts, part_id=part_id)
        if "preview" in job.outputs:
            from .preview import series_footprints, write_preview

            s["preview"] = write_preview(
                job.outputs["preview"], class_map=outputs["class_map"], probabilities=outputs.get("probabilities"),
                footprints=series_footprints(series, series.grid.crs), overwrite=overwrite,
                title=f"remote predict: {Path(outputs['class_map']).name}")
            s["outputs"]["preview"] = str(job.outputs["preview"])
        s["seconds"]["job"] = round(time.perf_counter() - t0, 2)
        if report is not None:
            report(job, s)

    return run_jobs(plan, work, prog=prog, quiet=quiet)
