"""Lightning training for audiosep: Conv-TasNet with SI-SNR + utterance-level PIT.

Data: a LibriMix or WHAM! subset folder as their generators write it (``mix_clean/``, ``mix_both/``, ``mix_single/``,
``s1/``, ``s2/`` ..., ``noise/``; ``mix_type`` picks the mixture, LibriMix's metadata CSV lists the utterances where
present), the suite's own ``mix/``, ``s1/``, ``s2/`` ... (:mod:`audiosep.mixtures`), or dynamic mixing from a folder of
single-speaker files (random crops, different speakers when the files sit in one folder per speaker, the other voices at
-5..5 dB relative to the first). Adam 1e-3 halved after 3 epochs without improvement (or a cosine decay), gradient
clipping at L2 norm 5 (the paper's recipe); precision from the suite's policy. Validation metrics are torchmetrics
``Metric`` objects (SI-SNR under the best permutation, and SI-SNRi against the mixture), summed across DDP ranks; the
validation set is split over ranks without repeats, so the figures equal a single process's. The best checkpoint
(highest validation SI-SNR) is exported with its SI-SNR and SI-SNRi.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset
from torchmetrics import Metric

from audiosep.metrics import pit_si_snr_loss, reorder, si_snr
from audiosep.mixtures import find_mixtures
from shared_backbones.checkpoint import read_torch_file
from shared_backbones.cliutil import check_output
from shared_backbones.errors import InputError
from shared_backbones.folds import kfold_splits
from shared_backbones.options import duration_seconds

from .base import SuiteModule, eval_sampler
from .export import export_checkpoint
from .trainer import FitResult, child_ranks, resolve_accelerator, train_run, work_folder


class SeparationMetric(Metric):
    """Mean over utterances and sources of SI-SNR (``improvement=False``) or SI-SNRi (``True``: minus the SI-SNR of
    the unprocessed mixture against the same reference), for estimates already in the reference order. The sums are
    states reduced by ``sum`` across processes."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, improvement: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.improvement = improvement
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, estimate: torch.Tensor, target: torch.Tensor, mixture: torch.Tensor | None = None) -> None:
        est, tgt = estimate.double(), target.double()
        value = si_snr(est, tgt)
        if self.improvement:
            value = value - si_snr(mixture.double().expand_as(tgt), tgt)
        self.total += value.sum()
        self.count += value.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


def _crop(arrays: list[np.ndarray], n: int | None, rng: np.random.Generator | None) -> list[np.ndarray]:
    length = min(len(a) for a in arrays)
    if n is None or length <= n:
        out = [a[:length] for a in arrays]
        return out if n is None else [np.pad(a, (0, n - length)) for a in out]
    start = int(rng.integers(0, length - n + 1)) if rng is not None else 0
    return [a[start : start + n] for a in arrays]


def _rng() -> np.random.Generator:
    """A NumPy generator drawn from torch's (seeded by ``--seed``, and per data-loader worker by Lightning), so
    random crops and mixtures repeat with the seed and still differ from epoch to epoch."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


def _read(path: Path, rate: int) -> np.ndarray:
    a, r = sf.read(str(path), dtype="float32", always_2d=True)
    if r != rate:
        raise InputError(f"sample rate {r} Hz, expected {rate} Hz (resample the data set first)", path)
    return a.mean(1)


class LibriMixDataset(Dataset):
    """Mixtures and their sources (:func:`audiosep.mixtures.find_mixtures`: LibriMix's or WHAM!'s
    ``mix_<mix_type>/`` and ``s1/`` ..., or the suite's ``mix/``) with random crops of ``segment`` seconds;
    ``indices`` keeps those utterances only (a fold)."""

    def __init__(
        self,
        root: str | Path,
        rate: int = 8000,
        segment: float | None = 4.0,
        indices: list[int] | None = None,
        train: bool = True,
        mix_type: str = "clean",
    ) -> None:
        self.root = Path(root)
        found = find_mixtures(self.root, mix_type)
        self.num_sources = found.num_sources
        keep = range(len(found.mixtures)) if indices is None else indices
        self.files = [found.mixtures[i] for i in keep]
        self.refs = [found.sources[i] for i in keep]
        self.rate, self.train = rate, train
        self.n = None if segment is None else int(segment * rate)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = [_read(p, self.rate) for p in (self.files[i], *self.refs[i])]
        rng = _rng() if self.train else None
        arrays = _crop(arrays, self.n, rng)
        return torch.from_numpy(arrays[0])[None], torch.from_numpy(np.stack(arrays[1:]))


class DynamicMixDataset(Dataset):
    """On-the-fly mixtures of ``num_sources`` random single-speaker files: random crops, files of different speakers
    when the folder holds one subfolder per speaker, each source RMS-normalised and the others at -5..5 dB relative
    to the first. ``speed_perturb`` s plays each source at a random speed in [1-s, 1+s] (new voices from the same
    speakers). Files are read once and kept in memory when they total less than ``cache_mb``."""

    def __init__(
        self,
        folder: str | Path,
        rate: int = 8000,
        segment: float = 4.0,
        num_sources: int = 2,
        length: int = 1000,
        seed: int | None = None,
        cache_mb: int = 512,
        speed_perturb: float = 0.0,
    ) -> None:
        root = Path(folder)
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".wav", ".flac"))
        if len(self.files) < num_sources:
            raise InputError(f"dynamic mixing needs at least {num_sources} audio files", folder)
        groups: dict[Path, list[int]] = {}
        for j, p in enumerate(self.files):
            groups.setdefault(p.parent, []).append(j)
        # one speaker per subfolder when there are enough of them; else every file is its own "speaker"
        self.speakers = list(groups.values()) if len(groups) >= num_sources and root not in groups else None
        self.rate, self.n, self.k, self.length, self.seed = rate, int(segment * rate), num_sources, length, seed
        self.cache: dict[int, np.ndarray] = {}
        self.cache_ok = sum(p.stat().st_size for p in self.files) < cache_mb * 2**20
        self.speed = float(speed_perturb)

    def __len__(self) -> int:
        return self.length

    def _load(self, j: int) -> np.ndarray:
        if j in self.cache:
            return self.cache[j]
        a = _read(self.files[j], self.rate)
        if self.cache_ok:
            self.cache[j] = a
        return a

    def _source(self, a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random crop of ``n`` samples; with ``speed_perturb`` s, played at a random speed in [1-s, 1+s] (linear
        interpolation: pitch and formants move together, a new vocal-tract length; the usual speed perturbation)."""
        if not self.speed:
            return _crop([a], self.n, rng)[0]
        f = float(rng.uniform(1 - self.speed, 1 + self.speed))
        span = int(np.ceil((self.n - 1) * f)) + 1
        seg = _crop([a], span, rng)[0]
        return np.interp(np.arange(self.n) * f, np.arange(span), seg).astype(np.float32)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = _rng() if self.seed is None else np.random.default_rng(self.seed + i)
        if self.speakers is not None:
            spk = rng.choice(len(self.speakers), self.k, replace=False)
            picks = [self.speakers[s][int(rng.integers(len(self.speakers[s])))] for s in spk]
        else:
            picks = list(rng.choice(len(self.files), self.k, replace=False))
        srcs = [self._source(self._load(j), rng) for j in picks]
        gains = np.concatenate(([0.0], rng.uniform(-5, 5, self.k - 1)))
        srcs = np.stack([s / (np.sqrt((s**2).mean()) + 1e-8) * 0.05 * 10 ** (g / 20) for s, g in zip(srcs, gains)])
        return torch.from_numpy(srcs.sum(0).astype(np.float32))[None], torch.from_numpy(srcs.astype(np.float32))


class TimeCosineLR(L.Callback):
    """Learning rate on a cosine over the *wall-time* budget (``--max-time``), after a linear warm-up over its first
    ``warmup`` fraction: with a time budget the number of steps is not known in advance, so a step-based schedule
    either stops early at a high rate or never decays. The rate set here overrides the optimiser's."""

    def __init__(self, budget_s: float, lr: float, warmup: float = 0.03, floor: float = 0.02) -> None:
        self.budget, self.lr, self.warmup, self.floor = budget_s, lr, warmup, floor
        self.start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import time

        self.start = time.monotonic()
        timer = next((cb for cb in trainer.callbacks if type(cb).__name__ == "Timer"), None)
        if timer is not None and timer.time_elapsed("train") > 0:  # resumed: continue where the schedule was
            self.start -= timer.time_elapsed("train") + timer.time_elapsed("validate")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        import math
        import time

        frac = min(1.0, (time.monotonic() - (self.start or time.monotonic())) / self.budget)
        if frac < self.warmup:
            scale = (frac + 1e-3) / self.warmup
        else:
            cosine = 0.5 * (1 + math.cos(math.pi * (frac - self.warmup) / (1 - self.warmup)))
            scale = self.floor + (1 - self.floor) * cosine
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = self.lr * min(1.0, scale)


class AudiosepDataModule(L.LightningDataModule):
    """Train/validation split of a mixture folder (``val_dir`` or a k-fold split; ``mix_type`` picks LibriMix's or
    WHAM!'s ``mix_clean``/``mix_both``/``mix_single``), or dynamic mixing."""

    def __init__(
        self,
        data_dir: str,
        val_dir: str | None = None,
        dynamic_mixing: bool = False,
        rate: int = 8000,
        segment: float = 4.0,
        batch_size: int = 4,
        num_workers: int = 0,
        fold: int = 0,
        folds: int = 5,
        epoch_size: int = 1000,
        speed_perturb: float = 0.0,
        mix_type: str = "clean",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def num_sources(self) -> int | None:
        """Sources per mixture of the data (None: dynamic mixing without a validation folder, any count)."""
        hp = self.hparams
        if hp.val_dir:
            return LibriMixDataset(hp.val_dir, hp.rate, None, train=False, mix_type=hp.mix_type).num_sources
        if hp.dynamic_mixing:
            return None
        return LibriMixDataset(hp.data_dir, hp.rate, mix_type=hp.mix_type).num_sources

    def _check_sources(self, found: int) -> None:
        """The model being trained must give as many sources as the data has (one line otherwise)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        want = len((getattr(module, "suite_cfg", None) or {}).get("classes") or [])
        if want and want != found:
            raise InputError(f"the data has {found} source(s) per mixture but the model gives {want} "
                             "(num_sources)", self.hparams.val_dir or self.hparams.data_dir)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if hp.val_dir:
            self.val_set = LibriMixDataset(hp.val_dir, hp.rate, None, train=False, mix_type=hp.mix_type)
            self.train_set = (
                DynamicMixDataset(
                    hp.data_dir, hp.rate, hp.segment, self.val_set.num_sources, hp.epoch_size,
                    speed_perturb=hp.speed_perturb,
                )
                if hp.dynamic_mixing
                else LibriMixDataset(hp.data_dir, hp.rate, hp.segment, mix_type=hp.mix_type)
            )
            if not hp.dynamic_mixing and self.train_set.num_sources != self.val_set.num_sources:
                raise InputError(f"{self.train_set.num_sources} source(s) per mixture in {hp.data_dir} but "
                                 f"{self.val_set.num_sources} in the validation folder", hp.val_dir)
            self._check_sources(self.val_set.num_sources)
            return
        if hp.dynamic_mixing:
            raise InputError("dynamic mixing needs --val-dir (a mixture folder) for validation", hp.data_dir)
        n = len(LibriMixDataset(hp.data_dir, hp.rate, mix_type=hp.mix_type))
        train_idx, val_idx = kfold_splits(n, hp.folds, seed=0)[hp.fold]
        self.train_set = LibriMixDataset(hp.data_dir, hp.rate, hp.segment, list(train_idx), mix_type=hp.mix_type)
        self.val_set = LibriMixDataset(hp.data_dir, hp.rate, None, list(val_idx), train=False, mix_type=hp.mix_type)
        self._check_sources(self.val_set.num_sources)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            num_workers=self.hparams.num_workers,
            drop_last=len(self.train_set) > self.hparams.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = None
        if trainer is not None and trainer.world_size > 1:  # each utterance scored once over all ranks
            sampler = eval_sampler(self.val_set, trainer.world_size, trainer.global_rank)
        return DataLoader(self.val_set, batch_size=1, sampler=sampler, num_workers=self.hparams.num_workers)

    def validation_size(self) -> int:
        """Number of validation mixtures (known before any process is launched)."""
        hp = self.hparams
        if hp.val_dir:
            return len(LibriMixDataset(hp.val_dir, hp.rate, None, train=False, mix_type=hp.mix_type))
        files = LibriMixDataset(hp.data_dir, hp.rate, mix_type=hp.mix_type).files
        if not 2 <= hp.folds <= len(files):
            raise InputError(f"--folds {hp.folds}: needs 2 .. {len(files)} (the number of mixtures)", hp.data_dir)
        if not 0 <= hp.fold < hp.folds:
            raise InputError(f"--fold {hp.fold} out of range (0..{hp.folds - 1})")
        return len(kfold_splits(len(files), hp.folds, seed=0)[hp.fold][1])


class AudiosepModule(SuiteModule):
    """Negative SI-SNR with utterance-level PIT; validation logs ``val_si_snr`` and ``val_si_snri`` (dB, torchmetrics
    metrics synced across ranks) and ``val_loss`` = -``val_si_snr``."""

    def __init__(
        self,
        arch: str = "convtasnet",
        arch_kwargs: dict | None = None,
        sample_rate: int = 8000,
        num_sources: int = 2,
        lr: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        kw = {**(arch_kwargs or {}), "num_sources": num_sources}
        super().__init__(
            task="audiosep",
            arch=arch,
            arch_kwargs=kw,
            classes=[f"s{k + 1}" for k in range(num_sources)],
            preprocessing={"sample_rate": sample_rate},
            optimizer="adam",
            lr=lr,
            scheduler=kwargs.pop("scheduler", "plateau"),
            scheduler_patience=3,
            scheduler_factor=0.5,
            monitor="val_si_snr",
            mode="max",
            **kwargs,
        )
        self.val_si_snr = SeparationMetric()
        self.val_si_snri = SeparationMetric(improvement=True)

    def training_step(self, batch, batch_idx):
        mix, srcs = batch
        loss, _ = pit_si_snr_loss(self(mix).float(), srcs)
        self.log("train_loss", loss, prog_bar=True, batch_size=mix.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        mix, srcs = batch
        est = self(mix).float()
        _, perm = pit_si_snr_loss(est, srcs)
        est = reorder(est, perm)
        self.val_si_snr.update(est, srcs)
        self.val_si_snri.update(est, srcs, mix)

    def on_validation_epoch_end(self) -> None:
        snr, snri = self.val_si_snr.compute(), self.val_si_snri.compute()
        self.val_si_snr.reset()
        self.val_si_snri.reset()
        self.log_dict({"val_si_snr": snr, "val_si_snri": snri, "val_loss": -snr}, prog_bar=True)
        self.last_val = {"val_si_snr": float(snr), "val_si_snri": float(snri)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if getattr(self, "last_val", None):
            checkpoint["audiosep_val"] = dict(self.last_val)


def _auto_threads(module: AudiosepModule, rate: int, sources: int, segment: float, batch_size: int,
                  accelerator: str, quiet: bool) -> int | None:
    """``threads="auto"``: on the CPU, the faster of one thread and torch's count for a training step (forward,
    PIT SI-SNR loss, backward) of this model on a batch of this shape; None (torch's default) on an accelerator."""
    from shared_backbones.timing import pick_cpu_threads

    if accelerator not in ("cpu", "auto") or (accelerator == "auto" and torch.cuda.is_available()):
        return None
    gen = torch.Generator().manual_seed(0)
    srcs = torch.randn(batch_size, sources, max(256, int(segment * rate)), generator=gen)
    mix = srcs.sum(1, keepdim=True)

    def step() -> None:
        loss, _ = pit_si_snr_loss(module(mix).float(), srcs)
        loss.backward()

    try:
        best, per_step = pick_cpu_threads(step, repeats=5, steps_per_run=4)  # ~50 steps, 2-3 s
    finally:
        module.zero_grad(set_to_none=True)
    if not quiet and per_step:
        timings = ", ".join(f"{n}: {s * 1e3:.0f} ms" for n, s in sorted(per_step.items()))
        print(f"threads auto: {best} (a training step took {timings})", flush=True)
    return best


def train_audiosep(
    data_dir: str | Path,
    out: str | Path,
    *,
    arch: str = "convtasnet-small",
    arch_kwargs: dict | None = None,
    reversible: bool = False,
    val_dir: str | Path | None = None,
    dynamic_mixing: bool = False,
    mix_type: str = "clean",
    sample_rate: int = 8000,
    num_sources: int | None = None,
    segment: float = 4.0,
    batch_size: int = 4,
    epochs: int = 50,
    max_steps: int = -1,
    max_time: str | float | None = None,
    lr: float = 1e-3,
    scheduler: str = "plateau",
    epoch_size: int = 1000,
    speed_perturb: float = 0.0,
    precision: str = "auto",
    device: str | None = None,
    accelerator: str | None = None,
    devices: int | str = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    fold: int = 0,
    folds: int = 5,
    workers: int = 0,
    work_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    quiet: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    limit_val_batches: int | float | None = None,
    threads: int | str | None = None,
) -> FitResult:
    """Train a separation model and export the best checkpoint (highest validation SI-SNR) to ``out``, the suite's
    model file, with its validation SI-SNR and SI-SNRi (dB) in ``metrics``, through the suite's one training path
    (:func:`pipelines.trainer.train_run`: seed before the model is built, so two runs with one seed are identical).
    ``resume="last"`` continues from the work folder's ``last.ckpt`` (:func:`pipelines.trainer.work_folder`;
    ``run_dir`` is the older name of ``work_dir``). ``threads``: torch intra-op threads during the fit (restored
    after; default: torch's). On a small CPU shared with other jobs one thread trains the small presets several
    times faster per wall second than two. ``mix_type``: LibriMix's / WHAM!'s ``mix_clean``, ``mix_both`` or
    ``mix_single`` (one source: s1). ``num_sources``: default the data's count (``s1/``, ``s2/`` ...; 2 for dynamic
    mixing without ``val_dir``); another count than the data's is refused. Returns the fit result; its ``metrics``
    hold the best checkpoint's validation figures."""
    if speed_perturb and not dynamic_mixing:
        raise InputError("--speed-perturb needs --dynamic-mixing (it perturbs the sources of on-the-fly mixtures)")
    if not 0 <= speed_perturb < 1:
        raise InputError(f"--speed-perturb must be in [0, 1), got {speed_perturb:g}")
    resolve_accelerator(device, devices, accelerator)  # an unavailable device: one line, before any work
    check_output(out, overwrite or resume is not None)  # before any work
    budget = duration_seconds(max_time)
    if scheduler == "time-cosine" and not budget:
        raise InputError("--scheduler time-cosine needs --max-time (the schedule runs over the time budget)")
    if reversible:
        arch_kwargs = {**(arch_kwargs or {}), "reversible": True}
    dm = AudiosepDataModule(
        str(data_dir),
        None if val_dir is None else str(val_dir),
        dynamic_mixing,
        sample_rate,
        segment,
        batch_size,
        num_workers=workers,
        fold=fold,
        folds=folds,
        epoch_size=epoch_size,
        speed_perturb=speed_perturb,
        mix_type=mix_type,
    )
    has = dm.num_sources()
    if num_sources is None:
        num_sources = has or 2
    elif has is not None and has != num_sources:
        raise InputError(f"--sources {num_sources}, but the data has {has} source(s) per mixture",
                         val_dir or data_dir)
    if dynamic_mixing and num_sources < 2:
        raise InputError("dynamic mixing needs 2 or more sources per mixture (--sources)", val_dir or data_dir)
    val_size = dm.validation_size()
    old_threads = torch.get_num_threads()
    chosen: dict[str, Any] = {"threads": threads}

    def make_module() -> AudiosepModule:
        module = AudiosepModule(
            arch=arch,
            arch_kwargs=arch_kwargs,
            sample_rate=sample_rate,
            num_sources=num_sources,
            lr=lr,
            scheduler=None if scheduler == "time-cosine" else scheduler,
        )
        if threads == "auto":
            where = device if device not in (None, "auto") else (accelerator or "auto")
            chosen["threads"] = _auto_threads(module, sample_rate, num_sources, segment, batch_size, where, quiet)
        if chosen["threads"] is not None:
            torch.set_num_threads(max(1, int(chosen["threads"])))
        return module

    path = work_folder(out, work_dir or run_dir)
    try:
        with child_ranks():
            res = train_run(
                None,
                path,
                make_module,
                dm,
                val_size=val_size,
                val_what="validation mixture(s)",
                seed=seed,
                device=device,
                devices=devices,
                accelerator=accelerator,
                precision=precision,
                num_nodes=num_nodes,
                strategy=strategy,
                max_time=budget,
                resume=resume,
                quiet=quiet,
                max_epochs=epochs,
                max_steps=max_steps,
                monitor="val_si_snr",
                mode="max",
                gradient_clip_val=5.0,
                log_every_n_steps=5,
                limit_val_batches=limit_val_batches,
                callbacks=[TimeCosineLR(budget, lr)] if scheduler == "time-cosine" else None,
            )
            res.metrics = {**res.metrics, "steps": int(res.global_step)}
            if chosen["threads"] is not None:
                res.metrics = {**res.metrics, "threads": int(chosen["threads"])}
            if res.best_checkpoint is not None:
                val = read_torch_file(res.best_checkpoint).get("audiosep_val") or {}
                res.metrics = {**res.metrics, **val}
                if res.is_global_zero:
                    res.model_file = export_checkpoint(res.best_checkpoint, out, overwrite=True, metrics=val)
    finally:
        torch.set_num_threads(old_threads)
    return res
