"""``axon demo``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from axon.cli._options import json_option
from axon.cli._output import Output
from axon.store.atomic import remove_tree


@click.command("demo")
@click.option("--dir", "sandbox", type=click.Path(file_okay=False, path_type=Path),
              help="Sandbox directory to use (default: a new temporary one).")
@click.option("--keep", is_flag=True, help="Keep the sandbox afterwards to look around.")
@json_option
def demo_cmd(sandbox: Path | None, keep: bool, as_json: bool) -> None:
    """Run the whole pipeline on the bundled example model in a sandbox (no network, no root).

    Build the example model -> install -> test -> validate -> publish -> start mlos-core ->
    register -> send {"input": "Hello, MLOS!"} -> shut the server down.

    \b
    Examples:
      axon demo
      axon demo --keep --dir /tmp/axon-demo
    """
    from axon.demo import DEMO_SPEC, run_demo

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
        emb = result.response["outputs"]["embeddings"]
        lines = [f"{'stage':<72} {'time':>9}"]
        lines += [f"{s['stage'][:72]:<72} {s['seconds'] * 1000:7.1f}ms" for s in result.stages]
        lines += ["", "response (abridged):",
                  f"  embeddings {emb['dtype']} {emb['shape']}: {[round(v, 4) for v in emb['data'][0][:4]]} …",
                  f"  inference_time_us {result.response['inference_time_us']}, "
                  f"queue_time_us {result.response['queue_time_us']}, batch_size {result.response['batch_size']}",
                  "", f"sandbox: {root}" + ("" if keep or not created else " (removed; keep it with --keep)"),
                  "The same steps for real:",
                  f"  axon install {DEMO_SPEC} --from ./my-model-dir   # or: axon install hf/ORG/REPO",
                  f"  axon test {DEMO_SPEC} && axon validate {DEMO_SPEC}",
                  f"  sudo axon setup-production && axon publish {DEMO_SPEC}",
                  f"  mlos-core serve & axon register {DEMO_SPEC}",
                  f"  curl -X POST http://127.0.0.1:8080/models/{DEMO_SPEC}/inference \\",
                  "       -H 'Content-Type: application/json' -d '{\"input\": \"Hello, MLOS!\"}'"]
        return "\n".join(lines)

    out.result({"sandbox": str(root), "kept": keep or not created, "endpoint": result.endpoint,
                "stages": result.stages, "response": result.response}, human)
