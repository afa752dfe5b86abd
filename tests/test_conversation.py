"""Conversations: the library entry point takes a list of messages; earlier turns' thoughts are
stripped, the client's system text follows tandem's."""

from __future__ import annotations

import pytest

from tandem.backends.scripted import ScriptedBackend
from tandem.errors import InputError
from tandem.pipeline import Tandem
from tandem.prompts import Conversation, PromptSet, strip_thoughts
from tandem.types import Message


def test_strip_thoughts() -> None:
    assert strip_thoughts("<think>\nhmm\n</think>\n\nThe answer is 4.") == "The answer is 4."
    assert strip_thoughts("hmm, opened by the template\n</think>\nIt is 4.") == "It is 4."
    assert strip_thoughts("No thought here.") == "No thought here."


def test_conversation_rule() -> None:
    msgs = [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "<think>x</think>Hello!"),
            Message("system", "Use metric units."), Message("user", "How far?")]
    conv, q = Conversation.from_messages(msgs)
    assert q == "How far?" and conv.system == "Be brief.\n\nUse metric units."
    p = PromptSet("math", conversation=conv).solve(q)
    assert [m.role for m in p.messages] == ["system", "user", "assistant", "user"]
    assert p.messages[0].content.endswith("\\boxed{}.\n\nBe brief.\n\nUse metric units.")
    assert p.messages[2].content == "Hello!" and p.messages[-1].content == "How far?"
    with pytest.raises(InputError, match="last message must be from the user"):
        Conversation.from_messages([Message("user", "a"), Message("assistant", "b")])


def test_solve_chat_runs_every_method_on_the_conversation() -> None:
    llm, slm = ScriptedBackend("The answer is \\boxed{4}."), ScriptedBackend("So \\boxed{4}.")
    t = Tandem(llm, slm)
    msgs = [Message("user", "What is 1+1?"), Message("assistant", "<think>easy</think>2"),
            Message("user", "And 2+2?")]
    for method in ("slm", "llm", "fixed:2"):
        r = t.solve_chat(msgs, method=method)
        assert r.answer.answer == "4" and r.question == "And 2+2?"
    seen = slm.stats.prompts[-1]
    assert "What is 1+1?" in seen and "easy" not in seen and seen.rstrip().endswith("<|assistant|>")
