"""Reports: statistics against known values, summaries of handmade outcomes, the oracle frontier
against brute force, plots and Markdown."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from tandem.bench.records import Outcome
from tandem.bench.report import (
    frontier_cost_ratios,
    join_runs,
    mcnemar_exact,
    options_from_outcomes,
    oracle_frontier,
    paired_difference_interval,
    plot_handover_hist,
    plot_pareto,
    plot_tradeoff,
    render_markdown,
    summarize,
    wilson_interval,
    write_report,
)
from tandem.errors import ConfigError, InputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# --- statistics --------------------------------------------------------------------------------


def test_wilson_known_values() -> None:
    # 8/10 and 0/20 at 95%, as given by scipy.stats.binomtest(...).proportion_ci(method="wilson")
    assert wilson_interval(8, 10) == pytest.approx((0.4901624715366418, 0.9433178485456248), abs=1e-12)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.16112515805281935), abs=1e-12)
    assert wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_mcnemar_known_values() -> None:
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)  # 2 * (C(10,0) + C(10,1)) / 2^10
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(3, 12) == pytest.approx(0.03515625)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 1) == 1.0
    assert mcnemar_exact(0, 30) < 1e-8
    assert 0 < mcnemar_exact(0, 3000) < 1e-300 or mcnemar_exact(0, 3000) == 0.0  # no overflow


def test_paired_difference_interval_holds_the_difference_and_is_symmetric() -> None:
    lo, hi = paired_difference_interval(50, 12, 4, 34)  # 8 points better (the exact McNemar p: 0.077)
    assert 0 < lo < 0.08 < hi < 0.16
    assert paired_difference_interval(50, 4, 12, 34) == pytest.approx((-hi, -lo))
    assert paired_difference_interval(0, 0, 0, 0) == (-1.0, 1.0)
    assert paired_difference_interval(10, 0, 0, 0)[0] < 0 < paired_difference_interval(10, 0, 0, 0)[1]
    assert paired_difference_interval(0, 20, 0, 0)[1] == 1.0  # never beyond the possible range
    wide, narrow = paired_difference_interval(5, 2, 1, 2), paired_difference_interval(500, 200, 100, 200)
    assert wide[1] - wide[0] > 5 * (narrow[1] - narrow[0])
    with pytest.raises(ValueError):
        paired_difference_interval(1, -1, 0, 0)


@pytest.mark.parametrize(("n", "cells"), [(30, (0.5, 0.15, 0.05, 0.3)), (100, (0.6, 0.1, 0.1, 0.2)),
                                          (60, (0.85, 0.02, 0.08, 0.05))])
def test_paired_difference_interval_covers_the_true_difference(n: int, cells: tuple[float, ...]) -> None:
    """Simulated paired outcomes: the interval holds the true difference about 95% of the time."""

    rng = random.Random(7)
    truth = cells[1] - cells[2]
    trials, covered = 3000, 0
    for _ in range(trials):
        counts = [0, 0, 0, 0]
        for x in rng.choices(range(4), weights=cells, k=n):
            counts[x] += 1
        lo, hi = paired_difference_interval(*counts)
        covered += lo <= truth <= hi
    assert 0.93 <= covered / trials <= 0.985


def test_statistics_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for n in (1, 2, 7, 30, 101):
        for k in {0, 1, n // 3, n // 2, n - 1, n}:
            ci = stats.binomtest(k, n).proportion_ci(method="wilson")
            assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    for b, c in [(0, 4), (2, 7), (10, 10), (13, 40), (1, 0), (55, 70)]:
        assert mcnemar_exact(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


# --- summaries ---------------------------------------------------------------------------------


def _o(pid: str, method: str, correct: bool, flops: float = 1e12, **kw: object) -> Outcome:
    defaults: dict[str, object] = {
        "flops_generated": flops / 4,
        "wall_seconds": flops / 1e12,
        "extraction_rule": "boxed",
    }
    defaults.update(kw)
    return Outcome(problem_id=pid, method=method, correct=correct, flops_total=flops, **defaults)  # type: ignore[arg-type]


def _handmade() -> list[Outcome]:
    llm = [
        _o("p1", "llm", True, 10e12, llm_prompt_tokens=100, llm_generated_tokens=300),
        _o("p2", "llm", True, 10e12, llm_prompt_tokens=100, llm_generated_tokens=300),
        _o("p3", "llm", False, 10e12, llm_prompt_tokens=100, llm_generated_tokens=300, truncated=True),
        _o("p4", "llm", True, 10e12, llm_prompt_tokens=100, llm_generated_tokens=300),
        _o("p5", "llm", False, 0.0, error="BackendTimeout: no answer"),
    ]
    tandem = [  # listed in another order: the join is by problem id
        _o("p4", "tandem", False, 2e12, handover_tokens=64, extraction_rule="none"),
        _o("p3", "tandem", True, 2e12, handover_tokens=32),
        _o("p1", "tandem", True, 4e12, handover_tokens=None, slm_prompt_tokens=500, slm_generated_tokens=200),
        _o("p2", "tandem", False, 0.0, error="crash"),
        _o("p5", "tandem", True, 2e12, handover_tokens=0),
    ]
    return llm + tandem


def test_summarize_handmade() -> None:
    by = {s.method: s for s in summarize(_handmade())}
    assert list(by) == ["llm", "tandem"]
    llm, tandem = by["llm"], by["tandem"]

    assert (llm.n, llm.n_errors, llm.n_scored, llm.n_correct) == (5, 1, 4, 3)
    assert llm.accuracy == pytest.approx(0.75)
    assert (llm.ci_low, llm.ci_high) == pytest.approx(wilson_interval(3, 4))
    assert llm.mean_flops_total == pytest.approx(10e12)  # the errored sample is not averaged in
    assert llm.mean_llm_generated_tokens == pytest.approx(300)
    assert llm.truncations == 1 and llm.extraction_failures == 0
    assert llm.flops_ratio == pytest.approx(1.0) and llm.mcnemar_p is None and llm.is_baseline

    assert (tandem.n, tandem.n_errors, tandem.n_correct) == (5, 1, 3)
    assert tandem.accuracy == pytest.approx(0.75)
    assert tandem.mean_flops_total == pytest.approx(2.5e12)
    assert tandem.mean_flops_generated == pytest.approx(2.5e12 / 4)
    assert tandem.mean_slm_prompt_tokens == pytest.approx(125)
    assert tandem.extraction_failures == 1
    # paired: p1, p3, p4 (p2 errored in tandem, p5 in llm)
    assert tandem.n_paired == 3
    assert tandem.flops_ratio == pytest.approx(8e12 / 30e12)
    assert tandem.flops_generated_ratio == pytest.approx(8e12 / 30e12)
    assert tandem.wall_ratio == pytest.approx(8 / 30)
    assert (tandem.mcnemar_b, tandem.mcnemar_c) == (1, 1)  # p3 won, p4 lost
    assert tandem.mcnemar_p == pytest.approx(1.0)
    assert (tandem.diff_low, tandem.diff_high) == pytest.approx(paired_difference_interval(1, 1, 1, 0))
    assert llm.diff_low is None  # the baseline has no difference with itself


def test_summarize_other_baseline_and_missing_baseline() -> None:
    outs = _handmade()
    by = {s.method: s for s in summarize(outs, baseline="tandem")}
    assert (by["llm"].mcnemar_b, by["llm"].mcnemar_c) == (1, 1)
    assert by["llm"].flops_ratio == pytest.approx(30 / 8)
    none = {s.method: s for s in summarize(outs, baseline="slm")}
    assert none["tandem"].flops_ratio is None and none["tandem"].mcnemar_p is None
    assert none["tandem"].n_paired == 0


def test_summarize_all_errors_and_duplicates() -> None:
    s = summarize([_o("p1", "x", False, error="boom")], baseline="x")[0]
    assert s.accuracy is None and s.mean_flops_total is None and s.n_errors == 1
    assert s.flops_ratio is None
    with pytest.raises(InputError, match="two outcomes"):
        summarize([_o("p1", "x", True), _o("p1", "x", False)])


def test_joining_runs_merges_shards_and_keeps_overlapping_methods_apart() -> None:
    a = [_o("p1", "llm", True), _o("p2", "llm", False), _o("p1", "slm", False)]
    shard = [_o("p3", "llm", True)]
    again = [_o("p1", "llm", False), _o("p3", "slm", True)]
    joined = join_runs([("a", a), ("shard", shard), ("b", again)])
    by = {(o.method, o.problem_id): o.correct for o in joined}
    assert by == {("llm", "p1"): True, ("llm", "p2"): False, ("slm", "p1"): False, ("llm", "p3"): True,
                  ("llm (b)", "p1"): False, ("slm", "p3"): True}
    names = {s.method for s in summarize(joined)}  # no "two outcomes" error: every pair is unique
    assert names == {"llm", "slm", "llm (b)"}
    # two runs of one name (a/live, b/live) are numbered
    joined = join_runs([("live", a), ("live", a), ("live", a)])
    assert {o.method for o in joined} == {"llm", "slm", "llm (live)", "slm (live)", "llm (live 2)", "slm (live 2)"}


def test_summary_discordant_counts_on_many_problems() -> None:
    rng = random.Random(3)
    outs = []
    b = c = 0
    for i in range(200):
        base, meth = rng.random() < 0.6, rng.random() < 0.5
        b += meth and not base
        c += base and not meth
        outs += [_o(f"q{i}", "llm", base), _o(f"q{i}", "slm", meth, 1e11)]
    slm = summarize(outs)[1]
    assert (slm.mcnemar_b, slm.mcnemar_c) == (b, c)
    assert slm.mcnemar_p == pytest.approx(mcnemar_exact(b, c))
    both = sum(o.correct for o in outs if o.method == "slm") - b
    assert (slm.diff_low, slm.diff_high) == pytest.approx(paired_difference_interval(both, b, c, 200 - both - b - c))
    assert slm.flops_ratio == pytest.approx(0.1)
    md = render_markdown(summarize(outs), "t")
    assert f"{100 * (b - c) / 200:+.1f} [{100 * slm.diff_low:+.1f}, {100 * slm.diff_high:+.1f}]" in md


# --- oracle frontier ---------------------------------------------------------------------------


def _brute_force(options: dict[str, list[tuple[float, bool]]]) -> dict[int, float]:
    """For every number of correct problems reached by some assignment: its least total cost."""
    best: dict[int, float] = {}
    for combo in itertools.product(*options.values()):
        k = sum(correct for _, correct in combo)
        cost = sum(c for c, _ in combo)
        best[k] = min(best.get(k, float("inf")), cost)
    return best


def test_frontier_against_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 5)
        options = {
            f"p{i}": [(float(rng.randint(0, 6)), rng.random() < 0.4) for _ in range(rng.randint(1, 4))]
            for i in range(n)
        }
        best = _brute_force(options)
        # least cost to get at least k right
        at_least = {k: min(v for kk, v in best.items() if kk >= k) for k in range(max(best) + 1)}
        frontier = oracle_frontier(options)
        ks = [round(a * n) for a, _ in frontier]
        assert ks == list(range(ks[0], max(best) + 1))  # every level up to the best reachable
        for k, (_, mean_cost) in zip(ks, frontier, strict=True):
            assert mean_cost * n == pytest.approx(at_least[k])
        # the first point is the cheapest assignment of all, and no cheaper level was skipped
        assert frontier[0][1] * n == pytest.approx(min(best.values()))
        assert all(at_least[k] == pytest.approx(at_least[ks[0]]) for k in range(ks[0]))


def test_frontier_simple_case() -> None:
    options = {
        "a": [(1.0, False), (3.0, True), (5.0, True)],  # +2 to make right
        "b": [(1.0, True), (4.0, True)],  # right for free
        "c": [(2.0, False), (9.0, False)],  # never right
        "d": [(1.0, False), (2.0, True)],  # +1
    }
    frontier = oracle_frontier(options)
    assert [a for a, _ in frontier] == pytest.approx([0.25, 0.5, 0.75])
    assert [c for _, c in frontier] == pytest.approx([5 / 4, 6 / 4, 8 / 4])
    assert oracle_frontier({}) == []
    with pytest.raises(InputError):
        oracle_frontier({"x": []})


def test_options_from_outcomes() -> None:
    options = options_from_outcomes(_handmade())
    assert options == {
        "p1": [(10e12, True), (4e12, True)],
        "p3": [(10e12, False), (2e12, True)],
        "p4": [(10e12, True), (2e12, False)],
    }
    assert set(options_from_outcomes(_handmade(), methods=["tandem"])) == {"p1", "p3", "p4", "p5"}
    with pytest.raises(ConfigError):
        options_from_outcomes(_handmade(), methods=["nope"])


# --- plots and Markdown ------------------------------------------------------------------------


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    outs = _handmade()
    summaries = summarize(outs)
    frontier = oracle_frontier(options_from_outcomes(outs))
    assert _is_png(plot_pareto(summaries, frontier, tmp_path / "p.png"))
    assert _is_png(plot_pareto(summaries, None, tmp_path / "sub" / "g.png", cost="flops_generated"))
    assert _is_png(plot_pareto(summaries, None, tmp_path / "w.png", cost="wall_seconds"))
    assert _is_png(plot_pareto([], None, tmp_path / "empty.png"))
    with pytest.raises(ConfigError):
        plot_pareto(summaries, None, tmp_path / "x.png", cost="money")  # type: ignore[arg-type]
    assert _is_png(plot_handover_hist(outs, tmp_path / "h.png"))
    assert _is_png(plot_handover_hist([_o("p", "llm", True)], tmp_path / "h_none.png"))
    assert _is_png(plot_handover_hist([], tmp_path / "h_empty.png"))
    curve = [(t / 10, 0.5 + t / 40, 1e12 * (10 - t)) for t in range(11)]
    assert _is_png(plot_tradeoff(curve, tmp_path / "t.png", cost_label="TFLOPs"))
    assert _is_png(plot_tradeoff({"low": curve, "high": curve[::2]}, tmp_path / "t2.png"))


def test_markdown_has_every_method() -> None:
    outs = _handmade() + [_o("p1", "slm|cheap", False, 1e11)]
    md = render_markdown(summarize(outs), "GSM8K test", notes="replayed from probe tables")
    assert md.startswith("# GSM8K test\n")
    for method in ("`llm`", "`tandem`", "`slm\\|cheap`"):
        assert method in md
    assert "75.0% [" in md and "(baseline)" in md and "replayed from probe tables" in md
    assert "0.267" in md  # tandem's FLOPs ratio on the paired problems
    assert "| 10.00 | 2.500 |" in md  # llm's mean TFLOPs total and generated
    assert "`tandem` 3, `slm|cheap` 1" in md
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(rows) == 3 and all(r.count(" | ") == header.count(" | ") for r in rows)
    assert "not among the outcomes" in render_markdown(summarize(outs, baseline="x"), "t")
    assert "(no outcomes)" in render_markdown([], "t")


def test_write_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    outs = _handmade()
    md_path = write_report(outs, tmp_path / "r", "Demo", frontier_options=options_from_outcomes(outs))
    assert md_path == tmp_path / "r" / "report.md"
    md = md_path.read_text()
    assert "`llm`" in md and "`tandem`" in md and "Oracle frontier over 3 problems" in md
    for png in ("pareto.png", "pareto_generated.png", "handover.png"):
        assert _is_png(tmp_path / "r" / png) and f"]({png})" in md
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert [m["method"] for m in summary["methods"]] == ["llm", "tandem"]
    # p1 and p3 are right at their cheapest choice (4 + 2), p4 costs 2 wrong or 10 right
    assert summary["frontier"][0] == pytest.approx([2 / 3, 8e12 / 3])
    assert summary["frontier"][1] == pytest.approx([1.0, 16e12 / 3])
    # on the frontier's problems (p1, p3, p4) both are right on 2 of 3: the LLM pays 10 a problem,
    # tandem 8/3 - the frontier's own least cost at 2/3
    assert summary["frontier_cost_ratio"] == pytest.approx({"llm": 10 / (8 / 3), "tandem": 1.0})
    assert "`llm` 3.75, `tandem` 1.00" in md


def test_frontier_cost_ratio_needs_every_frontier_problem() -> None:
    outs = _handmade()
    options = options_from_outcomes(outs) | {"p2": [(1e12, True)]}  # tandem failed on p2
    assert frontier_cost_ratios(outs, options) == {"llm": pytest.approx(10 / (9 / 4)), "tandem": None}


def test_wilson_bounds_are_exact_when_all_or_none_are_right() -> None:
    for n in range(1, 200):
        assert wilson_interval(n, n)[1] == 1.0
        assert wilson_interval(0, n)[0] == 0.0
