"""``convsuite`` command: the end-to-end demo of every pipeline, and an overview of installed models."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from shared_backbones.cliutil import (
    add_command,
    add_common,
    add_deprecated,
    atomic_output,
    check_writable_folder,
    make_parser,
    run_cli,
    say,
)
from shared_backbones.errors import InputError

from .demos import DEMO_PARTS, DemoResult


def _parser() -> argparse.ArgumentParser:
    p = make_parser("convsuite", __doc__ or "", ["convsuite demo", "convsuite demo --only medseg,remote --quick"])
    sub = p.add_subparsers(dest="command", required=True)
    d = add_command(sub, "demo", help="generate synthetic data, train, predict and evaluate every pipeline",
                    examples=["convsuite demo -o demo_output", "convsuite demo --only backbones --quick",
                              "convsuite demo --only audiosep -o demo_output --overwrite"],
                    description="Generate synthetic data, train (budgets in steps, not wall time), predict and\n"
                                "evaluate every pipeline. The table marks each target ok or MISSED and lists the\n"
                                "missed ones. Exit code 0 when every part ran end to end, 1 when a part failed.")
    d.add_argument("-o", "--output", default="demo_output", help="output folder")
    add_deprecated(d, "--out", "-o/--output", "output")
    d.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(DEMO_PARTS)} (default: all)")
    d.add_argument("--quick", action="store_true", help="smallest budget (smoke test; targets not judged)")
    add_common(d, device=False, precision=False)
    m = add_command(sub, "models", help="list the registered architectures and their task",
                    examples=["convsuite models", "convsuite models --task medseg"])
    m.add_argument("--task", help="only this task (medseg, phases, audiosep, remote, example)")
    add_common(m, device=False, precision=False, overwrite=False)
    return p


def run_demo(out: Path, parts: Sequence[str], quick: bool = False, quiet: bool = False) -> list[DemoResult]:
    """Run the demo parts in order; a part that fails is reported (its ``error``), the others still run."""
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
            res = DemoResult(pipeline=name, error=f"{type(exc).__name__}: {exc}")
        res.seconds = res.seconds or time.perf_counter() - start
        results.append(res)
    return results


def format_table(results: Sequence[DemoResult]) -> str:
    """The summary table printed at the end of the demo: every figure, its target and whether it was met (``ok``,
    ``MISSED``, ``not judged (--quick)``); a part that did not run end to end shows ``FAILED`` and why."""
    w = max([6, *(len(v) for r in results for v in r.verdicts().values())])
    lines = [f"{'pipeline':<10} {'figure':<22} {'value':>10}  {'target':<10} {'check':<{w}} {'time':>7}  outputs"]
    for r in results:
        rows = list(r.figures.items()) or [("-", float("nan"))]
        verdicts = r.verdicts()
        for i, (k, v) in enumerate(rows):
            head = r.pipeline if i == 0 else ""
            t = f"{r.seconds:6.0f}s" if i == 0 else ""
            outs = ", ".join(r.outputs[:2]) if i == 0 else ""
            check = "FAILED" if r.error and i == 0 else verdicts.get(k, "")
            lines.append(f"{head:<10} {k:<22} {v:>10.4g}  {r.targets.get(k, ''):<10} {check:<{w}} {t:>7}  "
                         f"{outs}".rstrip())
        if r.error:
            lines.append(f"{'':<10} error: {r.error}")
        if r.notes:
            lines.append(f"{'':<10} note: {r.notes}")
    return "\n".join(lines)


def format_verdict(results: Sequence[DemoResult]) -> tuple[str, int]:
    """The lines after the table and the exit code: 0 when every part ran end to end (missed targets are listed,
    they do not fail the demo), 1 when a part failed (listed with its error)."""
    missed = [m for r in results for m in r.missed()]
    unjudged = [f"{r.pipeline} {k}" for r in results for k, v in r.verdicts().items() if v.startswith("not judged")]
    failed = [r for r in results if r.error]
    lines = [f"missed targets: {'; '.join(missed)}" if missed else "missed targets: none"]
    if unjudged:
        lines.append(f"not judged (--quick: the smallest budget, figures not meaningful): {', '.join(unjudged)}")
    if failed:
        lines.append(f"failed parts ({len(failed)} of {len(results)}): "
                     + "; ".join(f"{r.pipeline} ({r.error})" for r in failed))
    else:
        lines.append(f"every part ran end to end ({', '.join(r.pipeline for r in results)})")
    return "\n".join(lines), 1 if failed else 0


def summary_record(r: DemoResult) -> dict:
    """One part's entry in ``summary.json``: its fields, the per-figure verdicts and the missed targets."""
    return {**r.__dict__, "verdicts": r.verdicts(), "missed": r.missed(), "ran": not r.error}


def main(argv: Sequence[str] | None = None) -> int:
    def _main(argv: Sequence[str] | None) -> int:
        args = _parser().parse_args(argv)
        if args.command == "models":
            from shared_backbones.registry import list_models, model_entry

            names = list_models(args.task)
            if not names:
                raise InputError(f"--task: no architectures registered for task {args.task!r}")
            for n in names:
                print(f"{n:<22} {model_entry(n).task}")
            return 0
        parts = list(DEMO_PARTS) if args.only is None else [p.strip() for p in args.only.split(",") if p.strip()]
        bad = [p for p in parts if p not in DEMO_PARTS]
        if bad:
            raise InputError(f"--only: unknown demo part(s) {', '.join(bad)}; choose from {', '.join(DEMO_PARTS)}")
        out = Path(args.output)
        previous = [out / n for n in ("summary.json", *parts) if (out / n).exists()]
        if previous and not args.overwrite:
            raise InputError(f"holds the outputs of an earlier demo ({previous[0].name}); use --overwrite to replace "
                             "them", out)
        check_writable_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        results = run_demo(out, parts, quick=args.quick, quiet=args.quiet)
        verdict, rc = format_verdict(results)
        print("\nconvsuite demo summary\n" + format_table(results) + "\n\n" + verdict)
        with atomic_output(out / "summary.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps([summary_record(r) for r in results], indent=2, default=str))
        print(f"\nall outputs under {out.resolve()} (summary.json holds the figures)")
        return rc

    return run_cli(_main, argv, prog="convsuite")


if __name__ == "__main__":
    sys.exit(main())
