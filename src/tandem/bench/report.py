"""Reports over stored `Outcome`s: per-method summaries, the oracle frontier, plots, Markdown.

Everything but the plots and `write_report` is a pure function. Conventions:

- An outcome with `error` set failed to run: it is counted in `n_errors` and left out of
  accuracy, means and the paired comparison.
- Accuracy comes with a 95% Wilson score interval.
- Runs are joined by `problem_id`. Cost ratios and the exact McNemar test compare a method with
  the baseline on the problems both have without error ("paired" problems).
- Several samples per problem (`tandem eval --samples K`: `extra["sample"]` on each outcome): the
  accuracy is the mean over samples, its interval the Wilson interval at the effective sample size
  (samples of one problem are not independent: the design effect of the per-problem clusters);
  pass@k (the unbiased estimator) and the accuracy of the per-problem majority vote come beside it;
  cost ratios compare per-problem means; McNemar needs one sample per problem on both sides; the
  oracle frontier and its ratios read each problem's first sample.
- Plots are drawn on `matplotlib.figure.Figure` objects and saved as PNG through Agg; pyplot and
  its global state are never touched.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tandem.bench.records import Outcome
from tandem.errors import ConfigError, InputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Z95",
    "MethodSummary",
    "frontier_cost_ratios",
    "mcnemar_exact",
    "options_from_outcomes",
    "oracle_frontier",
    "plot_handover_hist",
    "plot_pareto",
    "plot_tradeoff",
    "render_markdown",
    "summarize",
    "wilson_interval",
    "write_report",
]

Z95 = 1.959963984540054
"""Two-sided 95% quantile of the standard normal."""

CostField = Literal["flops_total", "flops_generated", "wall_seconds"]
TradeoffPoints = Sequence[tuple[float, float, float]]

_TERA = 1e12
_COST_AXIS = {
    "flops_total": ("mean TFLOPs per problem (prompt + generated)", _TERA),
    "flops_generated": ("mean TFLOPs per problem (generated tokens only)", _TERA),
    "wall_seconds": ("mean wall seconds per problem", 1.0),
}


# --- statistics --------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when `n` is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # at 0 or n successes the bound is exactly 0 or 1 (rounding would put it just inside)
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def paired_difference_interval(both: int, b: int, c: int, neither: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of the difference of two paired proportions, (b - c) / n: Newcombe's hybrid score
    interval for paired data (his method 10, Stat Med 1998; Altman et al., Statistics with Confidence),
    from the Wilson intervals of the two proportions and their continuity-corrected correlation. `both`, `b`, `c`, `neither`: pairs right on both sides, only
    on the first, only on the second, on neither. (-1, 1) when there are no pairs."""
    if min(both, b, c, neither) < 0:
        raise ValueError(f"counts must be >= 0, got {both}, {b}, {c}, {neither}")
    n = both + b + c + neither
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (both + b) / n, (both + c) / n
    l1, u1 = wilson_interval(both + b, n, z)
    l2, u2 = wilson_interval(both + c, n, z)
    margins = (both + b) * (c + neither) * (both + c) * (b + neither)
    # the correlation of the pairs, with Newcombe's continuity correction of a positive one
    cross = both * neither - b * c
    corrected = cross - n / 2 if cross > n / 2 else float(min(cross, 0))
    phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
    below = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    above = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    diff = p1 - p2
    return max(-1.0, diff - math.sqrt(max(below, 0.0))), min(1.0, diff + math.sqrt(max(above, 0.0)))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of `b` against `b + c` at 1/2.

    `b` and `c` are the discordant pairs (one method right where the other is wrong, and the
    reverse). 1.0 when there are none.
    """
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


# --- summaries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSummary:
    """Aggregate of one method's outcomes, compared with the baseline method.

    Means are over the outcomes without error (None when there are none). `flops_ratio`,
    `flops_generated_ratio` and `wall_ratio` are this method's mean over the baseline's on the
    `n_paired` problems both ran without error; `mcnemar_b` counts those this method got right and
    the baseline wrong, `mcnemar_c` the reverse. Comparisons are None for the baseline itself and
    when the baseline is missing.
    """

    method: str
    n: int
    n_errors: int
    n_correct: int
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    mean_flops_total: float | None
    mean_flops_generated: float | None
    mean_llm_prompt_tokens: float | None
    mean_llm_generated_tokens: float | None
    mean_slm_prompt_tokens: float | None
    mean_slm_generated_tokens: float | None
    mean_wall_seconds: float | None
    extraction_failures: int
    truncations: int
    baseline: str
    n_paired: int
    flops_ratio: float | None
    flops_generated_ratio: float | None
    wall_ratio: float | None
    mcnemar_b: int | None
    mcnemar_c: int | None
    mcnemar_p: float | None
    diff_low: float | None = None  # the paired accuracy difference with the baseline: its 95% interval
    diff_high: float | None = None
    samples: int = 1  # most samples of one problem
    pass_at: dict[str, float] | None = None  # with samples: "k" -> pass@k (unbiased), k = 1, 2, 4, ..., samples
    majority_accuracy: float | None = None  # with samples: the per-problem majority vote's accuracy

    @property
    def n_scored(self) -> int:
        return self.n - self.n_errors

    @property
    def is_baseline(self) -> bool:
        return self.method == self.baseline

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def join_runs(runs: Sequence[tuple[str, Sequence[Outcome]]]) -> list[Outcome]:
    """The outcomes of several runs, joined by problem id: a run's method merges with the same method of
    earlier runs when their problems are disjoint (shards), and is named `METHOD (RUN)` where they
    overlap, so both stay in the report (the first run keeps the plain name, e.g. the baseline)."""
    seen: dict[str, set[str]] = {}
    joined: list[Outcome] = []
    for label, outs in runs:
        mine: dict[str, set[str]] = {}
        for o in outs:
            mine.setdefault(o.method, set()).add(o.problem_id)
        rename: dict[str, str] = {}
        for m, ids in mine.items():
            if seen.get(m, set()) & ids:
                name, k = f"{m} ({label})", 2
                while name in seen or name in mine:  # two runs of one name: number them
                    name, k = f"{m} ({label} {k})", k + 1
                rename[m] = name
        for o in outs:
            joined.append(replace(o, method=rename[o.method]) if o.method in rename else o)
        for m, ids in mine.items():
            seen.setdefault(rename.get(m, m), set()).update(ids)
    return joined


def sample_of(o: Outcome) -> int | None:
    """The sample index of an outcome of a several-sample run (None: a one-sample run's)."""
    i = o.extra.get("sample")
    return i if isinstance(i, int) and not isinstance(i, bool) else None


def _by_method(outcomes: Iterable[Outcome]) -> dict[str, dict[str, Outcome]]:
    """method -> problem id -> outcome (a problem's first sample), methods in order of first appearance."""
    table: dict[str, dict[str, Outcome]] = {}
    for method, rows in _samples_by_method(outcomes).items():
        table[method] = {pid: min(outs, key=lambda o: sample_of(o) or 0) for pid, outs in rows.items()}
    return table


def _samples_by_method(outcomes: Iterable[Outcome]) -> dict[str, dict[str, list[Outcome]]]:
    """method -> problem id -> its outcomes (one, or one per sample), methods in order of first appearance."""
    table: dict[str, dict[str, list[Outcome]]] = {}
    seen: set[tuple[str, str, int | None]] = set()
    for o in outcomes:
        key = (o.method, o.problem_id, sample_of(o))
        if key in seen:
            which = "" if key[2] is None else f" sample {key[2]}"
            raise InputError(f"two outcomes for problem {o.problem_id!r} and method {o.method!r}{which}")
        seen.add(key)
        table.setdefault(o.method, {}).setdefault(o.problem_id, []).append(o)
    return table


def _wilson_float(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `p` at a (fractional) sample size `n` > 0."""
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(max(0.0, p * (1 - p) / n + z2 / (4 * n * n)))
    return max(0.0, center - half), min(1.0, center + half)


def clustered_interval(per_problem: Sequence[tuple[int, int]], z: float = Z95) -> tuple[float, float]:
    """95% interval of the mean accuracy over samples, from (correct, samples) per problem: the Wilson
    interval at the effective sample size, total samples over the design effect of the per-problem
    clusters (between the number of problems, when a problem's samples all agree, and the number of
    samples, when they are independent). (0, 1) without samples."""
    rows = [(c, m) for c, m in per_problem if m > 0]
    total = sum(m for _, m in rows)
    if total == 0:
        return 0.0, 1.0
    acc = sum(c for c, _ in rows) / total
    n = len(rows)
    var = n / (n - 1) * sum((c - acc * m) ** 2 for c, m in rows) / total**2 if n > 1 else 0.0
    n_eff = float(n) if var <= 0 or acc in (0.0, 1.0) else min(float(total), max(float(n), acc * (1 - acc) / var))
    if n == 1:
        n_eff = float(total)
    return _wilson_float(acc, n_eff, z)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator of one problem with `c` of `n` samples right: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(outs: Sequence[Outcome]) -> bool:
    """Whether the most frequent answer among a problem's samples (without error) is right; a tie goes to
    the answer that came first (lowest sample index); samples without an answer vote for none."""
    ok = sorted((o for o in outs if o.error is None), key=lambda o: sample_of(o) or 0)
    votes: dict[str | None, list[Outcome]] = {}
    for o in ok:
        votes.setdefault(None if o.answer is None else str(o.answer).strip(), []).append(o)
    if not votes:
        return False
    best = max(votes.values(), key=len)  # max keeps the first of equal counts: insertion order
    return best[0].answer is not None and best[0].correct


def _ks(samples: int) -> list[int]:
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return [*ks, samples]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ratio(num: Sequence[float], den: Sequence[float]) -> float | None:
    if not num:
        return None
    d = sum(den)
    return sum(num) / d if d > 0 else None


def summarize(outcomes: Iterable[Outcome], baseline: str = "llm") -> list[MethodSummary]:
    """One `MethodSummary` per method, in order of first appearance. Raises InputError when one
    method has two outcomes for the same problem."""
    table = _samples_by_method(outcomes)
    base_ok = {pid: [o for o in outs if o.error is None] for pid, outs in table.get(baseline, {}).items()}
    base = {pid: _problem_mean(outs) for pid, outs in base_ok.items() if outs}
    base_sampled = any(sample_of(o) is not None for outs in base_ok.values() for o in outs)
    has_baseline = baseline in table
    summaries = []
    for method, problems in table.items():
        rows = [o for outs in problems.values() for o in outs]
        ok = [o for o in rows if o.error is None]
        sampled = any(sample_of(o) is not None for o in rows)
        n_correct = sum(o.correct for o in ok)
        ok_by_problem = {pid: [o for o in outs if o.error is None] for pid, outs in problems.items()}
        if not ok:
            lo, hi = None, None
        elif sampled:
            lo, hi = clustered_interval([(sum(o.correct for o in outs), len(outs)) for outs in ok_by_problem.values()])
        else:
            lo, hi = wilson_interval(n_correct, len(ok))
        paired = [(_problem_mean(outs), base[pid]) for pid, outs in ok_by_problem.items() if outs and pid in base]
        compare = has_baseline and method != baseline
        exact = compare and not sampled and not base_sampled  # McNemar: one sample a problem on both sides
        b = sum(o.correct and not r.correct for o, r in paired)
        c = sum(r.correct and not o.correct for o, r in paired)
        both = sum(o.correct and r.correct for o, r in paired)
        diff = paired_difference_interval(both, b, c, len(paired) - both - b - c) if exact else (None, None)
        extra = {"samples": max(len(outs) for outs in problems.values()), **_sample_stats(ok_by_problem)} \
            if sampled else {}
        summaries.append(
            MethodSummary(
                method=method,
                n=len(rows),
                n_errors=len(rows) - len(ok),
                n_correct=n_correct,
                accuracy=n_correct / len(ok) if ok else None,
                ci_low=lo,
                ci_high=hi,
                mean_flops_total=_mean([o.flops_total for o in ok]),
                mean_flops_generated=_mean([o.flops_generated for o in ok]),
                mean_llm_prompt_tokens=_mean([o.llm_prompt_tokens for o in ok]),
                mean_llm_generated_tokens=_mean([o.llm_generated_tokens for o in ok]),
                mean_slm_prompt_tokens=_mean([o.slm_prompt_tokens for o in ok]),
                mean_slm_generated_tokens=_mean([o.slm_generated_tokens for o in ok]),
                mean_wall_seconds=None if _wall_unknown(ok) else _mean([o.wall_seconds for o in ok]),
                extraction_failures=sum(o.extraction_rule == "none" for o in ok),
                truncations=sum(o.truncated for o in ok),
                baseline=baseline,
                n_paired=len(paired) if has_baseline else 0,
                flops_ratio=_ratio([o.flops_total for o, _ in paired], [r.flops_total for _, r in paired])
                if has_baseline
                else None,
                flops_generated_ratio=_ratio(
                    [o.flops_generated for o, _ in paired], [r.flops_generated for _, r in paired]
                )
                if has_baseline
                else None,
                wall_ratio=_ratio([o.wall_seconds for o, _ in paired], [r.wall_seconds for _, r in paired])
                if has_baseline and not _wall_unknown([x for pair in paired for x in pair])
                else None,
                mcnemar_b=b if exact else None,
                mcnemar_c=c if exact else None,
                mcnemar_p=mcnemar_exact(b, c) if exact else None,
                diff_low=diff[0],
                diff_high=diff[1],
                **extra,
            )
        )
    return summaries


def _problem_mean(outs: Sequence[Outcome]) -> Outcome:
    """One problem's samples as one outcome: correct when the majority of samples is; costs averaged
    (a single sample: itself)."""
    if len(outs) == 1:
        return outs[0]
    n = len(outs)
    return replace(
        outs[0], correct=2 * sum(o.correct for o in outs) > n,
        flops_total=sum(o.flops_total for o in outs) / n, flops_generated=sum(o.flops_generated for o in outs) / n,
        wall_seconds=sum(o.wall_seconds for o in outs) / n,
        extra={**outs[0].extra, "wall_unknown": any(o.extra.get("wall_unknown") for o in outs)},
    )


def _sample_stats(ok_by_problem: Mapping[str, Sequence[Outcome]]) -> dict[str, Any]:
    """pass@k and the majority vote's accuracy over the problems with samples (without error)."""
    counts = [(len(outs), sum(o.correct for o in outs)) for outs in ok_by_problem.values() if outs]
    k_max = max((n for n, _ in counts), default=1)
    pass_at = {}
    for k in _ks(k_max):
        values = [pass_at_k(n, c, k) for n, c in counts if n >= k]
        if values:
            pass_at[str(k)] = sum(values) / len(values)
    voted = [majority_correct(outs) for outs in ok_by_problem.values() if outs]
    return {"pass_at": pass_at, "majority_accuracy": sum(voted) / len(voted) if voted else None}


# --- oracle frontier ---------------------------------------------------------------------------


def oracle_frontier(options: Mapping[str, Sequence[tuple[float, bool]]]) -> list[tuple[float, float]]:
    """The least mean cost of each reachable accuracy, choosing one option per problem.

    `options` maps a problem id to its (cost, correct) choices (e.g. every hand-over point, the
    SLM alone, the LLM alone). A problem costs its cheapest choice unless it is made correct, at
    its cheapest correct choice; making the problems with the smallest extra cost correct first
    gives, for every k, the cheapest way to get at least k right. Returns (accuracy, mean cost)
    pairs, accuracy increasing, from the accuracy of the all-cheapest choice (several problems may
    be right for free) up to the fraction of problems with any correct choice. Empty `options`
    give []. Raises InputError when a problem has no choices.
    """
    n = len(options)
    if n == 0:
        return []
    base_total = 0.0
    free = 0
    extras: list[float] = []
    for pid, choices in options.items():
        if not choices:
            raise InputError(f"problem {pid!r} has no choices")
        cheapest = min(cost for cost, _ in choices)
        base_total += cheapest
        right = [cost for cost, correct in choices if correct]
        if not right:
            continue
        extra = min(right) - cheapest
        if extra <= 0:
            free += 1
        else:
            extras.append(extra)
    extras.sort()
    total = base_total
    points = [(free / n, total / n)]
    for k, extra in enumerate(extras, start=free + 1):
        total += extra
        points.append((k / n, total / n))
    return points


def options_from_outcomes(
    outcomes: Iterable[Outcome], cost: CostField = "flops_total", methods: Sequence[str] | None = None
) -> dict[str, list[tuple[float, bool]]]:
    """Per problem, every method's (cost, correct) as a choice: the oracle over the methods run.

    Only problems that every chosen method (default: all) ran without error are included.
    """
    table = _by_method(outcomes)
    names = list(methods) if methods is not None else list(table)
    missing = [m for m in names if m not in table]
    if missing:
        raise ConfigError(f"no outcomes for method(s): {', '.join(missing)}")
    if not names:
        return {}
    common = set.intersection(*({pid for pid, o in table[m].items() if o.error is None} for m in names))
    first = table[names[0]]
    order = [pid for pid in first if pid in common]
    return {
        pid: [(float(getattr(table[m][pid], cost)), table[m][pid].correct) for m in names] for pid in order
    }


def frontier_cost_ratios(
    outcomes: Iterable[Outcome],
    frontier_options: Mapping[str, Sequence[tuple[float, bool]]],
    cost: CostField = "flops_total",
    frontier: Sequence[tuple[float, float]] | None = None,
) -> dict[str, float | None]:
    """Per method: its mean cost over the oracle frontier's least cost at the same accuracy (1.00: on
    the frontier; 1.10: 10% above it), both on the frontier's problems. None where the method did not
    run every one of those problems without error, or no frontier point reaches its accuracy.
    `frontier`: `oracle_frontier(frontier_options)` when the caller has it already."""
    if frontier is None:
        frontier = oracle_frontier(frontier_options)
    pids = list(frontier_options)
    ratios: dict[str, float | None] = {}
    for method, rows in _by_method(outcomes).items():
        ran = [rows[pid] for pid in pids if pid in rows and rows[pid].error is None]
        if not pids or len(ran) < len(pids):
            ratios[method] = None
            continue
        accuracy = sum(o.correct for o in ran) / len(ran)
        mean_cost = sum(float(getattr(o, cost)) for o in ran) / len(ran)
        reach = [c for a, c in frontier if a >= accuracy - 1e-9]
        ratios[method] = mean_cost / min(reach) if reach and min(reach) > 0 else None
    return ratios


# --- plots -------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("plots need matplotlib: pip install 'tandem[eval]'") from exc
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120, bbox_inches="tight")
    return out


def _cost_axis(cost: str) -> tuple[str, float]:
    try:
        return _COST_AXIS[cost]
    except KeyError:
        raise ConfigError(f"unknown cost {cost!r}; known: {', '.join(_COST_AXIS)}") from None


_MARKERS = {"slm": "o", "llm": "o", "oracle": "*", "fixed": "s", "tandem": "^", "route": "D", "cascade": "v"}


def _method_marker(method: str) -> str:
    """One marker per family of methods (fixed:N, tandem:EFFORT, ...), so families read apart."""
    return _MARKERS.get(method.partition(":")[0], "P")  # a display name, not always a method: no parsing


def _method_colors(n: int) -> list[Any]:
    """n distinct colours (tab10 up to 10 methods, tab20 beyond: no two methods share one)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_pareto(
    summaries: Sequence[MethodSummary],
    frontier: Sequence[tuple[float, float]] | None,
    path: str | os.PathLike[str],
    cost: CostField = "flops_total",
    *,
    title: str = "",
) -> Path:
    """Accuracy against mean cost per method (95% CI bars), with the oracle frontier as a step line.

    `frontier` holds (accuracy, mean cost) pairs in the same unit as `cost` in the outcomes (FLOPs
    or seconds), as `oracle_frontier` returns them.
    """
    label, scale = _cost_axis(cost)
    mean_attr = f"mean_{cost}"
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    xs_all: list[float] = []
    colors = _method_colors(len(summaries))
    for i, s in enumerate(summaries):
        x = getattr(s, mean_attr)
        if s.accuracy is None or x is None:
            continue
        x /= scale
        xs_all.append(x)
        lo = s.ci_low if s.ci_low is not None else s.accuracy
        hi = s.ci_high if s.ci_high is not None else s.accuracy
        ax.errorbar(
            [x],
            [100 * s.accuracy],
            yerr=[[100 * (s.accuracy - lo)], [100 * (hi - s.accuracy)]],
            fmt=_method_marker(s.method),
            color=colors[i],
            capsize=4,
            label=s.method,
        )
        ax.annotate(s.method, (x, 100 * s.accuracy), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if frontier:
        fx = [c / scale for _, c in frontier]
        fy = [100 * a for a, _ in frontier]
        xs_all.extend(fx)
        ax.step(fx, fy, where="post", color="black", linestyle="--", linewidth=1.2, label="oracle frontier")
    positive = [x for x in xs_all if x > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "Accuracy against cost")
    ax.grid(True, alpha=0.3)
    if xs_all:  # beside the axes, where it can hide no point
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def plot_handover_hist(outcomes: Iterable[Outcome], path: str | os.PathLike[str], *, bins: int = 20) -> Path:
    """Per method, how many LLM tokens were written before the hand-over (errors left out); a
    separate bar counts the problems with no hand-over (`handover_tokens` None)."""
    import numpy as np

    per_method: dict[str, list[int | None]] = {}
    for o in outcomes:
        if o.error is None:
            per_method.setdefault(o.method, []).append(o.handover_tokens)
    values = [v for vs in per_method.values() for v in vs if v is not None]
    if values:
        lo, hi = min(values), max(values)
        edges = np.histogram_bin_edges(values, bins=max(1, min(bins, hi - lo + 1)), range=(lo, hi + 1))
    else:
        edges = np.array([0.0, 1.0])
    n_bins = len(edges) - 1
    rows = max(1, len(per_method))
    fig = _figure(8.0, 1.0 + 1.8 * rows)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    positions = np.arange(n_bins + 1)
    tick_labels = ["no hand-over"] + [f"{edges[i]:.0f}" for i in range(n_bins)]
    for ax, (method, vs) in zip(axes, per_method.items(), strict=False):
        counts, _ = np.histogram([v for v in vs if v is not None], bins=edges)
        heights = [sum(v is None for v in vs), *counts.tolist()]
        colors = ["tab:gray"] + ["tab:blue"] * n_bins
        ax.bar(positions, heights, width=0.9, color=colors)
        ax.set_ylabel("problems")
        ax.set_title(method, fontsize=10, loc="left")
        ax.grid(True, axis="y", alpha=0.3)
    if not per_method:
        axes[0].text(0.5, 0.5, "no data", ha="center", va="center", transform=axes[0].transAxes)
    step = max(1, n_bins // 10)
    shown = [0, *range(1, n_bins + 1, step)]
    axes[-1].set_xticks(
        [positions[i] for i in shown], [tick_labels[i] for i in shown], rotation=45, ha="right"
    )
    axes[-1].set_xlabel("LLM tokens before the hand-over (bin start)")
    fig.suptitle("Where the LLM handed over")
    return _save(fig, path)


def plot_tradeoff(
    points: TradeoffPoints | Mapping[str, TradeoffPoints],
    path: str | os.PathLike[str],
    *,
    cost_label: str = "mean cost",
    title: str = "",
) -> Path:
    """(threshold, accuracy, cost) curves, one or several by name: accuracy and cost against the
    threshold (left, cost dashed on the right axis) and accuracy against cost (right)."""
    curves: Mapping[str, TradeoffPoints] = points if isinstance(points, Mapping) else {"": points}
    fig = _figure(11.0, 4.5)
    ax_t, ax_c = fig.subplots(1, 2)
    ax_cost = ax_t.twinx()
    colors = [f"C{i}" for i in range(10)]
    for i, (name, pts) in enumerate(curves.items()):
        ordered = sorted(pts)
        if not ordered:
            continue
        th = [p[0] for p in ordered]
        acc = [100 * p[1] for p in ordered]
        cost = [p[2] for p in ordered]
        color = colors[i % len(colors)]
        ax_t.plot(th, acc, marker="o", markersize=3, color=color, label=f"{name} accuracy".strip())
        ax_cost.plot(th, cost, linestyle="--", color=color, label=f"{name} cost".strip())
        ax_c.plot(cost, acc, marker="o", markersize=3, color=color, label=name or None)
        step = max(1, len(ordered) // 6)
        for t, c, a in list(zip(th, cost, acc, strict=True))[::step]:
            ax_c.annotate(f"{t:g}", (c, a), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax_t.set_xlabel("threshold")
    ax_t.set_ylabel("accuracy (%)")
    ax_cost.set_ylabel(cost_label)
    ax_t.grid(True, alpha=0.3)
    handles = ax_t.get_legend_handles_labels()
    cost_handles = ax_cost.get_legend_handles_labels()
    if handles[0]:
        ax_t.legend(handles[0] + cost_handles[0], handles[1] + cost_handles[1], fontsize=8, loc="best")
    ax_c.set_xlabel(cost_label)
    ax_c.set_ylabel("accuracy (%)")
    ax_c.grid(True, alpha=0.3)
    if any(curves.keys()):
        ax_c.legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "Threshold trade-off (labels: threshold)")
    return _save(fig, path)


# --- Markdown ----------------------------------------------------------------------------------


def _wall_unknown(outcomes: Sequence[Outcome]) -> bool:
    """Whether any outcome's wall time is unknown (its LLM part replays a recording without timing)."""
    return any(o.extra.get("wall_unknown") for o in outcomes)


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _tflops(x: float | None) -> str:
    return "–" if x is None else f"{x / _TERA:#.4g}"


def _pct(s: MethodSummary) -> str:
    if s.accuracy is None or s.ci_low is None or s.ci_high is None:
        return "–"
    return f"{100 * s.accuracy:.1f}% [{100 * s.ci_low:.1f}, {100 * s.ci_high:.1f}]"


def _tokens(prompt: float | None, generated: float | None) -> str:
    if prompt is None or generated is None:
        return "–"
    return f"{prompt:.0f} / {generated:.0f}"


def _pass_at(s: MethodSummary) -> str:
    if not s.pass_at:
        return "–"
    return ", ".join(f"@{k} {100 * v:.1f}%" for k, v in s.pass_at.items())


def _mcnemar(s: MethodSummary) -> str:
    if s.is_baseline:
        return "(baseline)"
    if s.mcnemar_p is None:
        return "–"
    return f"{s.mcnemar_p:.3g} ({s.mcnemar_b}/{s.mcnemar_c})"


def _difference(s: MethodSummary) -> str:
    if s.is_baseline:
        return "(baseline)"
    if s.diff_low is None or s.diff_high is None or s.mcnemar_b is None or s.mcnemar_c is None or not s.n_paired:
        return "–"
    diff = 100 * (s.mcnemar_b - s.mcnemar_c) / s.n_paired
    return f"{diff:+.1f} [{100 * s.diff_low:+.1f}, {100 * s.diff_high:+.1f}]"


def render_markdown(
    summaries: Sequence[MethodSummary],
    title: str,
    notes: str | Sequence[str] | None = None,
    *,
    images: Sequence[tuple[str, str]] = (),
) -> str:
    """A Markdown report: one table row per method, then notes and `images` ((caption, path))."""
    baseline = summaries[0].baseline if summaries else "llm"
    sampled = any(s.samples > 1 for s in summaries)
    headers = [
        "method",
        "accuracy [95% CI]",
        *(["samples", "pass@k", "majority vote"] if sampled else []),
        "n",
        "errors",
        "TFLOPs total",
        "TFLOPs generated",
        f"total vs {baseline}",
        f"generated vs {baseline}",
        "LLM tokens prompt / gen",
        "SLM tokens prompt / gen",
        "wall s",
        f"wall vs {baseline}",
        "extraction failures",
        "truncated",
        f"McNemar p vs {baseline} (b/c)",
        f"points vs {baseline} [95% CI]",
    ]
    lines = [f"# {title}", ""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    for s in summaries:
        cells = [
            f"`{s.method}`",
            _pct(s),
            *([str(s.samples), _pass_at(s), _num(None if s.majority_accuracy is None else 100 * s.majority_accuracy,
                                                  ".1f") + ("%" if s.majority_accuracy is not None else "")]
              if sampled else []),
            str(s.n),
            str(s.n_errors),
            _tflops(s.mean_flops_total),
            _tflops(s.mean_flops_generated),
            _num(s.flops_ratio, ".3f"),
            _num(s.flops_generated_ratio, ".3f"),
            _tokens(s.mean_llm_prompt_tokens, s.mean_llm_generated_tokens),
            _tokens(s.mean_slm_prompt_tokens, s.mean_slm_generated_tokens),
            _num(s.mean_wall_seconds, ".2f"),
            _num(s.wall_ratio, ".3f"),
            str(s.extraction_failures),
            str(s.truncations),
            _mcnemar(s),
            _difference(s),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if not summaries:
        lines.append("| (no outcomes) |" + " |" * (len(headers) - 1))
    lines += ["", "Notes", ""]
    user_notes = [notes] if isinstance(notes, str) else list(notes or [])
    lines += [f"- {n}" for n in user_notes]
    if summaries and not any(s.is_baseline for s in summaries):
        lines.append(f"- The baseline `{baseline}` is not among the outcomes: no ratios or tests.")
    paired = [
        f"`{s.method}` {s.n_paired}" for s in summaries if not s.is_baseline and s.mcnemar_p is not None
    ]
    if paired:
        lines.append(
            f"- Paired comparisons with `{baseline}` use the problems both ran without error: {', '.join(paired)}."
        )
    if sampled:
        lines += [
            "- Several samples per problem (`samples`, sample i with seed + i): accuracy is the mean over samples, "
            "its interval the Wilson interval at the effective sample size (a problem's samples are not "
            "independent); pass@k is the unbiased estimator (1 - C(n-c, k) / C(n, k), per problem with n samples "
            "and c right), the majority vote takes each problem's most frequent answer. n counts samples; ratios "
            "compare per-problem means; McNemar needs one sample per problem on both sides.",
        ]
    lines += [
        "- Accuracy excludes samples that failed to run (errors); the interval is the 95% Wilson score interval.",
        "- Means (TFLOPs, tokens, wall) are per problem over samples without error. TFLOPs total counts "
        "prompt and generated tokens (2 x parameters x tokens, each computed token once); "
        "TFLOPs generated counts generated tokens only.",
        f"- Ratios are the method's mean over `{baseline}`'s on the paired problems (below 1: cheaper).",
        "- McNemar: exact two-sided binomial test on the discordant pairs; b = method right and "
        f"`{baseline}` wrong, c = the reverse. Points vs `{baseline}`: the paired accuracy difference "
        "(b - c) / n in percentage points, with Newcombe's 95% interval for paired proportions.",
        "- Extraction failures: no final answer could be extracted. Truncated: generation hit its token limit.",
    ]
    for caption, rel in images:
        lines += ["", f"![{caption}]({rel})"]
    return "\n".join(lines) + "\n"


# --- the report --------------------------------------------------------------------------------


def write_report(
    outcomes: Iterable[Outcome],
    out_dir: str | os.PathLike[str],
    title: str,
    frontier_options: Mapping[str, Sequence[tuple[float, bool]]] | None = None,
    *,
    baseline: str = "llm",
    notes: str | Sequence[str] | None = None,
) -> Path:
    """Write `report.md`, `summary.json` and the plots (pareto.png, pareto_generated.png,
    handover.png) into `out_dir`; return the path of `report.md`.

    `frontier_options` (per problem, (total FLOPs, correct) choices: see `oracle_frontier`) adds
    the oracle frontier to the total-FLOPs plot; `options_from_outcomes` builds them from the
    methods run.
    """
    rows = list(outcomes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarize(rows, baseline=baseline)
    frontier = oracle_frontier(frontier_options) if frontier_options else None
    plot_pareto(summaries, frontier, out / "pareto.png", "flops_total", title=title)
    plot_pareto(summaries, None, out / "pareto_generated.png", "flops_generated", title=title)
    plot_handover_hist(rows, out / "handover.png")
    extra_notes = [notes] if isinstance(notes, str) else list(notes or [])
    ratios: dict[str, float | None] = {}
    if frontier and frontier_options:
        acc_min, cost_min = frontier[0]
        acc_max, cost_max = frontier[-1]
        extra_notes.append(
            f"Oracle frontier over {len(frontier_options)} problems: {100 * acc_min:.1f}% at "
            f"{cost_min / _TERA:.4g} TFLOPs (cheapest choice everywhere) up to {100 * acc_max:.1f}% at "
            f"{cost_max / _TERA:.4g} TFLOPs."
        )
        ratios = frontier_cost_ratios(rows, frontier_options, frontier=frontier)
        shown = [f"`{m}` {r:.2f}" for m, r in ratios.items() if r is not None]
        if shown:
            extra_notes.append(
                "Total FLOPs over the oracle frontier's at the same accuracy, on its problems (1.00: on the "
                "frontier): " + ", ".join(shown) + "."
            )
    images = [
        ("accuracy against total FLOPs", "pareto.png"),
        ("accuracy against generated FLOPs", "pareto_generated.png"),
        ("hand-over points", "handover.png"),
    ]
    md = render_markdown(summaries, title, extra_notes, images=images)
    (out / "summary.json").write_text(
        json.dumps(
            {
                "title": title,
                "baseline": baseline,
                "methods": [s.to_dict() for s in summaries],
                "frontier": [list(p) for p in frontier] if frontier else None,
                "frontier_cost_ratio": ratios or None,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    path = out / "report.md"
    path.write_text(md, encoding="utf-8")
    return path
