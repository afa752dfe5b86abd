"""Pull the final answer out of a model's text.

Pure string functions: no model, no parser library. Each rule that can find an answer has a name,
recorded in `Extraction.rule`, so that a report can say how answers were found.
"""

from __future__ import annotations

import re
from typing import Literal

from tandem.types import Extraction

__all__ = ["answer_complete", "extract_answer", "find_boxed", "looks_like_code", "looks_truncated", "strip_think"]

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# At a line start, `[^\S\n]*` skips that line's own indentation only: `\s*` there would rescan a
# whitespace run spanning many lines once per line it spans (quadratic time on blank-line floods).
_ANSWER_IS_RE = re.compile(
    r"(?:\b(?:the\s+)?(?:final\s+)?answer\s*(?:is|:|=)|^[^\S\n]*#{4})[ \t]*:?[ \t]*(?P<ans>[^\n]*)",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBER_RE = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+(?:\.\d+)?)?(?![\w])")
_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*$", re.MULTILINE)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
_CODE_LINE_RE = re.compile(
    r"^[^\S\n]*(?:def\s+\w+\s*\(|class\s+\w+|import\s+\w|from\s+[\w.]+\s+import\s|return\b|for\s+.+:\s*$"
    r"|while\s+.+:\s*$|if\s+.+:\s*$|@\w)",
    re.MULTILINE,
)


def strip_think(text: str) -> str:
    """The text after the last ``</think>``; "" when a ``<think>`` block was never closed."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        return text.split("<think>", 1)[0]
    return text


def find_boxed(text: str) -> list[str]:
    """Contents of every closed ``\\boxed{...}`` / ``\\fbox{...}``, braces balanced, in order.

    A box whose braces never close (a truncated answer) is left out; a box inside a box is
    reported once, by its outer box.
    """
    found: list[str] = []
    pos = 0
    while (m := _BOXED_RE.search(text, pos)) is not None:
        start = m.end()
        depth = 1
        i = start
        while i < len(text) and depth:
            c = text[i]
            if c == "\\":  # skip escaped braces such as \{ and \}
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(c, 0)
            i += 1
        if depth:
            break
        found.append(text[start : i - 1])
        pos = i
    return found


def answer_complete(text: str, *, thinks: bool = False, tail: int = 48) -> bool:
    """Whether a math answer is finished: a ``\\boxed{}`` has closed (after the thought, for a reasoning
    model's text) and the line it stands on has ended, or `tail` more characters have followed it.
    The stop rule `stop_at_answer`: what a model writes after its boxed answer is not graded."""
    if thinks:
        if "</think>" not in text:
            return False
        text = text.rsplit("</think>", 1)[1]
    m = _BOXED_RE.search(text)
    while m is not None:
        depth, i = 1, m.end()
        while i < len(text) and depth:
            c = text[i]
            if c == "\\":
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(c, 0)
            i += 1
        if depth:
            return False
        if text[m.end():i - 1].strip():  # a box with content
            rest = text[i:]
            return "\n" in rest or len(rest) >= tail
        m = _BOXED_RE.search(text, i)
    return False


def _unwrap_boxed(ans: str) -> str:
    """`\\boxed{\\boxed{5}}` -> `5`."""
    ans = ans.strip()
    while (m := _BOXED_RE.match(ans)) is not None and ans.endswith("}"):
        inner = find_boxed(ans)
        if not inner or len(inner[0]) != len(ans) - m.end() - 1:
            break
        ans = inner[0].strip()
    return ans


def _clean_answer_is(raw: str) -> str:
    """Cut the captured rest of line at the end of its sentence and strip markup."""
    ans = re.split(r"\.(?=\s|$)", raw, maxsplit=1)[0]  # sentence end, not a decimal point
    ans = ans.strip().strip("*_").strip()
    if ans.startswith("$$") and ans.endswith("$$") and len(ans) > 4:
        ans = ans[2:-2]
    elif ans.startswith("\\(") and ans.endswith("\\)"):
        ans = ans[2:-2]
    elif ans.startswith("\\[") and ans.endswith("\\]"):
        ans = ans[2:-2]
    ans = ans.strip().strip("$").strip().strip("*_").rstrip(".").strip()
    return ans


def _last_number(text: str) -> str | None:
    matches = list(_NUMBER_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    number = m.group(0)
    before = text[: m.start()]
    # a minus sign directly before counts unless it follows an operand: "5-3" and "x - 3" give 3,
    # "= -3" and "is -3" give -3
    if before.endswith(("-", "\u2212")) and not re.search(r"(?:[\d)\]}]|\b[A-Za-z])\s*[-\u2212]$", before):
        number = "-" + number
    return number


def looks_truncated(text: str) -> bool:
    """Whether `text` seems cut off mid-answer.

    Signs: an unclosed box or code fence, a dangling operator, or a long text whose last word has
    no closing punctuation.
    """
    body = text.rstrip()
    if not body:
        return False
    if _BOXED_RE.search(body) and len(find_boxed(body)) < len(_BOXED_RE.findall(body)):
        return True
    if len(_FENCE_RE.findall(body)) % 2 == 1:
        return True
    return body[-1] in "=+-*/^_,:;({[\\&" or (body[-1].isalpha() and len(body) >= 200)


def looks_like_code(text: str) -> bool:
    """Whether unfenced `text` reads as Python (a def, import, return or block statement)."""
    return bool(_CODE_LINE_RE.search(text))


def _extract_math(text: str) -> Extraction:
    boxed = [b for b in find_boxed(text) if b.strip()]
    if boxed:
        return Extraction(_unwrap_boxed(boxed[-1]), "boxed")
    for m in reversed(list(_ANSWER_IS_RE.finditer(text))):
        raw = m.group("ans")
        while (inner := _ANSWER_IS_RE.search(raw)) is not None:  # "Final Answer: The answer is 5"
            raw = inner.group("ans")
        ans = _clean_answer_is(raw)
        if ans and not _BOXED_RE.search(ans):  # a box here never closed: the text was cut
            return Extraction(ans, "answer_is")
    number = _last_number(text)
    if number is not None:
        return Extraction(number, "last_number")
    return Extraction(None, "none")


def _extract_code(text: str) -> Extraction:
    fences = list(_FENCE_RE.finditer(text))
    # pair fences in order: opening, closing, opening, closing...
    blocks: list[tuple[str, str, bool]] = []  # (language, code, closed)
    i = 0
    while i < len(fences):
        opening = fences[i]
        lang = opening.group(1).lower()
        body_start = opening.end() + 1
        if i + 1 < len(fences):
            closing = fences[i + 1]
            blocks.append((lang, text[body_start : closing.start()], True))
            i += 2
        else:
            blocks.append((lang, text[body_start:], False))
            i += 1
    python_blocks = [b for b in blocks if b[0] in _PYTHON_TAGS and b[1].strip()]
    if python_blocks:
        _lang, code, closed = python_blocks[-1]
        return Extraction(code.rstrip() + "\n", "code_fence" if closed else "code_fence_unclosed")
    if not blocks and text.strip() and looks_like_code(text):
        return Extraction(text.rstrip() + "\n", "raw")
    return Extraction(None, "none")


def extract_answer(text: str, task: Literal["math", "code"]) -> Extraction:
    """The final answer of `text` (after any think block) and the rule that found it.

    Math, in order: last ``\\boxed{}``/``\\fbox{}`` ("boxed"), last "The (final) answer is X" or
    "#### X" ("answer_is"), last number ("last_number"), else "none". Code: last ```python or bare
    fenced block ("code_fence"; "code_fence_unclosed" when the final fence never closes), unfenced
    text that reads as code ("raw"), else "none".
    """
    body = strip_think(text)
    if task == "math":
        return _extract_math(body)
    if task == "code":
        return _extract_code(body)
    raise ValueError(f"unknown task {task!r}: expected 'math' or 'code'")
