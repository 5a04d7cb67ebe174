"""``convsuite`` command: the end-to-end demo of every pipeline, and an overview of installed models."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from shared_backbones.cliutil import run_cli, say
from shared_backbones.errors import InputError

from .demos import DEMO_PARTS, DemoResult, available_parts


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convsuite", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="generate synthetic data, train, predict and evaluate every pipeline")
    d.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    d.add_argument("--only", default=None,
                   help=f"comma-separated subset of {','.join(DEMO_PARTS)} (default: all available)")
    d.add_argument("--quick", action="store_true", help="smallest budget (smoke test; figures not meaningful)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_parser("models", help="list registered architectures")
    return p


def run_demo(out: Path, parts: Sequence[str], quick: bool = False, quiet: bool = False) -> list[DemoResult]:
    """Run the demo parts in order; a part that fails is reported, the others still run."""
    results: list[DemoResult] = []
    for name in parts:
        say(f"== demo: {name}", quiet=False)
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"pipelines.demos.{name}")
            res = module.run(out / name, quick=quick, quiet=quiet)
        except Exception as exc:  # report and continue: one broken part must not hide the others
            import traceback

            traceback.print_exc()
            res = DemoResult(pipeline=name, notes=f"FAILED: {type(exc).__name__}: {exc}", passed=False)
        res.seconds = res.seconds or time.perf_counter() - start
        results.append(res)
    return results


def format_table(results: Sequence[DemoResult]) -> str:
    """The summary table printed at the end of the demo."""
    lines = [f"{'pipeline':<10} {'figure':<22} {'value':>10}  {'target':<10} {'time':>7}  outputs"]
    for r in results:
        rows = list(r.figures.items()) or [("-", float("nan"))]
        for i, (k, v) in enumerate(rows):
            head = r.pipeline if i == 0 else ""
            t = f"{r.seconds:6.0f}s" if i == 0 else ""
            outs = ", ".join(r.outputs[:2]) if i == 0 else ""
            lines.append(f"{head:<10} {k:<22} {v:>10.4g}  {r.targets.get(k, ''):<10} {t:>7}  {outs}")
        if r.notes:
            lines.append(f"{'':<10} note: {r.notes}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    def _main(argv: Sequence[str] | None) -> int:
        args = _parser().parse_args(argv)
        if args.command == "models":
            for mod in ("medseg.models", "medseg.phases.models", "audiosep.models", "remote.models"):
                try:
                    importlib.import_module(mod)
                except ImportError:
                    pass
            from shared_backbones.registry import list_models, model_entry

            for n in list_models():
                print(f"{n:<22} {model_entry(n).task}")
            return 0
        avail = available_parts()
        parts = list(avail) if args.only is None else [p.strip() for p in args.only.split(",") if p.strip()]
        bad = [p for p in parts if p not in DEMO_PARTS]
        if bad:
            raise InputError(f"--only: unknown demo part(s) {', '.join(bad)}; choose from {', '.join(DEMO_PARTS)}")
        missing = [p for p in parts if p not in avail]
        if missing:
            raise InputError(f"--only: demo part(s) not available in this version: {', '.join(missing)}")
        skipped = [p for p in DEMO_PARTS if p not in avail]
        if skipped:
            say(f"demo parts not available in this version (skipped): {', '.join(skipped)}")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = run_demo(out, parts, quick=args.quick, quiet=args.quiet)
        table = format_table(results)
        print("\nconvsuite demo summary\n" + table)
        (out / "summary.json").write_text(json.dumps([r.__dict__ for r in results], indent=2, default=str))
        print(f"\nall outputs under {out.resolve()} (summary.json holds the figures)")
        return 0 if all(r.passed is not False for r in results) else 1

    return run_cli(_main, argv, prog="convsuite")


if __name__ == "__main__":
    sys.exit(main())
