from __future__ import annotations

from pathlib import Path

from axon.cli._reference import render_reference

DOC = Path(__file__).resolve().parents[3] / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    expected = render_reference()
    assert DOC.read_text() == expected, "docs/cli.md is stale: python -m axon.cli._reference > docs/cli.md"


def test_every_command_has_examples() -> None:
    text = render_reference()
    for section in text.split("\n## `axon ")[1:]:
        name = section.split("`", 1)[0]
        if name in ("cache", "config"):  # groups: their subcommands carry examples
            continue
        assert "Examples:" in section, f"axon {name} has no Examples in its help"
