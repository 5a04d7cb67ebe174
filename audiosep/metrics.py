"""Separation metrics and losses: SI-SNR, SDR, utterance-level permutation invariant training (PIT)."""

from __future__ import annotations

import itertools

import torch

EPS = 1e-8


def si_snr(estimate: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Scale-invariant SNR in dB over the last axis (both zero-meaned), as in Luo & Mesgarani 2019."""
    estimate = estimate - estimate.mean(-1, keepdim=True)
    target = target - target.mean(-1, keepdim=True)
    scale = (estimate * target).sum(-1, keepdim=True) / (target.square().sum(-1, keepdim=True) + eps)
    proj = scale * target
    noise = estimate - proj
    return 10 * torch.log10((proj.square().sum(-1) + eps) / (noise.square().sum(-1) + eps))


def sdr(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BSS-eval signal-to-distortion ratio in dB (a 512-tap distortion filter is allowed, as in mir_eval's
    bss_eval_sources, the SDR papers report), computed by torchmetrics one signal pair at a time.

    One pair at a time: with torch's MKL build, once a process has gone from one thread back to several
    (``torch.set_num_threads``, as ``audiosep train --threads 1`` does), the *batched* ``torch.linalg.solve`` that
    torchmetrics runs on a batch fails ("Pivots given to lu_solve must all be greater or equal to 1"); the unbatched
    solve does not (tested)."""
    from torchmetrics.functional.audio import signal_distortion_ratio

    estimate, target = torch.broadcast_tensors(estimate, target)
    e, t = estimate.reshape(-1, estimate.shape[-1]), target.reshape(-1, target.shape[-1])
    out = [signal_distortion_ratio(e[i], t[i], filter_length=512) for i in range(e.shape[0])]
    return torch.stack(out).reshape(estimate.shape[:-1]) if out else estimate.new_zeros(estimate.shape[:-1])


def pairwise(metric, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[batch, S, T] x [batch, S, T] -> [batch, S_est, S_target] matrix of ``metric``."""
    return metric(estimate.unsqueeze(2), target.unsqueeze(1))


def best_permutation(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a [batch, S, S] score matrix (est x target), the permutation maximising the mean score.

    Returns (mean score of the best permutation [batch], perm [batch, S] with perm[b, j] = estimate for target j).
    Exhaustive over S! permutations (S <= 6 in practice); fully vectorised."""
    n = scores.shape[-1]
    perms = torch.tensor(list(itertools.permutations(range(n))), device=scores.device)  # [P, S]
    idx = torch.arange(n, device=scores.device)
    # value[b, p] = mean_j scores[b, perms[p, j], j]
    value = scores[:, perms, idx].mean(-1)
    best, arg = value.max(-1)
    return best, perms[arg]


def pit_si_snr_loss(estimate: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative SI-SNR with utterance-level PIT; returns (loss scalar, best permutation [batch, S])."""
    best, perm = best_permutation(pairwise(si_snr, estimate, target))
    return -best.mean(), perm


def reorder(estimate: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Estimates reordered so that index j matches target j."""
    return torch.gather(estimate, 1, perm[..., None].expand(-1, -1, estimate.shape[-1]))


def separation_scores(estimate: torch.Tensor, target: torch.Tensor, mixture: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-utterance SI-SNR, SI-SNRi, SDR, SDRi (dB) under the best SI-SNR permutation; shapes [batch]."""
    _, perm = best_permutation(pairwise(si_snr, estimate, target))
    est = reorder(estimate, perm)
    mix = mixture.expand_as(target)
    s, s0 = si_snr(est, target).mean(-1), si_snr(mix, target).mean(-1)
    d, d0 = sdr(est, target).mean(-1), sdr(mix, target).mean(-1)
    return {"si_snr": s, "si_snri": s - s0, "sdr": d, "sdri": d - d0}
