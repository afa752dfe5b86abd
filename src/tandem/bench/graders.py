"""Graders: pure functions `(problem, text) -> Grade`, and a registry of them by name.

`Grade.reason` is "correct" or why not: "empty_output", "no_answer_extracted", "truncated" (the
text stops mid-answer), "unparsable_answer", "wrong_answer" (and, for code, the sandbox's reasons).
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal
from fractions import Fraction

from tandem.answer import extract_answer, looks_truncated, strip_think
from tandem.bench.humaneval import grade_humaneval
from tandem.bench.verify_worker import VerifyWorker
from tandem.errors import ConfigError, InputError
from tandem.types import Extraction, Grade, Grader, Problem

__all__ = ["GRADERS", "get_grader", "grade_gsm8k", "grade_math", "normalize_number"]

MATH_VERIFY_TIMEOUT_S = 5
"""Per parse/compare timeout of math-verify; it relies on SIGALRM, so only in the main thread."""
MAX_VERIFY_CHARS = 1000
"""Longer answers are not given to math-verify (sympy can take very long on them)."""

_NUM = r"\d+(?:\.\d+)?|\.\d+"
_NUMBER_RE = re.compile(rf"(?P<sign>-)?\s*(?P<num>{_NUM})(?:\s*/\s*(?P<den>{_NUM}))?")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.]+)\s*\}\s*\{\s*(-?[\d.]+)\s*\}")
_TEXT_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|mathbf)\s*\{([^{}]*)\}")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _number_text(s: str, *, keep_text: bool) -> str:
    """`s` without money, percent, degree, spacing and thousands-separator markup.

    `\\text{...}` becomes its words (`keep_text`) or a space (units dropped).
    """
    t = s.strip().replace("\u2212", "-").replace("{,}", ",")
    t = _FRAC_RE.sub(r"(\1)/(\2)", t)
    t = _TEXT_RE.sub(r" \1 " if keep_text else " ", t)
    t = _DEGREE_RE.sub("", t)
    t = re.sub(r"\\[!,;: ]|~", "", t)
    t = t.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    t = _THOUSANDS_RE.sub("", t)
    return re.sub(r"\((-?[\d.]+)\)", r"\1", t)  # (3)/(4) -> 3/4


def _to_fraction(s: str, *, whole: bool) -> Fraction | None:
    """The number in `s` (the first one; or only if it is all of `s`, when `whole`)."""
    t = _number_text(s, keep_text=not whole)
    m = (_NUMBER_RE.fullmatch if whole else _NUMBER_RE.search)(t.strip().rstrip(".") if whole else t)
    if m is None:
        return None
    try:
        value = Fraction(m.group("num"))
        if m.group("den") is not None:
            den = Fraction(m.group("den"))
            if den == 0:
                return None
            value /= den
    except (ValueError, ZeroDivisionError):
        return None
    return -value if m.group("sign") else value


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # a finite decimal
        return format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return f"{value.numerator}/{value.denominator}"


def normalize_number(s: str) -> str | None:
    """Canonical text of the first number in `s`, or None.

    Drops "$", thousands commas, "%", units and trailing zeros; fractions become decimals when
    exact ("3/4" -> "0.75", "\\frac{1}{2}" -> "0.5"), else "p/q"; so equal numbers compare equal.
    """
    value = _to_fraction(s, whole=False)
    return None if value is None else _format(value)


def _no_answer(text: str, extraction: Extraction) -> Grade:
    if not text.strip():
        return Grade(False, "empty_output", extraction)
    unclosed_think = "<think>" in text and "</think>" not in text
    truncated = unclosed_think or looks_truncated(strip_think(text))
    return Grade(False, "truncated" if truncated else "no_answer_extracted", extraction)


def _wrong(text: str, extraction: Extraction) -> Grade:
    """A wrong answer found outside a box in a text that stops mid-answer is called truncated."""
    cut = extraction.rule != "boxed" and looks_truncated(strip_think(text))
    return Grade(False, "truncated" if cut else "wrong_answer", extraction)


def grade_gsm8k(problem: Problem, text: str) -> Grade:
    """Numeric equality of the extracted answer and the gold number."""
    extraction = extract_answer(text, "math")
    if extraction.answer is None:
        return _no_answer(text, extraction)
    gold = normalize_number(problem.answer)
    if gold is None:
        raise InputError(f"gold answer of {problem.id} is not a number: {problem.answer!r}")
    pred = normalize_number(extraction.answer)
    if pred is None:
        return Grade(False, "unparsable_answer", extraction)
    return Grade(True, "correct", extraction) if pred == gold else _wrong(text, extraction)


def _canonical_latex(s: str) -> str:
    t = s.strip().replace("\u2212", "-")
    t = re.sub(r"\\(?:left|right|displaystyle)\b|\\[!,;: ]|~|\$|\s", "", t)
    t = re.sub(r"\\[dt]frac", r"\\frac", t)
    t = _DEGREE_RE.sub("", t)
    while (u := _TEXT_RE.sub(r"\1", t)) != t:
        t = u
    t = t.rstrip(".")
    if m := re.fullmatch(r"\(([A-Ea-e])\)", t):  # multiple choice "(A)"
        t = m.group(1)
    return t


def _quick_verdict(gold: str, pred: str) -> bool | None:
    """True/False when plain string or number comparison settles it, else None."""
    if _canonical_latex(gold) == _canonical_latex(pred):
        return True
    g, p = _to_fraction(gold, whole=True), _to_fraction(pred, whole=True)
    if g is not None and p is not None:
        return g == p
    return None


def _math_verify(gold: str, pred: str) -> bool | None:
    """math-verify's judgement; None when the prediction cannot be parsed. Its time limits use SIGALRM,
    which only the main thread gets: elsewhere it runs in a child process that is killed when it
    overruns (the answer is then unverifiable)."""
    if threading.current_thread() is not threading.main_thread():
        kind, value = _worker()(gold, pred, timeout_s=2.0 * MATH_VERIFY_TIMEOUT_S)
        if kind == "timeout":
            return None
        if kind == "error":
            raise InputError(f"math-verify failed: {value}")
        return value
    return _math_verify_here(gold, pred, MATH_VERIFY_TIMEOUT_S)


_WORKER: VerifyWorker | None = None
_WORKER_LOCK = threading.Lock()


def _worker() -> VerifyWorker:
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = VerifyWorker(_math_verify_untimed)
        return _WORKER


def _math_verify_untimed(gold: str, pred: str) -> bool | None:
    """In the worker process, which is killed from outside when it overruns."""
    return _math_verify_here(gold, pred, None)


def _math_verify_here(gold: str, pred: str, limit: int | None) -> bool | None:
    from math_verify import parse, verify  # heavy (sympy): imported on first use

    gold_parsed = parse(f"${gold}$", parsing_timeout=limit)
    if not gold_parsed:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=limit)
    if not gold_parsed:
        raise InputError(f"math-verify cannot parse the gold answer {gold!r}")
    pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=limit)
    if not pred_parsed:
        return None
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=limit))


def grade_math(problem: Problem, text: str) -> Grade:
    """Mathematical equivalence of the extracted answer and the gold LaTeX answer.

    A string/number comparison settles most cases; math-verify (sympy) the rest.
    """
    extraction = extract_answer(text, "math")
    if extraction.answer is None:
        return _no_answer(text, extraction)
    gold = problem.answer.strip()
    if not gold:
        raise InputError(f"problem {problem.id} has no gold answer")
    verdict = _quick_verdict(gold, extraction.answer)
    if verdict is None:
        if len(extraction.answer) > MAX_VERIFY_CHARS:
            return Grade(False, "unparsable_answer", extraction)
        verdict = _math_verify(gold, extraction.answer)
        if verdict is None:
            return Grade(False, "unparsable_answer", extraction)
    return Grade(True, "correct", extraction) if verdict else _wrong(text, extraction)


GRADERS: dict[str, Grader] = {
    "gsm8k": grade_gsm8k,
    "math": grade_math,
    "math500": grade_math,
    "aime24": grade_math,
    "amc23": grade_math,
    "humaneval": grade_humaneval,
}


def get_grader(name: str) -> Grader:
    """The grader registered under `name` (case-insensitive), or one given by import path
    (`package.module:function`, a function `(problem, text) -> Grade`)."""
    if ":" in name:
        return _import_grader(name)
    try:
        return GRADERS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown grader {name!r}; known: {', '.join(sorted(GRADERS))}, or "
                          "package.module:function") from None


def _import_grader(path: str) -> Grader:
    import importlib

    module, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"grader {path!r}: cannot import it ({exc})") from None
    if not callable(fn):
        raise ConfigError(f"grader {path!r} is not a function (problem, text) -> Grade")
    return fn
