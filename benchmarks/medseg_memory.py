"""medseg training memory: reversible U-Net (``revunet3d``) vs its plain twin (same weights, ordinary autograd).

1. Activation bytes held for backward by one training step (forward in training mode with deep supervision, Dice-free
   cross-entropy over every output) at a fixed patch: ``activation_ratio`` = plain / reversible (target >= 3).
2. A fixed activation budget (what the plain network needs at ``--budget-edge``^3): the largest cube, in steps of
   the network stride, whose measured activation bytes fit it, for each network -> ``voxel_ratio_at_budget``
   = (reversible edge / plain edge)^3 (target >= 3: the paper's "3x larger volumes"). Every candidate size is run
   and measured, not extrapolated.
3. Time of one training step (forward + backward), reversible / plain, interleaved, fastest of N.

Bytes are counted with ``shared_backbones.memory.activation_bytes`` (distinct storages saved for backward,
parameters excluded), so the figures do not depend on the allocator; on a GPU they are what the step adds to
``torch.cuda.max_memory_allocated`` beyond the weights, up to transient buffers.

    python benchmarks/medseg_memory.py [--patch 64] [--budget-edge 64] [--channels 16 32 64 128] [--depth 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import medseg.models  # noqa: F401  (registers the architectures)
from shared_backbones.memory import activation_bytes
from shared_backbones.registry import create_model

MB = 2 ** 20


def ds_loss(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy against all-background targets on every deep-supervision output (the graph is what counts)."""
    return sum(F.cross_entropy(o, torch.zeros(o.shape[0], *o.shape[2:], dtype=torch.long)) for o in outputs)


def step_bytes(net: torch.nn.Module, edge: int) -> int:
    x = torch.randn(1, 1, edge, edge, edge)
    return activation_bytes(net, x, loss_fn=ds_loss)


def step_time(net: torch.nn.Module, x: torch.Tensor) -> float:
    net.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    ds_loss(net(x)).backward()
    return time.perf_counter() - t0


def largest_edge(net: torch.nn.Module, budget: int, stride: int, start: int, limit: int) -> tuple[int, int]:
    """Largest multiple of ``stride`` (from ``start``, at most ``limit``) whose step fits ``budget`` bytes."""
    best, best_bytes = 0, 0
    edge = start
    while edge <= limit:
        b = step_bytes(net, edge)
        if b > budget:
            break
        best, best_bytes = edge, b
        edge += stride
    return best, best_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--patch", type=int, default=64, help="cube edge for parts 1 and 3 (default 64)")
    ap.add_argument("--budget-edge", type=int, default=64,
                    help="the budget is the plain network's activation bytes at this cube edge (default 64)")
    ap.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128], help="channels per stage")
    ap.add_argument("--depth", type=int, default=2, help="reversible MBConv blocks per stage (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per network (fastest counts; default 3)")
    ap.add_argument("--max-edge", type=int, default=160, help="largest cube edge tried (default 160)")
    args = ap.parse_args()
    torch.manual_seed(0)
    net = create_model("revunet3d", in_channels=1, num_classes=4, channels=args.channels, depth=args.depth).train()
    stride = max(net.total_stride)
    params = sum(p.numel() for p in net.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, fp32; revunet3d channels "
          f"{args.channels}, depth {args.depth}, {params:,} parameters, deep supervision, batch 1")

    # 1. activation bytes at a fixed patch
    by = {}
    for rev in (False, True):
        net.reversible = rev
        by[rev] = step_bytes(net, args.patch)
    ratio = by[False] / by[True]
    print(f"\n1. one training step at {args.patch}^3: plain {by[False] / MB:.1f} MB, reversible {by[True] / MB:.1f} MB "
          f"-> {ratio:.2f}x less")

    # 2. largest cube within the plain network's budget at --budget-edge
    net.reversible = False
    budget = step_bytes(net, args.budget_edge)
    edges = {}
    for rev in (False, True):
        net.reversible = rev
        edges[rev] = largest_edge(net, budget, stride, args.budget_edge, args.max_edge)
    e_plain, e_rev = edges[False][0], edges[True][0]
    capped = e_rev + stride > args.max_edge
    voxel_ratio = (e_rev / e_plain) ** 3
    print(f"\n2. budget {budget / MB:.1f} MB (plain at {args.budget_edge}^3): largest cube plain {e_plain}^3 "
          f"({edges[False][1] / MB:.1f} MB), reversible {e_rev}^3 ({edges[True][1] / MB:.1f} MB) -> "
          f"{voxel_ratio:.2f}x the voxels{' (reached --max-edge: a lower bound)' if capped else ''}")

    # 3. time of a training step, interleaved
    x = torch.randn(1, 1, args.patch, args.patch, args.patch)
    times: dict[bool, list[float]] = {False: [], True: []}
    for rev in (False, True):  # warm-up
        net.reversible = rev
        step_time(net, x)
    for _ in range(args.repeats):
        for rev in (False, True):
            net.reversible = rev
            times[rev].append(step_time(net, x))
    t_plain, t_rev = min(times[False]), min(times[True])
    print(f"\n3. training step at {args.patch}^3: plain {t_plain:.2f} s, reversible {t_rev:.2f} s -> "
          f"{t_rev / t_plain:.2f}x the time")
    print(json.dumps({"activation_ratio": round(ratio, 2), "voxel_ratio_at_budget": round(voxel_ratio, 2),
                      "edge_plain": e_plain, "edge_reversible": e_rev, "edge_capped": capped,
                      "plain_mb": round(by[False] / MB, 1), "reversible_mb": round(by[True] / MB, 1),
                      "budget_mb": round(budget / MB, 1), "time_ratio": round(t_rev / t_plain, 3),
                      "patch": args.patch, "params": params}))


if __name__ == "__main__":
    main()
