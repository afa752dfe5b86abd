"""Regenerate the committed reports under results/ from the committed run stores and compare.

Each report is rebuilt with the command that made it (scripts/results.sh, docs/RESULTS.md) into a
scratch directory; report.md / agreement.md must come out byte for byte, and summary.json /
agreement.json must hold the committed values (keys that later versions added to every report are
allowed beside them). Plots are not compared. A refactor that changes no number passes; one that
changes a decision or a price fails here.

    python scripts/check_reports.py [NAME ...]     (names as in REPORTS; default: all)
    python scripts/check_reports.py --write [NAME ...]

`--write` copies each regenerated report.md / summary.json (agreement.md / agreement.json) over the
committed one, for a change that adds to every report (a column, a key): review the diff, which
must add and change nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
CLF = "src/tandem/data/classifiers/qwen2.5-coder-1.5b+0.5b.json"
# the reasoning pair's efforts as first calibrated (point estimates), and as certified (now shipped)
REASONING_CLF = "results/reasoning-classifier/logistic.json"
REASONING_CERTIFIED = "results/reasoning-classifier/certified-0.8.json"
QWQ_TEST = ["results/reasoning/qwq-gsm8k-test-223-296-conclude", "results/reasoning/qwq-gsm8k-test-297-374-conclude"]
R14_TEST = ["results/reasoning/r1-14b-math500-test-168-333-conclude",
            "results/reasoning/r1-14b-math500-test-334-499-conclude"]
REASONING_SETS = {"qwq": (QWQ_TEST, "QwQ-32B GSM8K test ids 300+"),
                  "r14": (R14_TEST, "R1-Distill-Qwen-14B MATH-500 rows 168-499")}
# the shipped classifier and the next rule's efforts (scripts/reasoning_results.sh test-next)
REASONING_SHIPPED = "src/tandem/data/classifiers/qwq-32b+qwen2.5-coder-1.5b.json"
REASONING_NEXT = "results/reasoning-classifier/certified-next.json"
R32_TEST = ["results/reasoning/r1-32b-gsm8k-test-223-296-conclude",
            "results/reasoning/r1-32b-gsm8k-test-297-374-conclude"]
NEXT_SETS = {"r32": (R32_TEST, "R1-Distill-Qwen-32B GSM8K test ids 300+"),
             "qwq": (QWQ_TEST, "QwQ-32B GSM8K test ids 300+ (after the fact)"),
             "r14": (R14_TEST, "R1-Distill-Qwen-14B MATH-500 rows 168-499 (after the fact)")}
GSM8K = ["results/test/gsm8k-test-0-149-continue", "results/test/gsm8k-test-150-299-continue"]
HUMANEVAL = ["results/test/humaneval-test-0-81-continue", "results/test/humaneval-test-82-163-continue"]
TITLES = {"gsm8k": "GSM8K test 0-299: every method", "humaneval": "HumanEval 164, math-trained"}

# name -> (committed directory, tandem command line that wrote it; {out} is the scratch directory)
REPORTS: dict[str, tuple[str, list[str]]] = {
    "dev-continue": ("results/dev/report-continue", [
        "report", "results/dev/gsm8k-train-0-99-continue", "--out", "{out}",
        "--title", "Dev split (GSM8K train 0-99), continue hand-over, replayed"]),
    "dev-hint": ("results/dev/report-hint", [
        "replay", "results/dev/gsm8k-train-0-99-hint", "--out", "{out}",
        "--title", "dev split, hint hand-over (GSM8K train 0-99)"]),
    "smoke": ("results/smoke/report", [
        "report", "results/smoke/gsm8k-train-0-19-live", "--out", "{out}",
        "--title", "Smoke: GSM8K train 0-19, live"]),
    "gsm8k": ("results/test/report-gsm8k", ["replay", *GSM8K, "--out", "{out}",
                                            "--title", "GSM8K test 0-299: baselines"]),
    "humaneval": ("results/test/report-humaneval", ["replay", *HUMANEVAL, "--out", "{out}",
                                                    "--title", "HumanEval 164: baselines"]),
    "gsm8k-0-49-live": ("results/test/report-gsm8k-0-49-live", [
        "report", "results/test/gsm8k-test-0-49-live", "--out", "{out}", "--title", "GSM8K test 0-49, live"]),
    "gsm8k-0-49-live-tandem": ("results/test/report-gsm8k-0-49-live-tandem", [
        "report", "results/test/gsm8k-test-0-49-live-tandem", "results/test/gsm8k-test-0-49-live-llm",
        "--out", "{out}", "--title", "GSM8K test 0-49, live: tandem with the shipped classifier"]),
    "agree-baselines": ("results/test/agree-baselines", [
        "agree", "results/test/gsm8k-test-0-49-live", GSM8K[0], "--out", "{out}"]),
    "agree-tandem": ("results/test/agree-tandem", [
        "agree", "results/test/gsm8k-test-0-49-live-tandem", GSM8K[0], "--classifier", CLF, "--out", "{out}"]),
    **{f"{bench}-{kind}{cal}": (f"results/test/report-{bench}-{kind}{cal}", [
        "replay", *(GSM8K if bench == "gsm8k" else HUMANEVAL),
        "--classifier", f"results/classifier/{kind}{cal}.json", "--out", "{out}",
        "--title", f"{TITLES[bench]} ({kind}{cal})"])
       for bench in ("gsm8k", "humaneval") for kind in ("logistic", "gbdt", "logistic-llm-only")
       for cal in ("", "-budget")},
    **{f"reasoning-{key}-{rows}": (f"results/reasoning/report-{key}-{rows}", [
        "replay", *dirs, "--classifier", REASONING_CLF, *(["--finished-only"] if rows == "finished" else []),
        "--out", "{out}", "--title", f"{name}: every method, {title}"])
       for key, (dirs, name) in REASONING_SETS.items()
       for rows, title in (("all", "all rows"), ("finished", "rows whose thought closed"))},
    **{f"reasoning-{key}-certified-{rows}": (f"results/reasoning/report-{key}-certified-{rows}", [
        "replay", *dirs, "--classifier", REASONING_CERTIFIED, "--methods",
        "llm,tandem:low,tandem:medium,route,cascade", *(["--finished-only"] if rows == "finished" else []),
        "--out", "{out}", "--title", f"{name}: efforts with the gap certified at 0.8, {rows} rows"])
       for key, (dirs, name) in REASONING_SETS.items() for rows in ("all", "finished")},
    **{f"reasoning-r32-{rows}": (f"results/reasoning/report-r32-{rows}", [
        "replay", *R32_TEST, "--classifier", REASONING_SHIPPED, *([f"--{rows}-only"] if rows != "all" else []),
        "--out", "{out}", "--title", f"R1-Distill-Qwen-32B GSM8K test ids 300+: every method (shipped efforts), "
        f"{rows} rows"]) for rows in ("all", "finished", "complete")},
    **{f"reasoning-{key}-next-{rows}": (f"results/reasoning/report-{key}-next-{rows}", [
        "replay", *dirs, "--classifier", REASONING_NEXT, "--methods",
        "llm,tandem:low,tandem:medium,route,cascade,afterthink", f"--{rows}-only",
        "--out", "{out}", "--title", f"{name}: the next rule's efforts, {rows} rows"])
       for key, (dirs, name) in NEXT_SETS.items() for rows in ("finished", "complete")},
    "reasoning-agree-dev-live": ("results/reasoning/agree-dev-live-tandem", [
        "agree", "results/reasoning/dev-live-tandem-1.5b", "results/reasoning/dev-conclude-1.5b",
        "--classifier", REASONING_CLF, "--out", "{out}"]),
    **{f"{bench}-shipped": (f"results/test/report-{bench}-shipped", [
        "replay", *(GSM8K if bench == "gsm8k" else HUMANEVAL), "--classifier", CLF, "--out", "{out}",
        "--title", f"{bench}: every method (shipped classifier, logistic)"]) for bench in ("gsm8k", "humaneval")},
}

# keys later versions write into every summary, at the value that means "as before"
LATER_KEYS: dict[str, Any] = {"samples": 1, "pass_at": None, "majority_accuracy": None}


def json_differences(committed: Any, fresh: Any, where: str = "") -> list[str]:
    """Where `fresh` does not hold `committed`'s values (extra keys in `fresh` allowed from LATER_KEYS)."""
    if isinstance(committed, dict) and isinstance(fresh, dict):
        out = [f"{where}.{k}: missing" for k in committed if k not in fresh]
        out += [f"{where}.{k}: new" for k in fresh if k not in committed and fresh[k] != LATER_KEYS.get(k, ...)]
        for k in committed:
            if k in fresh:
                out += json_differences(committed[k], fresh[k], f"{where}.{k}")
        return out
    if isinstance(committed, list) and isinstance(fresh, list):
        if len(committed) != len(fresh):
            return [f"{where}: {len(committed)} items, now {len(fresh)}"]
        return [d for i, (a, b) in enumerate(zip(committed, fresh, strict=True))
                for d in json_differences(a, b, f"{where}[{i}]")]
    return [] if committed == fresh else [f"{where}: {committed!r} -> {fresh!r}"]


def check(name: str, scratch: Path, write: bool = False) -> list[str]:
    """The differences between a committed report and its regeneration (empty: the same); `write`:
    then put the regenerated text and data files in the committed report's place."""
    from tandem.cli import app

    committed, argv = REPORTS[name]
    out = scratch / name
    res = CliRunner().invoke(app, [a.replace("{out}", str(out)) for a in argv])
    if res.exit_code != 0:
        return [f"tandem {' '.join(argv)} failed ({res.exit_code}): {res.output[-500:]}"]
    problems = []
    for text in ("report.md", "agreement.md"):
        old = ROOT / committed / text
        if old.exists() and old.read_bytes() != (out / text).read_bytes():
            problems.append(f"{text} differs")
    for data in ("summary.json", "agreement.json"):
        old = ROOT / committed / data
        if old.exists():
            diffs = json_differences(json.loads(old.read_text()), json.loads((out / data).read_text()))
            problems += [f"{data}{d}" for d in diffs[:5]]
    if write:
        for kept in ("report.md", "agreement.md", "summary.json", "agreement.json"):
            if (ROOT / committed / kept).exists():
                shutil.copyfile(out / kept, ROOT / committed / kept)
    return problems


def main(names: list[str]) -> int:
    write = "--write" in names
    names = [n for n in names if n != "--write"]
    unknown = sorted(set(names) - set(REPORTS))
    if unknown:
        print(f"unknown report(s): {', '.join(unknown)}; known: {', '.join(REPORTS)}", file=sys.stderr)
        return 2
    os.chdir(ROOT)  # the commands name committed paths relative to the checkout
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(REPORTS):
            problems = check(name, Path(tmp), write)
            tag = "ok  " if not problems else "WROTE" if write else "DIFF"
            print(f"{tag} {name} ({REPORTS[name][0]})")
            for p in problems:
                print(f"     {p}")
            failed += bool(problems)
    return 1 if failed and not write else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
