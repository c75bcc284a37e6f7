"""``axon list``, ``info``, ``verify``, ``remove`` and ``axon cache stats|gc``."""

from __future__ import annotations

import click

from axon import cache
from axon.cli._context import load_settings
from axon.cli._options import json_option, quiet_option, spec_argument
from axon.cli._output import Output, human_bytes, table
from axon.store.spec import ModelSpec


@click.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """List the models installed in the dev cache.

    \b
    Examples:
      axon list
      axon list --json | jq '.[].spec'
    """
    settings = load_settings()
    models = cache.list_installed(settings.cache_dir)
    rows = [m.summary() for m in models]

    def human() -> str:
        if not rows:
            return f"No models in {settings.cache_dir}. Install one with: axon install NS/NAME --from PATH"
        return table(
            [[r["spec"], human_bytes(r["size"]), str(r["files"]), str(r["source"]),
              str(r["revision"] or "")[:40], r["digest"][:12]] for r in rows],
            ["SPEC", "SIZE", "FILES", "SOURCE", "REVISION", "DIGEST"],
        )

    Output(json_mode=as_json).result(rows, human)


@click.command("info")
@spec_argument
@json_option
def info_cmd(spec: ModelSpec, as_json: bool) -> None:
    """Show an installed model's manifest: source, files, inputs and outputs.

    \b
    Examples:
      axon info acme/ranker@2.1.0
      axon info hf/org/repo --json
    """
    model = cache.get_installed(load_settings().cache_dir, spec)
    m = model.manifest

    def human() -> str:
        lines = [f"{spec}", f"  path:        {model.path}", f"  digest:      {m.digest} (xxh3_128)",
                 f"  manifest:    {m.manifest_digest}",
                 f"  size:        {human_bytes(m.total_size)} in {len(m.files)} files",
                 "  source:      " + ", ".join(f"{k}={v}" for k, v in m.source.items() if v),
                 f"  created:     {m.created}", f"  entrypoint:  {m.entrypoint} (opset {m.opset})"]
        if m.description:
            lines.insert(1, f"  {m.description}")
        lines.append("  inputs:")
        lines += [f"    {t.name:<24} {t.dtype:<8} {t.shape}" for t in m.inputs]
        lines.append("  outputs:")
        lines += [f"    {t.name:<24} {t.dtype:<8} {t.shape}" for t in m.outputs]
        if m.preprocessing:
            lines.append(f"  preprocessing:  {m.preprocessing.get('type')} ({m.preprocessing.get('tokenizer', '')})")
        if m.postprocessing:
            lines.append(f"  postprocessing: {m.postprocessing.get('type')}")
        lines.append("  files:")
        lines += [f"    {f.path:<40} {human_bytes(f.size):>10}  sha256:{f.sha256[:16]}…" for f in m.files]
        return "\n".join(lines)

    Output(json_mode=as_json).result({"spec": str(spec), "path": str(model.path), **m.to_dict()}, human)


@click.command("verify")
@spec_argument
@click.option("--published", is_flag=True, help="Verify the copy in the production repository instead.")
@json_option
@quiet_option
def verify_cmd(spec: ModelSpec, published: bool, as_json: bool, quiet: bool) -> None:
    """Re-hash every file of an installed model against its manifest (exit 3 on any mismatch).

    \b
    Examples:
      axon verify acme/ranker@2.1.0
      axon verify --published acme/ranker@2.1.0
    """
    out = Output(json_mode=as_json, quiet=quiet)
    settings = load_settings()
    out.reporter.start(f"verify {spec}", None)
    try:
        if published:
            from axon.publish import verify_published

            report = verify_published(spec, settings, progress=out.reporter.advance)
        else:
            report = cache.verify(settings.cache_dir, spec, progress=out.reporter.advance)
    finally:
        out.reporter.finish()
    payload = {"spec": str(spec), "ok": report.ok, "files_checked": report.files_checked,
               "bytes_checked": report.bytes_checked,
               "problems": [{"path": p.path, "kind": p.kind, "expected": p.expected, "actual": p.actual}
                            for p in report.problems]}
    if report.ok:
        out.result(payload, f"OK {spec}: {report.files_checked} files, {human_bytes(report.bytes_checked)} verified "
                            "(sha256 + xxh3-128)")
        return
    if as_json:
        out.result(payload)
    else:
        for p in report.problems:
            click.echo(f"MISMATCH {p.describe()}", err=True)
    report.raise_for_problems()


@click.command("remove")
@spec_argument
@json_option
def remove_cmd(spec: ModelSpec, as_json: bool) -> None:
    """Delete an installed version from the dev cache (the production repository is untouched).

    \b
    Examples:
      axon remove acme/ranker@2.1.0
    """
    path = cache.remove(load_settings().cache_dir, spec)
    Output(json_mode=as_json).result({"spec": str(spec), "removed": str(path)}, f"Removed {spec} ({path})")


@click.group("cache")
def cache_group() -> None:
    """Inspect and clean the dev cache."""


@cache_group.command("stats")
@json_option
def stats_cmd(as_json: bool) -> None:
    """Sizes and counts for the dev cache.

    \b
    Examples:
      axon cache stats --json
    """
    s = cache.stats(load_settings().cache_dir)

    def human() -> str:
        lines = [f"cache:      {s['cache_dir']}",
                 f"models:     {s['models']} ({s['versions']} versions, {s['files']} files)",
                 f"size:       {human_bytes(s['logical_bytes'])} logical, {human_bytes(s['physical_bytes'])} "
                 f"physical (each file stored once: {s['blobs']} blobs), on disk {human_bytes(s['disk_usage'])}",
                 f"partial:    {human_bytes(s['partial_downloads_bytes'])} of interrupted downloads",
                 f"free:       {human_bytes(s['free_bytes'])}"]
        if s["incomplete_versions"]:
            lines.append(f"incomplete: {len(s['incomplete_versions'])} version directories (clean with: axon cache gc)")
        return "\n".join(lines)

    Output(json_mode=as_json).result(s, human)


@cache_group.command("gc")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--keep-partial", is_flag=True, help="Keep partial downloads (they let installs resume).")
@json_option
def gc_cmd(dry_run: bool, keep_partial: bool, as_json: bool) -> None:
    """Remove leftovers: versions without a valid manifest, stale staging, partial downloads,
    and stored files (blobs) that no installed version uses.

    \b
    Examples:
      axon cache gc --dry-run
      axon cache gc
    """
    report = cache.gc(load_settings().cache_dir, dry_run=dry_run, keep_partial=keep_partial)
    verb = "Would remove" if dry_run else "Removed"

    def human() -> str:
        busy = ["Unused blobs were left: an install is using the store (run cache gc again later)."] \
            if report.blobs_busy else []
        if not report.removed:
            return "\n".join(["Nothing to clean.", *busy])
        return "\n".join([*(f"  {p}" for p in report.removed),
                          f"{verb} {len(report.removed)} entries, {human_bytes(report.bytes_freed)}.", *busy])

    Output(json_mode=as_json).result(report.to_dict(), human)
