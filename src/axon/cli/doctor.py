"""``axon doctor``: what this machine can do, and what to fix."""

from __future__ import annotations

import click

from axon.cli._context import load_settings
from axon.cli._options import json_option
from axon.cli._output import Output


@click.command("doctor")
@json_option
def doctor_cmd(as_json: bool) -> None:
    """Check onnxruntime and CUDA, the cache and production paths, group membership and MLOS Core.

    Each line says what was found, with a hint when something is off.

    \b
    Examples:
      axon doctor
      axon doctor --json
    """
    from axon import __version__
    from axon.doctor import run_checks

    checks = run_checks(load_settings())

    def human() -> str:
        lines = [f"axon {__version__}"]
        for c in checks:
            lines.append(f"{'ok  ' if c['ok'] else 'WARN'}  {c['name']:<22} {c['detail']}")
            if c.get("hint"):
                lines.append(f"      hint: {c['hint']}")
        return "\n".join(lines)

    Output(json_mode=as_json).result({"checks": checks}, human)
