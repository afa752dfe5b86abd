"""Render a report's summary.json as the compact table docs/RESULTS.md uses, plus the oracle frontier
at round accuracies (cost relative to the baseline's mean total FLOPs).

    python scripts/summary_table.py results/test/report-humaneval/summary.json [--at 0.4,0.5,0.6,0.7]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

NAMES = {"slm": "SLM alone", "llm": "LLM alone", "oracle": "oracle (cheapest right checkpoint, else LLM alone)"}
HEADER = ("| method | accuracy [95% CI] | TFLOPs total | TFLOPs generated | total vs LLM | generated vs LLM "
          "| LLM tokens prompt / gen | SLM tokens prompt / gen | wall vs LLM | McNemar p vs LLM (b/c) |")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def row(m: dict[str, Any], baseline: str) -> str:
    if m["accuracy"] is None:
        return f"| {NAMES.get(m['method'], m['method'])} | no sample ran |" + " |" * 8
    test = "–" if m["method"] == baseline or m["mcnemar_p"] is None else (
        f"{m['mcnemar_p']:.2g} ({m['mcnemar_b']}/{m['mcnemar_c']})")
    return (f"| {NAMES.get(m['method'], m['method'])} | {_pct(m['accuracy'])}% [{_pct(m['ci_low'])}, "
            f"{_pct(m['ci_high'])}] | {m['mean_flops_total'] / 1e12:.3f} | {m['mean_flops_generated'] / 1e12:.3f} | "
            f"{_ratio(m['flops_ratio'])} | {_ratio(m['flops_generated_ratio'])} | "
            f"{m['mean_llm_prompt_tokens']:.0f} / {m['mean_llm_generated_tokens']:.0f} | "
            f"{m['mean_slm_prompt_tokens']:.0f} / {m['mean_slm_generated_tokens']:.0f} | "
            f"{_ratio(m['wall_ratio'])} | {test} |")


def frontier_line(summary: dict[str, Any], at: list[float]) -> str:
    base = next((m for m in summary["methods"] if m["method"] == summary["baseline"]), None)
    frontier = summary.get("frontier") or []
    if base is None or not frontier or not base["mean_flops_total"]:
        return "no oracle frontier (no baseline or no probe table)"
    parts = []
    for target in sorted({*at, base["accuracy"]}):
        costs = [c for a, c in frontier if a >= target - 1e-9]
        if costs:
            mark = " (the baseline's)" if target == base["accuracy"] else ""
            parts.append(f"{_pct(target)}%{mark} at {min(costs) / base['mean_flops_total']:.2f}×")
    return "oracle frontier: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summary", type=Path)
    ap.add_argument("--at", default="0.4,0.5,0.6,0.7", help="accuracies at which to read the frontier")
    args = ap.parse_args(argv)
    try:
        summary = json.loads(args.summary.read_text())
        at = [float(x) for x in args.at.split(",") if x.strip()]
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(HEADER)
    print("|---" * 10 + "|")
    for m in summary["methods"]:
        print(row(m, summary["baseline"]))
    print()
    print(frontier_line(summary, at))
    ratios = {m: r for m, r in (summary.get("frontier_cost_ratio") or {}).items() if r is not None}
    if ratios:
        print("total FLOPs over the frontier's at the same accuracy: "
              + ", ".join(f"{NAMES.get(m, m)} {r:.2f}" for m, r in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
