"""Generate docs/cli.md from the click tree (a test fails when the file is stale).

Regenerate with: python -m axon.cli._reference > docs/cli.md
"""

from __future__ import annotations

import click

from axon.cli import COMMANDS, cli

INTRO = """# axon CLI reference

Generated from the command definitions by `python -m axon.cli._reference > docs/cli.md`;
`tests/axon/cli/test_reference.py` fails when this file is stale.

Exit codes: `0` success, `1` operation failed, `2` bad usage or bad input, `3` integrity failure,
`4` permission denied. Errors are one line on stderr (`error: …`), followed by a `hint: …` line with
the fix. Results go to stdout; with `--json`, stdout holds exactly one JSON document. Progress goes
to stderr. `--debug` (or `AXON_DEBUG=1`) shows tracebacks.
"""


def _context(cmd: click.Command, name: str) -> click.Context:
    # Fixed widths so the file does not depend on the terminal it was generated in.
    return click.Context(cmd, info_name=name, terminal_width=80, max_content_width=80,
                         help_option_names=["-h", "--help"])


def _render(cmd: click.Command, path: str, out: list[str], depth: int) -> None:
    ctx = _context(cmd, path)
    out.append(f"{'#' * depth} `{path}`\n")
    out.append("```text")
    out.append(cmd.get_help(ctx))
    out.append("```\n")
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.list_commands(ctx)):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                _render(sub, f"{path} {name}", out, depth + 1)


def render_reference() -> str:
    out = [INTRO]
    ctx = _context(cli, "axon")
    out.append("## `axon`\n")
    out.append("```text")
    out.append(cli.get_help(ctx))
    out.append("```\n")
    for name in sorted(COMMANDS):
        cmd = cli.get_command(ctx, name)
        if cmd is not None:
            _render(cmd, f"axon {name}", out, 2)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
