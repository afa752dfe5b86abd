"""Trial answers: at a checkpoint, the SLM is asked for the final answer at once, on the cache its
shadow pass left warm (a few tokens). Whether it gives one, how sure it is, and whether it agrees with
the previous checkpoint's are cheap stop signals (DEER, Dynasor); the probe records them and the
pipeline computes them live when a classifier reads them."""

from __future__ import annotations

import time
from typing import Any

from .answer import find_boxed
from .types import Backend, GenerationRequest, Prompt


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def ask_trial(slm: Backend, prompt: Prompt, *, max_tokens: int, temperature: float = 0.0, seed: int = 0,
              previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate the content of the box `prompt` opens, cut where the box closes. Returns the answer
    (None when the box did not close within `max_tokens`), its token log-probs (mean, min, sum), the
    tokens it took, what it cost (`prompt_computed`, `seconds`) and whether it agrees with `previous`."""
    req = GenerationRequest(prompt, max_tokens=max(1, max_tokens), temperature=temperature, seed=seed)
    t0, text, lps, n = time.perf_counter(), "", [], 0
    with slm.stream(req) as s:
        for st in s:
            text += st.text
            n += 1
            if st.logprob is not None:
                lps.append(st.logprob)
            if find_boxed("\\boxed{" + text):
                break
        usage = s.usage
    boxed = find_boxed("\\boxed{" + text)
    answer = boxed[0].strip() if boxed else None
    return {
        "answer": answer, "closed": bool(boxed), "tokens": n,
        "lp_mean": _r(sum(lps) / len(lps)) if lps else None, "lp_min": _r(min(lps)) if lps else None,
        "lp_sum": _r(sum(lps)) if lps else None, "prompt_computed": usage.computed_prompt_tokens,
        "seconds": round(time.perf_counter() - t0, 4),
        "agree_prev": previous is not None and answer is not None and answer == previous.get("answer"),
    }
