"""HumanEval grading: the completion runs in the sandbox, the task's tests in a trusted judge.

Code running in a process can read and write everything that process holds, so no verdict may
come from the process that runs the completion. Three processes take part:

- the *candidate*: the prompt and the completion, loaded in the sandbox (`tandem.bench.sandbox`:
  unprivileged uid, no network, own pid and mount namespaces, limits on time, memory, disk). It
  serves calls: it reads a request (function name and arguments, as a Python literal) from one
  pipe, calls the function, and writes the result back on another pipe as a Python literal;
- the *judge*: a separate Python process that never executes candidate code. It runs the prompt
  (for the helper functions some tests use, such as ``encode_cyclic``) and the task's tests, and
  calls ``check`` with a proxy whose calls go to the candidate. A result is parsed with
  `ast.literal_eval`: only plain literals (numbers, strings, bytes, None, and lists, tuples,
  dicts and sets of them) cross, so the tests compare real values, never an object of the
  completion's. The judge writes its verdict on a pipe the candidate cannot reach;
- the grader (this process) starts both, bounds the total time, and reads the verdict.

The task's tests and prompt are trusted (they come from the benchmark), the completion is not.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import IO, Any

from tandem.answer import extract_answer, looks_truncated
from tandem.bench.sandbox import SandboxError, SandboxResult, run_sandboxed
from tandem.errors import InputError
from tandem.types import Grade, Problem

__all__ = ["MAX_REPLY_BYTES", "build_program", "grade_humaneval"]

logger = logging.getLogger(__name__)

MAX_REPLY_BYTES = 1 << 20
"""Longest result the candidate may send for one call (its literal text); longer fails the call."""
JUDGE_GRACE_S = 1.0
"""How long the judge may run past the candidate's time limit before it is killed."""
JUDGE_EXTRA_MB = 512
"""The judge's address-space limit is the candidate's plus this."""

_SOLUTION = "solution.py"

# Python literals both ways. Only values of the exact built-in types are encoded (a subclass, or
# any other object, is refused), and decoding is `ast.literal_eval`, which evaluates nothing;
# `inf` and `nan` are the only names it accepts, as floats.
_CODEC = r"""
import ast as _ast


def _encode(value, depth=0):
    if depth > 250:
        raise ValueError("nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, float, complex, str, bytes):
        return repr(value)
    if kind is list:
        return "[" + ", ".join([_encode(v, depth + 1) for v in value]) + "]"
    if kind is tuple:
        return "(" + "".join([_encode(v, depth + 1) + ", " for v in value]) + ")"
    if kind is dict:
        items = [_encode(k, depth + 1) + ": " + _encode(v, depth + 1) for k, v in value.items()]
        return "{" + ", ".join(items) + "}"
    if kind is set or kind is frozenset:
        return "{" + ", ".join([_encode(v, depth + 1) for v in value]) + "}" if value else "set()"
    if getattr(kind, "__module__", None) == "numpy" and getattr(value, "ndim", None) == 0:
        return _encode(value.item(), depth + 1)  # a numpy scalar: its plain Python value
    raise TypeError("a " + kind.__name__ + " is not a plain literal")


class _Floats(_ast.NodeTransformer):
    def visit_Name(self, node):
        if node.id in ("inf", "nan"):
            return _ast.copy_location(_ast.Constant(float(node.id)), node)
        return node


def _decode(text):
    return _ast.literal_eval(_Floats().visit(_ast.parse(text, mode="eval")))
"""

# program.py in the sandbox. The solution runs under a name other than __main__ (as the reference
# harness does, which exec()s it), so that an `if __name__ == "__main__":` demo does not run.
# Replies: "ready" once loaded, then per request "ok LITERAL", "raised NAME" or "bad TYPE".
_SERVER = (
    _CODEC
    + r"""
import os, runpy


def _serve(requests, replies, exit_now):
    namespace = runpy.run_path("solution.py", run_name="solution")
    replies.write(b"ready\n")
    replies.flush()
    for line in requests:
        name, args, kwargs = _decode(line.decode("utf-8"))
        try:
            function = namespace[name]
        except KeyError:
            reply = "raised NameError"
        else:
            try:
                value = function(*args, **kwargs)
            except Exception as exc:
                reply = "raised " + type(exc).__name__
            else:
                try:
                    reply = "ok " + _encode(value)
                except Exception:
                    reply = "bad " + type(value).__name__
        replies.write(reply.encode("utf-8", "replace") + b"\n")
        replies.flush()
    exit_now(0)


_serve(open(REQUESTS_FD, "rb"), open(REPLIES_FD, "wb"), os._exit)
"""
)

_JUDGE = (
    _CODEC
    + r"""
import builtins, json, os, resource, sys


class _Stop(BaseException):
    # the candidate's process ended, or broke the protocol: no test can go on (and `check`
    # cannot catch this with `except Exception`)
    def __init__(self, why):
        super().__init__(why)
        self.why = why


class CandidateError(Exception):
    pass


class _Candidate:
    def __init__(self, name, requests, replies, max_reply):
        self.__name__ = name
        self._requests, self._replies, self._max_reply = requests, replies, max_reply
        self.calls = 0
        self.stop = None
        self.raised = None  # (exception given to `check`, the candidate's exception name)

    def __repr__(self):
        return "<candidate " + self.__name__ + ">"

    def _halt(self, why):
        self.stop = self.stop or why
        raise _Stop(self.stop)

    def __call__(self, *args, **kwargs):
        if self.stop is not None:
            raise _Stop(self.stop)
        request = (_encode((self.__name__, args, kwargs)) + "\n").encode("utf-8")
        self.calls += 1
        try:
            self._requests.write(request)
            self._requests.flush()
            line = self._replies.readline(self._max_reply + 1)
        except OSError:
            line = b""
        if not line.endswith(b"\n"):
            self._halt("ended" if len(line) <= self._max_reply else "garbled")
        tag, _, body = line[:-1].partition(b" ")
        if tag == b"ok":
            try:
                return _decode(body.decode("utf-8"))
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                self._halt("garbled")
        if tag in (b"raised", b"bad") and body.isascii() and body.decode().isidentifier():
            name = body.decode()
            if tag == b"bad":
                raise CandidateError("the candidate returned a " + name + ", not a plain literal")
            exc = CandidateError("the candidate raised " + name)
            kind = getattr(builtins, name, None)
            if isinstance(kind, type) and issubclass(kind, Exception):
                try:  # the same built-in exception, for tests that expect one
                    exc = kind("raised by the candidate")
                except Exception:
                    pass
            self.raised = (exc, name)
            raise exc
        self._halt("garbled")


def _main():
    spec = json.loads(sys.stdin.read())
    verdict = os.dup(1)  # only the verdict goes there: what the tests print goes to stderr
    os.dup2(2, 1)
    resource.setrlimit(resource.RLIMIT_AS, (spec["memory_bytes"], spec["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_CPU, (spec["cpu_s"], spec["cpu_s"] + 1))

    def finish(outcome, **extra):
        os.write(verdict, (json.dumps({"outcome": outcome, **extra}) + "\n").encode())
        os._exit(0)

    requests = open(spec["requests_fd"], "wb")
    replies = open(spec["replies_fd"], "rb")
    namespace = {"__name__": "__check__", "__builtins__": builtins}
    try:
        exec(compile(spec["prompt"], "<prompt>", "exec"), namespace)
        exec(compile(spec["test"], "<test>", "exec"), namespace)
        check = namespace["check"]
    except BaseException as exc:
        finish("setup_error", detail=type(exc).__name__ + ": " + str(exc)[:300])
    proxies = {}
    for name in spec["candidate_functions"]:
        proxies[name] = namespace[name] = _Candidate(name, requests, replies, spec["max_reply"])
    candidate = proxies[spec["entry_point"]]
    ready = replies.readline(16)
    if ready != b"ready\n":
        finish("ended" if not ready.strip() else "garbled", calls=0)
    try:
        check(candidate)
    except _Stop as stop:
        finish(stop.why, calls=sum(p.calls for p in proxies.values()))
    except BaseException as exc:
        raised = [p.raised[1] for p in proxies.values() if p.raised is not None and p.raised[0] is exc]
        finish("failed", error=type(exc).__name__, candidate_error=raised[0] if raised else None)
    stopped = [p.stop for p in proxies.values() if p.stop is not None]
    if stopped:  # `check` swallowed the end of the candidate
        finish(stopped[0], calls=sum(p.calls for p in proxies.values()))
    finish("passed", calls=sum(p.calls for p in proxies.values()))


_main()
"""
)

_OUTCOMES = {"passed", "failed", "ended", "garbled", "setup_error"}


def build_program(problem: Problem, code: str) -> str:
    """The program the sandbox loads: the prompt (or, if `code` defines the entry point itself,
    the prompt's imports) + the code. The tests are not part of it: they run in the judge.

    `problem.meta` needs "prompt", "test" and "entry_point", as in the HumanEval file.
    """
    _check_meta(problem)
    prompt: str = problem.meta["prompt"]
    entry: str = problem.meta["entry_point"]
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        # the whole prompt is valid Python (its stub has a docstring for body) and carries helper
        # functions some tasks need; the completion's own definition then replaces the stub
        source = f"{_trusted_prompt(prompt)}\n\n{code}"
    else:  # a body that continues the prompt's function
        first = next((line for line in code.splitlines() if line.strip()), "")
        body = code if first[:1] in (" ", "\t") else textwrap.indent(code, "    ")
        source = prompt + body
    return f"{source}\n"


def grade_humaneval(problem: Problem, text: str, *, timeout_s: float = 10.0, memory_mb: int = 512) -> Grade:
    """Correct iff the task's `check` passes, run by the judge on the sandboxed completion.

    Reasons: "correct", "empty_output", "no_answer_extracted", "syntax_error", "truncated" (an
    unclosed final code fence that failed), "exited_early" (the completion's process ended with
    status 0 before answering every call), "failed" (a test failed, or the completion raised,
    returned something other than a plain literal or broke the protocol), or the sandbox's
    reason for the end of the completion's process ("timeout", "memory", "killed", "failed").
    `timeout_s` bounds the whole grading (plus `JUDGE_GRACE_S`); `memory_mb` is the completion's
    address-space limit. Raises InputError when the task's own tests do not run.
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
    verdict, result = _judge(problem, program, timeout_s, memory_mb)
    outcome = verdict["outcome"]
    if outcome == "passed":
        return Grade(True, "correct", extraction)
    if outcome == "setup_error":
        raise InputError(f"the tests of HumanEval problem {problem.id} do not run: {verdict.get('detail')}")
    if outcome == "ended":  # the completion's process ended before answering
        reason = "exited_early" if result is None or result.reason == "passed" else result.reason
    elif outcome == "timeout":
        reason = "timeout"
    elif verdict.get("candidate_error") == "MemoryError":
        reason = "memory"
    else:
        reason = "failed"
    if truncated and reason == "failed":
        return Grade(False, "truncated", extraction)
    return Grade(False, reason, extraction)


def _judge(
    problem: Problem, program: str, timeout_s: float, memory_mb: int
) -> tuple[dict[str, Any], SandboxResult | None]:
    """Run the judge against the sandboxed program: (the judge's verdict, the sandbox's result)."""
    deadline = time.monotonic() + timeout_s + JUDGE_GRACE_S
    prompt: str = problem.meta["prompt"]
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    open_fds = [requests_r, requests_w, replies_r, replies_w]
    spec = {
        "prompt": _trusted_prompt(prompt),
        "test": problem.meta["test"],
        "entry_point": problem.meta["entry_point"],
        "candidate_functions": _candidate_functions(prompt, problem.meta["entry_point"]),
        "requests_fd": requests_w,
        "replies_fd": replies_r,
        "max_reply": MAX_REPLY_BYTES,
        "memory_bytes": (memory_mb + JUDGE_EXTRA_MB) << 20,
        "cpu_s": math.ceil(timeout_s + JUDGE_GRACE_S),
    }
    result: SandboxResult | None = None
    judge: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryFile() as spec_file, tempfile.TemporaryFile() as judge_err:
            spec_file.write(json.dumps(spec).encode("utf-8"))
            spec_file.seek(0)
            try:
                judge = subprocess.Popen(
                    [sys.executable, "-I", "-B", "-c", _JUDGE],
                    stdin=spec_file,
                    stdout=subprocess.PIPE,
                    stderr=judge_err,
                    pass_fds=(requests_w, replies_r),
                    cwd="/",
                    env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise SandboxError(f"could not start the HumanEval judge: {exc}") from exc
            _close(open_fds, requests_w, replies_r)
            server = _SERVER.replace("REQUESTS_FD", str(requests_r)).replace("REPLIES_FD", str(replies_w))
            try:
                result = run_sandboxed(
                    server,
                    files={_SOLUTION: program},
                    pass_fds=(requests_r, replies_w),
                    timeout_s=timeout_s,
                    memory_mb=memory_mb,
                )
            finally:
                _close(open_fds, requests_r, replies_w)  # the judge sees the end of the candidate
            verdict = _verdict(judge, deadline, judge_err)
    finally:
        _close(open_fds, *open_fds)
        if judge is not None and judge.returncode is None:
            judge.kill()
            judge.wait()
    return verdict, result


def _verdict(judge: subprocess.Popen[bytes], deadline: float, err: IO[bytes]) -> dict[str, Any]:
    try:
        out, _ = judge.communicate(timeout=max(deadline - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired:  # the tests themselves ran past the time limit
        judge.kill()
        judge.communicate()
        return {"outcome": "timeout"}
    with contextlib.suppress(ValueError):
        verdict = json.loads(out.decode("utf-8", "replace").partition("\n")[0])
        if isinstance(verdict, dict) and verdict.get("outcome") in _OUTCOMES:
            return verdict
    err.seek(0, os.SEEK_END)
    err.seek(max(0, err.tell() - 2000))
    logger.warning(
        "the HumanEval judge gave no verdict (exit %s): %s",
        judge.returncode,
        err.read().decode("utf-8", "replace").strip(),
    )
    killed = judge.returncode in (-signal.SIGKILL, -signal.SIGXCPU)  # out of time
    return {"outcome": "timeout" if killed else "lost"}


def _close(open_fds: list[int], *fds: int) -> None:
    for fd in fds:
        if fd in open_fds:
            open_fds.remove(fd)
            os.close(fd)


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


def _trusted_prompt(prompt: str) -> str:
    """The prompt as the judge runs it: all of it if it is valid Python, else its imports."""
    return prompt if _compiles(prompt) else _imports(prompt)


def _candidate_functions(prompt: str, entry: str) -> list[str]:
    """The entry point and the prompt's other stubs (a docstring for body): the completion's to write.

    In the judge these names call the candidate; every other function of the prompt (a helper
    such as ``encode_cyclic``) is the prompt's own, which the completion cannot replace.
    """
    names = {entry}
    with contextlib.suppress(SyntaxError, ValueError, RecursionError, MemoryError):
        for node in ast.parse(prompt).body:
            if isinstance(node, ast.FunctionDef) and all(_is_doc_or_pass(s) for s in node.body):
                names.add(node.name)
    return sorted(names)


def _is_doc_or_pass(statement: ast.stmt) -> bool:
    if isinstance(statement, ast.Pass):
        return True
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and (isinstance(statement.value.value, str) or statement.value.value is Ellipsis)
    )


def _imports(prompt: str) -> str:
    return "\n".join(
        line for line in prompt.splitlines() if re.match(r"(?:import\s|from\s+\S+\s+import\s)", line)
    )
