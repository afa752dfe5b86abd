"""HumanEval grading: run a completion against the task's own tests in the sandbox."""

from __future__ import annotations

import re
import secrets
import textwrap

from tandem.answer import extract_answer, looks_truncated
from tandem.bench.sandbox import run_sandboxed
from tandem.errors import InputError
from tandem.types import Grade, Problem

__all__ = ["build_program", "grade_humaneval"]

_SOLUTION = "solution.py"
# run the solution under a name other than __main__ (as the reference harness does, which
# exec()s it), so that an `if __name__ == "__main__":` demo in a completion does not run
_RUNNER = "import runpy\nrunpy.run_path({solution!r}, run_name='solution')\nprint({marker!r})\n"


def build_program(problem: Problem, code: str) -> str:
    """Prompt (or, if `code` defines the entry point itself, the prompt's imports) + code + tests.

    `problem.meta` needs "prompt", "test" and "entry_point", as in the HumanEval file.
    """
    _check_meta(problem)
    prompt: str = problem.meta["prompt"]
    entry: str = problem.meta["entry_point"]
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        # the whole prompt is valid Python (its stub has a docstring for body) and carries helper
        # functions some tasks need; the completion's own definition then replaces the stub
        head = prompt if _compiles(prompt) else _imports(prompt)
        source = f"{head}\n\n{code}"
    else:  # a body that continues the prompt's function
        first = next((line for line in code.splitlines() if line.strip()), "")
        body = code if first[:1] in (" ", "\t") else textwrap.indent(code, "    ")
        source = prompt + body
    return f"{source}\n\n{problem.meta['test']}\n\ncheck({entry})\n"


def grade_humaneval(problem: Problem, text: str, *, timeout_s: float = 10.0, memory_mb: int = 512) -> Grade:
    """Correct iff the task's tests pass in the sandbox (exit 0, having run to the end).

    Reasons: "correct", "empty_output", "no_answer_extracted", "syntax_error", "truncated" (an
    unclosed final code fence that failed), "exited_early", or the sandbox's reason ("failed",
    "timeout", "memory", "killed").
    """
    _check_meta(problem)
    extraction = extract_answer(text, "code")
    if extraction.answer is None:
        if not text.strip():
            return Grade(False, "empty_output", extraction)
        return Grade(False, "truncated" if looks_truncated(text) else "no_answer_extracted", extraction)
    program = build_program(problem, extraction.answer)
    truncated = extraction.rule == "code_fence_unclosed"
    if not _compiles(program):
        return Grade(False, "truncated" if truncated else "syntax_error", extraction)
    marker = f"tandem-done-{secrets.token_hex(8)}"
    result = run_sandboxed(
        _RUNNER.format(solution=_SOLUTION, marker=marker),
        files={_SOLUTION: program},
        timeout_s=timeout_s,
        memory_mb=memory_mb,
    )
    if result.ok and result.stdout.rstrip().endswith(marker):
        return Grade(True, "correct", extraction)
    if result.ok:  # exit 0 without reaching the end: sys.exit(0) or os._exit(0) in the completion
        return Grade(False, "exited_early", extraction)
    if truncated and result.reason == "failed":
        return Grade(False, "truncated", extraction)
    return Grade(False, result.reason, extraction)


def _check_meta(problem: Problem) -> None:
    missing = [k for k in ("prompt", "test", "entry_point") if not problem.meta.get(k)]
    if missing:
        raise InputError(f"HumanEval problem {problem.id} lacks {', '.join(missing)} in its meta")


def _compiles(source: str) -> bool:
    try:
        compile(source, _SOLUTION, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _imports(prompt: str) -> str:
    return "\n".join(
        line for line in prompt.splitlines() if re.match(r"(?:import\s|from\s+\S+\s+import\s)", line)
    )
