"""The answer a request returns (`AnswerText`) and the report of a finished run (`final_report`), without
the HTTP layer: stop sequences across delta boundaries, the text streamed equals the final text or the
stream fails, a run that fails mid-stream, and the report both response paths send."""

from __future__ import annotations

import random

import pytest

from tandem import Tandem
from tandem.backends.scripted import ScriptedBackend
from tandem.server.answer import AnswerText, StreamDiverged, find_stop
from tandem.server.report import final_report
from tandem.server.runner import Outcome


def stream(answer: AnswerText, deltas: list[str]) -> str:
    return "".join(answer.feed(d) for d in deltas)


def test_a_stop_sequence_split_over_deltas_cuts_the_text_before_it():
    answer = AnswerText(["STOP", "\n\n"])
    got = stream(answer, ["The answer is 7.", " ST", "O", "P and more", " text"])
    assert got == "The answer is 7. " and answer.stop_hit == "STOP"
    assert answer.finish("The answer is 7. STOP and more text") == []
    assert answer.text == "The answer is 7. " and answer.finished


def test_text_that_may_start_a_stop_sequence_is_held_back_until_it_cannot():
    answer = AnswerText(["<end>"])
    assert answer.feed("a <e") == ""  # it could still become "a <end>"
    assert answer.feed("nvelope") == "a <enve"  # all but the last 4 characters, which could start "<end>"
    assert answer.finish("a <envelope") == ["lope"]
    assert answer.text == "a <envelope" and answer.stop_hit is None


def test_the_stop_sequence_met_first_wins_and_the_earliest_listed_breaks_ties():
    answer = AnswerText(["lo wor", "llo"])
    assert stream(answer, ["hel", "lo world"]) + "".join(answer.finish("hello world")) == "he"
    assert answer.stop_hit == "llo"  # it ends first
    answer = AnswerText(["b", "ab"])  # both end at the same place: the one that starts first
    assert answer.finish("xab") == ["x"] and answer.stop_hit == "ab"


def test_without_stop_sequences_every_delta_goes_out_as_it_comes():
    answer = AnswerText()
    assert [answer.feed(d) for d in ("Three", " plus", " four")] == ["Three", " plus", " four"]
    assert answer.finish("Three plus four") == [] and answer.text == "Three plus four"


def test_streamed_plus_finished_text_is_always_the_final_text_cut_at_its_first_stop():
    rng = random.Random(1)
    alphabet = "ab c\n"
    for _ in range(3000):
        final = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 3))]
        carried = final[:rng.randint(0, len(final))]  # the deltas may carry all of it or only a prefix
        deltas, pos = [], 0
        while pos < len(carried):
            n = rng.randint(1, 5)
            deltas.append(carried[pos:pos + n])
            pos += n
        answer = AnswerText(stops)
        sent = stream(answer, deltas) + "".join(answer.finish(final))
        cut = find_stop(final, stops)
        assert sent == answer.text == (final if cut is None else final[:cut]), (final, stops, deltas)
        assert (answer.stop_hit is None) == (cut is None)


def test_a_non_streamed_answer_is_the_final_text_cut_at_once():
    answer = AnswerText(["= 7", "nothing"])
    assert answer.finish(" So 3 + 4 = 7. The answer is 7.") == [" So 3 + 4 "]
    assert answer.text == " So 3 + 4 " and answer.stop_hit == "= 7"
    empty = AnswerText(["x"])
    assert empty.finish("") == [] and empty.text == "" and empty.finished


def test_a_final_text_that_does_not_continue_the_stream_fails_it():
    answer = AnswerText(["!"])
    assert stream(answer, ["The answer", " is 7"]) == "The answer is 7"
    with pytest.raises(StreamDiverged):
        answer.finish("The answer is 8")
    assert answer.diverged and not answer.finished
    assert answer.feed(" more") == "" and answer.text == "The answer is 7"
    with pytest.raises(RuntimeError):
        answer.finish("The answer is 7")


def test_a_final_text_longer_than_the_deltas_sends_the_rest_then_what_was_held():
    answer = AnswerText(["STOP"])
    assert stream(answer, ["abc", "de"]) == "ab"  # the last 3 characters could start "STOP"
    assert answer.finish("abcde fgh") == ["cde ", "fgh"] and answer.text == "abcde fgh"


def test_a_run_that_fails_mid_stream_never_sends_what_was_held_back():
    answer = AnswerText(["</a>"])
    assert stream(answer, ["The answer is 7", "</"]) == "The answer is "  # "7</" could still be "7</a>"
    # the run fails here (backend error, timeout, disconnect): the answer is never finished
    assert not answer.finished and not answer.diverged and answer.stop_hit is None
    assert answer.text == "The answer is "


def test_finishing_twice_is_a_bug():
    answer = AnswerText()
    answer.finish("x")
    with pytest.raises(RuntimeError):
        answer.finish("x")
    assert answer.feed("y") == "" and answer.text == "x"


# ---- the report of a finished run ---------------------------------------------------------------
def _outcome(reply: str, method: str = "slm", **kw) -> tuple[Outcome, Tandem]:
    t = Tandem(ScriptedBackend(" Step one. Step two.", name="big", n_params=1_500_000_000),
               ScriptedBackend(reply, name="small", n_params=500_000_000))
    deltas: list[tuple[str, str]] = []

    def hook(event: str, payload: dict) -> None:
        if event == "answer_delta":
            deltas.append((payload["role"], payload["text"]))

    result = t.solve("What is 3 + 4?", method=method, on_event=hook, **kw)
    return Outcome(result, deltas), t


def test_the_report_says_stop_for_a_stop_sequence_and_attributes_only_the_text_sent():
    outcome, t = _outcome(" So 3 + 4 = 7. The answer is 7.", slm_max_tokens=6)
    assert outcome.result.finish_reason == "length"
    answer = AnswerText(["= 7"])
    answer.finish(outcome.result.text)
    report = final_report(outcome, answer, t, request_id="r1", return_trace=False, compare_estimate=None)
    assert report.finish_reason == "stop" and report.tandem["stop_sequence"] == "= 7"
    assert report.tandem["parts"] == [{"role": "slm", "model": "small", "start": 0, "end": len(" So 3 + 4 ")}]
    assert report.tandem["request_id"] == "r1" and "trace" not in report.tandem
    assert "flops_relative_to_llm_alone" not in report.tandem
    u = report.usage
    assert u.completion_tokens == 6 and u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_the_report_says_length_for_a_cut_model_and_adds_the_trace_and_estimate_when_asked():
    outcome, t = _outcome(" So 3 + 4 = 7. The answer is 7.", slm_max_tokens=3)
    answer = AnswerText()
    answer.finish(outcome.result.text)
    report = final_report(outcome, answer, t, request_id="r2", return_trace=True, compare_estimate=100)
    assert report.finish_reason == "length" and report.tandem["stop_sequence"] is None
    assert report.tandem["trace"]["text"] == answer.text
    assert report.tandem["flops_relative_to_llm_alone"] == pytest.approx(
        report.tandem["flops_total"] / (2 * 1.5e9 * 100))
    assert report.tandem["parts"][-1]["end"] == len(answer.text)
