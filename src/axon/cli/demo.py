"""``axon demo``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from axon.atomic import remove_tree
from axon.cli._options import json_option
from axon.cli._output import Output


@click.command("demo")
@click.option("--dir", "sandbox", type=click.Path(file_okay=False, path_type=Path),
              help="Sandbox directory to use (default: a new temporary one).")
@click.option("--keep", is_flag=True, help="Keep the sandbox afterwards to look around.")
@json_option
def demo_cmd(sandbox: Path | None, keep: bool, as_json: bool) -> None:
    """Run the pipeline on the bundled example model in a sandbox (no network, no root).

    \b
    Examples:
      axon demo
      axon demo --keep --dir /tmp/axon-demo
    """
    from axon.demo import DEMO_INPUT, DEMO_SPEC, run_demo

    out = Output(json_mode=as_json)
    created = sandbox is None
    root = Path(tempfile.mkdtemp(prefix="axon-demo-")) if sandbox is None else sandbox
    root.mkdir(parents=True, exist_ok=True)
    out.info(f"sandbox: {root}")
    try:
        result = run_demo(root, out.reporter)
    finally:
        if created and not keep:
            remove_tree(root)

    def human() -> str:
        lines = [f"{'stage':<62} {'time':>8}"]
        lines += [f"{s['stage']:<62} {s['seconds'] * 1000:7.1f}ms" for s in result.stages]
        lines += ["", f"{DEMO_INPUT!r} -> tokens {result.output['tokens']}",
                  f"  embedding ({result.output['embedding_dim']} dims) starts {result.output['embedding_head']}",
                  "", f"sandbox: {root}" + ("" if keep or not created else " (removed; keep it with --keep)"),
                  "The same steps for real:",
                  f"  axon install {DEMO_SPEC} --from ./my-model-dir",
                  f"  axon verify {DEMO_SPEC}"]
        return "\n".join(lines)

    out.result({"sandbox": str(root), "kept": keep or not created, "stages": result.stages,
                "output": result.output}, human)
