from __future__ import annotations

import pytest

from axon.errors import USAGE, InvalidSpecError
from axon.store.spec import ModelSpec, parse_spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf/bert-base-uncased@latest", ModelSpec("hf", "bert-base-uncased", "latest")),
        ("hf/sentence-transformers/all-MiniLM-L6-v2@main",
         ModelSpec("hf", "sentence-transformers/all-MiniLM-L6-v2", "main")),
        ("acme/ranker@2.1.0", ModelSpec("acme", "ranker", "2.1.0")),
        ("acme/ranker", ModelSpec("acme", "ranker", "latest")),
        ("acme/ranker@1.0.0+build.5", ModelSpec("acme", "ranker", "1.0.0+build.5")),
        ("a/b_c.d-e@X", ModelSpec("a", "b_c.d-e", "X")),
    ],
)
def test_valid_specs(text: str, expected: ModelSpec) -> None:
    spec = parse_spec(text)
    assert spec == expected
    assert parse_spec(str(spec)) == spec


def test_parts_map_to_directories() -> None:
    assert parse_spec("hf/org/repo@v1").parts == ("hf", "org", "repo", "v1")
    assert parse_spec("acme/ranker@2").parts == ("acme", "ranker", "2")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "namespace and a name"),
        ("ranker", "namespace and a name"),
        ("acme/", "name is empty"),
        ("/acme/ranker", "absolute path"),
        ("acme/ranker@", "version after '@' is empty"),
        ("acme/ranker@1@2", "more than one '@'"),
        ("acme/../ranker", "may not be '..'"),
        ("acme/./ranker", "may not be '.'"),
        ("../acme/ranker", "may not be '..'"),
        ("acme/ranker@..", "may not be '..'"),
        ("acme//ranker", "name is empty"),
        ("a/b/c/d", "at most one '/'"),
        ("acme\\ranker/x", "backslash"),
        ("acme/ran\x00ker", "control character"),
        ("acme/ran\nker", "control character"),
        ("acme/-ranker", "must start with a letter or digit"),
        ("acme/ranker name", "must start with a letter or digit"),
        ("acme/ranker@1+x/y", "hold only letters"),
        ("acme/ránker", "must start with a letter or digit"),
        ("acme/" + "x" * 97, "longer than 96"),
        ("acme/ranker@v+1!", "must start with a letter or digit"),
        ("acme+/ranker", "must start with a letter or digit"),
    ],
)
def test_rejected_specs(text: str, fragment: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(text)
    assert fragment in str(info.value)
    assert info.value.exit_code == USAGE
    assert info.value.hint and "NAMESPACE/NAME" in info.value.hint


def test_96_characters_is_allowed() -> None:
    assert parse_spec("acme/" + "x" * 96).name == "x" * 96
