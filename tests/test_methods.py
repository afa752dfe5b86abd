"""The method grammar, parsed in one place."""

from __future__ import annotations

import pytest

from tandem.errors import ConfigError
from tandem.methods import Method


@pytest.mark.parametrize("name", ["slm", "llm", "tandem", "tandem:low", "fixed:0", "fixed:256", "afterthink",
                                  "route", "route:high", "cascade", "cascade:-0.5", "oracle"])
def test_every_method_parses_and_prints_back(name: str) -> None:
    assert str(Method.parse(name)) == name


def test_parts() -> None:
    assert Method.parse("fixed:64") == Method("fixed", budget=64)
    assert Method.parse("tandem:medium").effort == "medium" and Method.parse("cascade:-1.25").threshold == -1.25


@pytest.mark.parametrize(("name", "why"), [
    ("fixed:x", "N an integer"), ("fixed:-5", "at least 0"), ("cascade:abc", "mean log-prob"),
    ("cascade:nan", "finite"), ("tandem:", "EFFORT an effort's name"), ("route:a b", "EFFORT an effort's name"),
    ("bogus", "unknown method"),
    ("bogus:1", "unknown method"), ("", "unknown method"),
])
def test_bad_names_are_one_clear_error(name: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        Method.parse(name)
