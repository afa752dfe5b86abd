"""Graders on real benchmark rows and on adversarial strings."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from tandem.bench.graders import GRADERS, get_grader, grade_gsm8k, grade_math, normalize_number
from tandem.bench.humaneval import grade_humaneval
from tandem.errors import ConfigError, InputError
from tandem.types import Grade, Problem

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = Path(os.environ.get("TANDEM_DATA_DIR", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"benchmark data not found at {path} (set TANDEM_DATA_DIR)")
    return path


def _rows(data_dir: Path, name: str, n: int) -> list[dict[str, str]]:
    with open(data_dir / name, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def _math(gold: str) -> Problem:
    return Problem(id="t", question="q", answer=gold)


# --- real rows --------------------------------------------------------------------------------


def test_gsm8k_reference_solutions_are_correct_and_perturbed_wrong(data_dir: Path) -> None:
    for row in _rows(data_dir, "gsm8k/test.jsonl", 25):
        problem = Problem(id=row["id"], question=row["question"], answer=row["answer"])
        good = grade_gsm8k(problem, f"{row['solution']}\n#### {row['answer']}")
        assert good == Grade(True, "correct", good.extraction), row["id"]
        assert good.extraction is not None and good.extraction.rule == "answer_is"
        with_commas = grade_gsm8k(problem, f"{row['solution']}\nThe answer is ${int(row['answer']):,}.")
        assert with_commas.correct, row["id"]
        wrong = grade_gsm8k(problem, f"{row['solution']}\n#### {int(row['answer']) + 1}")
        assert (wrong.correct, wrong.reason) == (False, "wrong_answer"), row["id"]


def test_math500_reference_solutions_are_correct_and_perturbed_wrong(data_dir: Path) -> None:
    for row in _rows(data_dir, "math500/test.jsonl", 25):
        problem = Problem(id=row["id"], question=row["question"], answer=row["answer"])
        good = grade_math(problem, row["solution"])
        assert good.correct, (row["id"], good)
        assert good.extraction is not None and good.extraction.rule == "boxed"
        wrong = grade_math(problem, f"The answer is $\\boxed{{{row['answer']}9}}$.")
        assert not wrong.correct, (row["id"], wrong)
        assert wrong.reason in {"wrong_answer", "unparsable_answer"}


# --- adversarial strings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "text", "correct"),
    [
        ("\\frac{1}{2}", "The answer is 0.5.", True),
        ("0.5", "$\\boxed{\\frac{1}{2}}$", True),
        ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", False),
        ("\\frac{\\sqrt2}{2}", "so $\\boxed{\\sqrt{2}/2}$", True),
        ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\dfrac{\\sqrt{2}}{2}}", True),
        ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\sqrt{3}/2}", False),
        ("2\\sqrt{5}", "\\boxed{\\sqrt{20}}", True),
        ("(-\\infty, 3]", "\\boxed{(-\\infty,3]}", True),
        ("[2,5)", "\\boxed{[2,5]}", False),
        ("(-\\infty,-2)\\cup(2,\\infty)", "$x \\in \\boxed{(-\\infty, -2) \\cup (2, \\infty)}$", True),
        ("(-\\infty,-2)\\cup(2,\\infty)", "\\boxed{(-\\infty, -2) \\cup [2, \\infty)}", False),
        ("\\text{(A)}", "The answer is (A).", True),
        ("\\text{(A)}", "\\boxed{A}", True),
        ("\\text{(A)}", "\\boxed{B}", False),
        ("30^\\circ", "\\boxed{30}", True),
        ("30", "\\boxed{30^{\\circ}}", True),
        ("30^\\circ", "\\boxed{60^\\circ}", False),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi/2)}", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi)}", False),
        ("p - q", "\\boxed{-q + p}", True),
        ("x^2+2x+1", "\\boxed{(x+1)^2}", True),
        ("\\{1, 2\\}", "\\boxed{\\{2,1\\}}", True),
        ("4\\text{ cm}", "\\boxed{4}", True),
        ("\\$18.90", "\\boxed{18.90}", True),
        ("\\text{Evelyn}", "\\boxed{\\text{Evelyn}}", True),
        ("3", "first \\boxed{2}, then \\boxed{3}", True),
        ("3", "\\boxed{3}, no wait: \\boxed{2}", False),
        ("10", "\\boxed{\\boxed{10}}", True),
        ("1000", "The answer is 1,000.", True),
    ],
)
def test_grade_math_adversarial(gold: str, text: str, correct: bool) -> None:
    grade = grade_math(_math(gold), text)
    assert grade.correct is correct, grade
    assert grade.reason == ("correct" if correct else "wrong_answer")


@pytest.mark.parametrize(
    ("text", "reason", "rule"),
    [
        ("", "empty_output", "none"),
        ("   \n", "empty_output", "none"),
        ("I am not sure how to approach this.", "no_answer_extracted", "none"),
        ("Let x be the number of eggs. Then x equals", "no_answer_extracted", "none"),
        ("First, 16 - 3 = 13. Then 13 - 4 =", "truncated", "last_number"),
        ("So the answer is \\boxed{\\frac{1", "truncated", "last_number"),
        ("<think>Let me think about 2 and", "truncated", "none"),
        ("The answer is \\boxed{eighteen}.", "unparsable_answer", "boxed"),
    ],
)
def test_gsm8k_reasons(text: str, reason: str, rule: str) -> None:
    grade = grade_gsm8k(_math("18"), text)
    assert not grade.correct
    assert grade.reason == reason
    assert grade.extraction is not None and grade.extraction.rule == rule


@pytest.mark.parametrize(
    ("text", "correct"),
    [
        ("The answer is 1,000.", True),
        ("The answer is $1,000.00", True),
        ("\\boxed{1000 \\text{ dollars}}", True),
        ("#### 1000", True),
        ("She earns 1000 dollars.", True),
        ("The answer is 100.", False),
        ("The answer is 1,000.5", False),
    ],
)
def test_grade_gsm8k_formats(text: str, correct: bool) -> None:
    assert grade_gsm8k(_math("1000"), text).correct is correct


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("1,000.", "1000"),
        ("$12.50", "12.5"),
        ("\\$12.50", "12.5"),
        ("18.0", "18"),
        ("-5", "-5"),
        ("\u22125", "-5"),
        ("25%", "25"),
        ("3/4", "0.75"),
        ("0.75", "0.75"),
        ("\\frac{3}{4}", "0.75"),
        ("-\\frac{3}{4}", "-0.75"),
        ("1/3", "1/3"),
        ("1{,}000", "1000"),
        ("12 eggs", "12"),
        ("5 cm", "5"),
        ("abc", None),
        ("", None),
        ("1/0", None),
    ],
)
def test_normalize_number(raw: str, norm: str | None) -> None:
    assert normalize_number(raw) == norm


def test_bad_gold_is_an_error_not_a_grade() -> None:
    with pytest.raises(InputError):
        grade_gsm8k(_math("eighteen"), "The answer is 18.")
    with pytest.raises(InputError):
        grade_math(_math(""), "\\boxed{1}")


def test_grade_math_in_a_worker_thread() -> None:
    """math-verify's signal timeouts only work in the main thread: the grader must cope."""
    results: list[Grade] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(grade_math(_math("\\frac{\\sqrt2}{2}"), "\\boxed{\\sqrt{2}/2}"))
            results.append(grade_math(_math("\\frac{\\sqrt2}{2}"), "\\boxed{\\sqrt{3}/2}"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert not errors
    assert [g.correct for g in results] == [True, False]


def test_registry() -> None:
    assert set(GRADERS) >= {"gsm8k", "math", "humaneval"}
    assert get_grader("gsm8k") is grade_gsm8k
    assert get_grader("MATH") is grade_math
    assert get_grader("math500") is grade_math
    assert get_grader("humaneval") is grade_humaneval
    with pytest.raises(ConfigError, match="known: "):
        get_grader("nope")


def test_a_grader_by_import_path() -> None:
    from tandem.bench.graders import get_grader
    from tandem.errors import ConfigError

    g = get_grader("tandem.bench.graders:grade_gsm8k")
    assert g(Problem("p", "q", "7"), "so \\boxed{7}").correct
    for bad, why in (("nomodule_xyz:f", "cannot import"), ("tandem.bench.graders:nothing", "cannot import"),
                     ("tandem.bench.graders:MATH_VERIFY_TIMEOUT_S", "not a function")):
        with pytest.raises(ConfigError, match=why):
            get_grader(bad)
