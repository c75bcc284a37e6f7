"""``axon install`` and ``axon update``."""

from __future__ import annotations

import click

from axon.cli._context import load_settings
from axon.cli._options import json_option, quiet_option, spec_argument
from axon.cli._output import Output, human_bytes
from axon.install import InstallResult, install
from axon.store.spec import ModelSpec


def _human(result: InstallResult) -> str:
    m = result.manifest
    verb = {"installed": "Installed", "replaced": "Reinstalled", "unchanged": "Already up to date:",
            "already-installed": "Already installed:"}[result.status]
    lines = [f"{verb} {result.spec} ({len(m.files)} files, {human_bytes(m.total_size)})",
             f"  path:   {result.path}", f"  digest: {m.digest}"]
    commit = m.source.get("commit")
    if commit:
        lines.append(f"  commit: {commit}")
    if result.status == "already-installed":
        lines.append(f"  (reinstall with: axon install {result.spec} --force)")
    else:
        lines.append(f"Next: axon verify {result.spec}")
    return "\n".join(lines)


def _payload(result: InstallResult) -> dict[str, object]:
    m = result.manifest
    return {"spec": str(result.spec), "status": result.status, "path": str(result.path), "digest": m.digest,
            "size": m.total_size, "files": len(m.files), "source": m.source}


@click.command("install")
@spec_argument
@click.option("--from", "from_", metavar="PATH|URL", help="Install from a local .onnx file or directory, or a URL.")
@click.option("--revision", metavar="REV", help="Hub branch, tag or commit (default: the spec's version; latest=main).")
@click.option("--sha256", metavar="HEX", help="Expected sha256 of a --from URL download.")
@click.option("--entrypoint", metavar="PATH", help="Which .onnx file in the package is the model.")
@click.option("--force", is_flag=True, help="Reinstall even if this version is already installed.")
@click.option("--export", is_flag=True,
              help="The source has no ONNX model: export its safetensors checkpoint (transformers or "
                   "sentence-transformers) with torch.onnx and check it against PyTorch. Needs the export extra.")
@json_option
@quiet_option
def install_cmd(spec: ModelSpec, from_: str | None, revision: str | None, sha256: str | None,
                entrypoint: str | None, force: bool, export: bool, as_json: bool, quiet: bool) -> None:
    """Install a model into the dev cache (~/.axon/cache/NS/NAME/VERSION).

    Hub models download by name (hf/ORG/REPO[@REV]): ONNX weights plus tokenizer and config
    files, every file checked against the Hub's sha256 while it streams in. Other specs need
    --from. Partial downloads resume; nothing half-written is ever left in the cache.

    \b
    Examples:
      axon install hf/sentence-transformers/all-MiniLM-L6-v2
      axon install hf/org/repo@v1.0 --revision 3f2a9c1
      axon install acme/ranker@2.1.0 --from ./ranker/
      axon install acme/ranker@2.1.0 --from https://example.com/ranker.onnx --sha256 <hex>
      axon install hf/cross-encoder/ms-marco-MiniLM-L6-v2 --export
      axon install acme/encoder@1 --from ./save_pretrained_dir/ --export
    """
    out = Output(json_mode=as_json, quiet=quiet)
    result = install(spec, load_settings(), from_=from_, revision=revision, sha256=sha256, entrypoint=entrypoint,
                     force=force, export=export, reporter=out.reporter)
    out.result(_payload(result), lambda: _human(result))


@click.command("update")
@spec_argument
@json_option
@quiet_option
def update_cmd(spec: ModelSpec, as_json: bool, quiet: bool) -> None:
    """Fetch the installed version's source again and replace it if the content changed.

    A Hub install follows its revision (e.g. main) to the newest commit; a URL or local install
    re-reads its recorded location. Identical content leaves the installed copy untouched.

    \b
    Examples:
      axon update hf/sentence-transformers/all-MiniLM-L6-v2
    """
    from axon.update import update

    out = Output(json_mode=as_json, quiet=quiet)
    result = update(spec, load_settings(), reporter=out.reporter)
    out.result(_payload(result), lambda: _human(result))
