"""math-verify off the main thread: the same verdicts, and a time limit that holds."""

from __future__ import annotations

import threading
import time

from tandem.bench.graders import grade_math
from tandem.bench.verify_worker import VerifyWorker
from tandem.types import Problem


def _slow(gold: str, pred: str) -> bool:
    if pred == "hang":
        time.sleep(60)
    return gold == pred


def test_a_worker_thread_grades_as_the_main_thread_does() -> None:
    cases = [(Problem("a", "q", "\\frac{1}{2}"), "so \\boxed{0.5}"), (Problem("b", "q", "\\sqrt{2}"), "\\boxed{2^{1/2}}"),
             (Problem("c", "q", "x^2+1"), "\\boxed{1+x^2}"), (Problem("d", "q", "3\\pi"), "\\boxed{9}")]
    here = [grade_math(p, t).correct for p, t in cases]
    there: list[bool] = []
    th = threading.Thread(target=lambda: there.extend(grade_math(p, t).correct for p, t in cases))
    th.start()
    th.join(120)
    assert there == here == [True, True, True, False]


def test_an_overrunning_comparison_is_killed_and_the_worker_replaced() -> None:
    w = VerifyWorker(_slow)
    try:
        assert w("1", "1", timeout_s=5.0) == ("ok", True)  # warm
        t0 = time.monotonic()
        assert w("1", "hang", timeout_s=0.5) == ("timeout", None)
        assert time.monotonic() - t0 < 10
        assert w("2", "2", timeout_s=30.0) == ("ok", True)  # a fresh child answers
    finally:
        w.close()
