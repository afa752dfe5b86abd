"""An embedded llama.cpp LLM whose chat template opens a thought is a reasoning LLM: the pipeline hands its
thought over and grades after `</think>` (SmolLM2 with a think-style template)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.backends.llamacpp import LlamaCppBackend, LlamaCppConfig
from tandem.backends.scripted import ScriptedBackend
from tandem.config import load_settings
from tandem.pipeline import DecodingSettings, PipelineConfig, Tandem

pytestmark = pytest.mark.real

THINKING = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}"
    "{% endif %}"
)
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def test_a_template_that_opens_a_thought_makes_a_reasoning_llm(smol_path: Path) -> None:
    plain = LlamaCppBackend(LlamaCppConfig(str(smol_path), n_ctx=1024, n_threads=2))
    thinking = LlamaCppBackend(LlamaCppConfig(str(smol_path), n_ctx=1024, n_threads=2, chat_template=THINKING))
    try:
        assert not plain.info.thinks and thinking.info.thinks
        slm = ScriptedBackend("So the answer is \\boxed{7}.", name="slm")
        t = Tandem(thinking, slm, config=PipelineConfig(stage_budgets=(8, 16),
                                                        decoding=DecodingSettings(llm_max_tokens=24, slm_max_tokens=16)))
        r = t.solve(QUESTION, method="fixed:8")
        assert r.text.startswith("<think>\n") and "</think>" in r.text and r.answer.answer == "7"
        assert r.handover_tokens is not None and r.handover_tokens >= 8 and r.llm_text.strip()
        alone = t.solve(QUESTION, method="llm")
        assert alone.text.startswith("<think>\n")
    finally:
        plain.close()
        thinking.close()


def test_chat_template_is_an_embedded_models_option() -> None:
    s = load_settings(None, {"llm": {"model": "x.gguf", "chat_template": THINKING}})
    assert s.llm.chat_template == THINKING
    from tandem.errors import ConfigError

    with pytest.raises(ConfigError, match="llamacpp only"):
        load_settings(None, {"llm": {"kind": "scripted", "model": "x", "chat_template": THINKING}})
