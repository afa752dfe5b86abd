"""Answer extraction: one rule at a time, then the adversarial strings."""

from __future__ import annotations

import time
from typing import Literal

import pytest

from tandem.answer import extract_answer, find_boxed, looks_like_code, looks_truncated, strip_think
from tandem.types import Extraction


@pytest.mark.parametrize(
    ("text", "answer", "rule"),
    [
        ("so $\\boxed{42}$.", "42", "boxed"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "boxed"),
        ("nested \\boxed{\\frac{a^{2}}{\\sqrt{b}}} ok", "\\frac{a^{2}}{\\sqrt{b}}", "boxed"),
        ("first \\boxed{2}, then on reflection \\boxed{3}", "3", "boxed"),
        ("\\fbox{7}", "7", "boxed"),
        ("\\boxed{\\boxed{10}}", "10", "boxed"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}", "boxed"),
        ("\\boxed{5} and later \\boxed{6", "5", "boxed"),  # the unclosed box is ignored
        ("\\boxed{} The answer is 4.", "4", "answer_is"),  # an empty box is no answer
        ("The answer is 1,000.", "1,000", "answer_is"),
        ("The final answer is: **$12.50**.", "12.50", "answer_is"),
        ("Final Answer: The final answer is $18$. I hope it is correct.", "18", "answer_is"),
        ("The answer is \\frac{1}{2}. Because...", "\\frac{1}{2}", "answer_is"),
        ("The answer is 3.5.", "3.5", "answer_is"),
        ("Work...\n#### 72", "72", "answer_is"),
        ("the answer is 5\nno wait, the answer is 6", "6", "answer_is"),
        ("She has 3 apples and buys 1,250 more", "1,250", "last_number"),
        ("x = 5-3", "3", "last_number"),
        ("the temperature is -7 degrees", "-7", "last_number"),
        ("it costs $18.", "18", "last_number"),
        ("so 3/4 of them", "3/4", "last_number"),
        ("no digits here", None, "none"),
        ("", None, "none"),
        ("<think>the answer is 4</think>The answer is 5.", "5", "answer_is"),
        ("<think>long reasoning, 12 then 13", None, "none"),  # never left the think block
    ],
)
def test_extract_math(text: str, answer: str | None, rule: str) -> None:
    assert extract_answer(text, "math") == Extraction(answer, rule)


def test_find_boxed_balances_braces_and_escapes() -> None:
    assert find_boxed("\\boxed{a{b}c} \\boxed{\\}x} \\boxed{open") == ["a{b}c", "\\}x"]


@pytest.mark.parametrize(
    ("text", "answer", "rule"),
    [
        ("Here:\n```python\ndef f(x):\n    return x\n```\nDone.", "def f(x):\n    return x\n", "code_fence"),
        ("```\nprint(1)\n```", "print(1)\n", "code_fence"),
        ("```py\na = 1\n```\nthen\n```python\nb = 2\n```", "b = 2\n", "code_fence"),
        ("```python\nx = 1\n```\n```bash\nls\n```", "x = 1\n", "code_fence"),  # other languages ignored
        ("```python\ndef f(x):\n    return", "def f(x):\n    return\n", "code_fence_unclosed"),
        ("    return sorted(xs)\n", "    return sorted(xs)\n", "raw"),
        ("def f():\n    pass", "def f():\n    pass\n", "raw"),
        ("I cannot solve this.", None, "none"),
        ("```bash\nls\n```", None, "none"),
        ("```python\n```", None, "none"),
    ],
)
def test_extract_code(text: str, answer: str | None, rule: str) -> None:
    assert extract_answer(text, "code") == Extraction(answer, rule)


def test_strip_think() -> None:
    assert strip_think("<think>a</think>b") == "b"
    assert strip_think("<think>a</think>b<think>c</think>d") == "d"
    assert strip_think("x<think>never closed") == "x"
    assert strip_think("plain") == "plain"


@pytest.mark.parametrize(
    ("text", "truncated"),
    [
        ("so the total is 16 - 3 =", True),
        ("hence \\boxed{\\frac{1", True),
        ("```python\ndef f():", True),
        ("The answer is 5.", False),
        ("I don't know", False),
        ("word " * 60 + "and then the tot", True),
        ("", False),
    ],
)
def test_looks_truncated(text: str, truncated: bool) -> None:
    assert looks_truncated(text) is truncated


def test_looks_like_code() -> None:
    assert looks_like_code("import math\nx = 1")
    assert not looks_like_code("The function should return the sum.")


def test_unknown_task() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        extract_answer("1", "poetry")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("\n" * 80_000, "math"),
        (" \n" * 40_000, "math"),
        (" \t\r\n" * 20_000, "math"),
        ("x" + "\n" * 80_000 + "y", "code"),
        ("x" + "\t\n" * 40_000 + "y", "code"),
    ],
    ids=["newlines", "space-lines", "mixed", "code-newlines", "code-tab-lines"],
)
def test_extraction_is_linear_on_whitespace_heavy_text(text: str, task: Literal["math", "code"]) -> None:
    """Line-start patterns skip only the line's own indentation: a whitespace run spanning many lines
    is scanned once, not once per line (80,000 characters took seconds when it was)."""
    t0 = time.perf_counter()
    extract_answer(text, task)
    looks_like_code(text)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Work.\n\n   \n#### 72", "72"),
        ("Work.\n \u00a0#### 9", "9"),
        ("Work.\r\n\t####: 4", "4"),
    ],
)
def test_hash_answer_after_blank_and_indented_lines(text: str, answer: str) -> None:
    assert extract_answer(text, "math") == Extraction(answer, "answer_is")


def test_code_keyword_after_blank_lines_is_code() -> None:
    assert looks_like_code("\n\n   \n    return x")
    assert looks_like_code("text\n\n\t@decorator")
