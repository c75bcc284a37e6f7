"""``axon test``, ``validate``, ``run``, ``test-integration``."""

from __future__ import annotations

from pathlib import Path

import click

from axon.cli._context import load_settings
from axon.cli._options import json_option, quiet_option, spec_argument
from axon.cli._output import Output
from axon.errors import AxonError, UsageError
from axon.store.spec import ModelSpec

DEVICE = click.Choice(["auto", "cpu", "cuda"])


class ChecksFailed(AxonError):
    """One or more checks failed (exit 1); each was reported on its own line."""


@click.command("test")
@spec_argument
@click.option("--device", type=DEVICE, help="Execution device (default: config 'device').")
@json_option
def smoke_test_cmd(spec: ModelSpec, device: str | None, as_json: bool) -> None:
    """Quick smoke test of a cached model: integrity, onnx.checker, load, one inference.

    One line per check; exit 1 if any fails.

    \b
    Examples:
      axon test acme/ranker@2.1.0
      axon test acme/ranker@2.1.0 --device cuda --json
    """
    from axon.validation import run_tests

    run = run_tests(spec, load_settings(), device=device)
    rows = [{"name": c.name, "ok": c.ok, "detail": c.detail, "seconds": c.seconds} for c in run.checks]
    Output(json_mode=as_json).result(
        {"spec": str(spec), "passed": run.ok, "checks": rows},
        lambda: "\n".join(f"{'PASS' if c.ok else 'FAIL'}  {c.name:<14} {c.detail}  ({c.seconds * 1000:.0f} ms)"
                          for c in run.checks))
    if not run.ok:
        raise ChecksFailed(f"{sum(not c.ok for c in run.checks)} check(s) failed for {str(spec)!r}.",
                           hint=f"Details above; reinstall with: axon install {spec} --force")


@click.command("validate")
@spec_argument
@click.option("--reference", metavar="FILE|library",
              help="JSON with inputs and expected outputs (default: the package's samples/reference.json), or "
                   "'library': what sentence-transformers / transformers compute for the package's sample texts.")
@click.option("--device", type=DEVICE, help="Execution device (default: config 'device').")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Batch size for the throughput test.")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Time per performance measurement.")
@json_option
@quiet_option
def validate_cmd(spec: ModelSpec, reference: str | None, device: str | None, batch_size: int, seconds: float,
                 as_json: bool, quiet: bool) -> None:
    """Full validation: test + performance, accuracy, resources, compatibility; writes a report.

    The report (validation.json + validation.txt) is stored beside the cached version, tied to
    its integrity digest; `axon publish --validate` requires a passing one. With
    auto_publish_on_validation: true, a passing validation publishes the model.

    \b
    Examples:
      axon validate acme/ranker@2.1.0
      axon validate acme/ranker@2.1.0 --reference golden.json --device cuda
      axon validate hf/BAAI/bge-small-en-v1.5 --reference library
    """
    from axon.release import validate_with_auto_publish
    from axon.validation import summary

    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1.")
    ref: Path | str | None = reference
    if reference is not None and reference != "library":
        ref = Path(reference)
        if not ref.is_file():
            raise UsageError(f"--reference {reference!r} is not a file (or the word 'library').")
    out = Output(json_mode=as_json, quiet=quiet)
    result = validate_with_auto_publish(spec, load_settings(), reference=ref, device=device, batch_size=batch_size,
                                        seconds=seconds, reporter=out.reporter)
    report, published = result.report, result.auto_published
    out.result(report, lambda: summary(report) + (f"\nauto-published: {published}" if published else ""))
    if not report["passed"]:
        raise ChecksFailed(f"Validation of {str(spec)!r} failed.", hint="See the failed lines above.")


@click.command("run")
@spec_argument
@click.option("--input", "texts", multiple=True, help="Text to run the model on (repeat for a batch).")
@click.option("--input-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON ({'input': …} or {'inputs': {name: values}}) or .npz with named tensors.")
@click.option("--device", type=DEVICE, help="Execution device (default: config 'device').")
@click.option("--raw", is_flag=True, help="Also print raw graph outputs when postprocessing exists.")
@click.option("--prompt-name", help="Text models: one of the prompts the model's sentence-transformers config names.")
@click.option("--prompt", help="Text models: a prompt to put before every input (instead of --prompt-name).")
@json_option
def run_cmd(spec: ModelSpec, texts: tuple[str, ...], input_file: Path | None, device: str | None, raw: bool,
            prompt_name: str | None, prompt: str | None, as_json: bool) -> None:
    """Local inference on a cached model, no server needed.

    \b
    Examples:
      axon run demo/text-encoder@1.0.0 --input "Hello, MLOS!"
      axon run acme/ranker@2.1.0 --input-file batch.npz --json
      axon run hf/org/retriever --input "what is MLOS?" --prompt-name query
    """
    import numpy as np

    from axon.local_run import RunInputs, run_locally

    inputs = RunInputs(texts=texts, input_file=input_file)
    result = run_locally(spec, load_settings(), inputs, device=device, raw=raw, prompt=prompt,
                         prompt_name=prompt_name)
    outputs = result.outputs

    def human() -> str:
        lines = [f"{spec} on {result.provider}"]
        with np.printoptions(precision=5, threshold=12, edgeitems=3, suppress=True):
            for name, arr in outputs.items():
                lines.append(f"{name}  {arr.dtype.name} {list(arr.shape)}")
                lines.append("  " + str(arr).replace("\n", "\n  "))
        scores = outputs.get("scores", outputs.get("probabilities"))
        if result.labels and scores is not None:
            for row in scores.reshape(len(scores), -1):
                lines.append(f"  top: {result.labels[int(np.argmax(row))]} ({float(np.max(row)):.3f})")
        return "\n".join(lines)

    Output(json_mode=as_json).result(
        {"spec": str(spec), "provider": result.provider,
         "outputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name, "data": v.tolist()}
                     for k, v in outputs.items()}},
        human)


@click.command("test-integration")
@spec_argument
@click.option("--input", "text", default="Hello, MLOS!", show_default=True, help="Text to compare on.")
@json_option
def integration_check_cmd(spec: ModelSpec, text: str, as_json: bool) -> None:
    """Check the running MLOS Core: health, registration, and that its answer equals local inference.

    \b
    Examples:
      axon test-integration acme/encoder@1.0.0
      MLOS_CORE_ENDPOINT=http://gpu-box:8080 axon test-integration acme/encoder@1.0.0
    """
    from axon.core_integration import check_core_integration

    report = check_core_integration(spec, load_settings(), text=text)
    Output(json_mode=as_json).result(
        {"spec": str(spec), "passed": report.passed,
         "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks]},
        lambda: "\n".join(f"{'PASS' if c.ok else 'FAIL'}  {c.name:<13} {c.detail}" for c in report.checks))
    if not report.passed:
        raise ChecksFailed(f"Integration test of {str(spec)!r} against {report.endpoint} failed.")
