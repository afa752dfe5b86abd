"""The thought apart from the answer: split whole, and as it streams in any pieces, alike."""

from __future__ import annotations

import random

import pytest

from tandem.server.thought import ThoughtSplitter, split_thought

TEXTS = ["<think>\nabc</think>\n\nanswer 4", "plain answer", "<think>\nnever closed", "<think", "<think>\n</think>x",
         "<thin k> no", "<think>\na</thi b</think>\n\n\nok\n", "\n</think>", ""]


def test_split_thought() -> None:
    assert split_thought("<think>\nI think.</think>\n\nIt is 4.") == ("I think.", "It is 4.")
    assert split_thought("<think>\ncut mid-thought") == ("cut mid-thought", "")
    assert split_thought("no thought </think> here") == ("", "no thought </think> here")


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_in_any_pieces_it_splits_as_the_whole(text: str) -> None:
    rng = random.Random(text)
    for _ in range(300):
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        s, thought, answer = ThoughtSplitter(), "", ""
        for p in pieces:
            t, a = s.feed(p)
            thought, answer = thought + t, answer + a
        t, a = s.flush()
        assert (thought + t, answer + a) == split_thought(text), pieces
