"""``axon publish``, ``unpublish``, ``rollback``, ``published``, ``audit``, ``setup-production``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from axon.cli._context import load_settings
from axon.cli._options import json_option, quiet_option, spec_argument
from axon.cli._output import Output, human_bytes, table
from axon.errors import UsageError
from axon.store.spec import ModelSpec


@click.command("publish")
@spec_argument
@click.option("--validate", is_flag=True, help="Require a passing `axon validate` first.")
@click.option("--notify", is_flag=True, help="Register the published version with MLOS Core afterwards.")
@click.option("--force", is_flag=True, help="Replace a published version with different content (kept for rollback).")
@click.option("--dry-run", is_flag=True, help="Run the checks and say what would happen; copy nothing.")
@json_option
@quiet_option
def publish_cmd(spec: ModelSpec, validate: bool, notify: bool, force: bool, dry_run: bool, as_json: bool,
                quiet: bool) -> None:
    """Promote a model from the dev cache into the production repository.

    In order: permission check (root or publish_group), verify the cached copy, copy into a
    staging directory inside the production root, fsync, verify the copy, group + read-only
    modes + setgid directories, atomic rename into place, audit record, optional notify.
    Versions are immutable: identical content is a no-op; different content needs --force.

    \b
    Examples:
      axon publish acme/ranker@2.1.0
      axon publish acme/ranker@2.1.0 --dry-run
      axon publish acme/ranker@2.1.0 --force --notify
    """
    from axon.release import release

    out = Output(json_mode=as_json, quiet=quiet)
    released = release(spec, load_settings(), require_validation=validate, notify=notify, force=force,
                       dry_run=dry_run, reporter=out.reporter)
    result, notified = released.published, released.notified
    payload = {"spec": str(spec), "status": result.status, "path": str(result.path), "digest": result.digest,
               "digest_old": result.digest_old, "manifest_digest": result.manifest_digest or None,
               "size": result.size, "files": result.files,
               "bytes_copied": result.bytes_copied, "bytes_linked": result.bytes_linked,
               "seconds": round(result.seconds, 3), "history": str(result.history) if result.history else None,
               "notified": notified}

    def human() -> str:
        if result.status == "dry-run":
            what = "replace" if result.digest_old else "publish"
            return (f"Dry run: would {what} {spec} ({result.files} files, {human_bytes(result.size)}) at "
                    f"{result.path}\n  digest {result.digest}" + (f" (published: {result.digest_old})"
                                                                  if result.digest_old else ""))
        if result.status == "unchanged":
            return f"{spec} is already published with the same content (digest {result.digest}); nothing to do."
        replaced = " (replaced; old copy kept for rollback)" if result.status == "replaced" else ""
        lines = [f"Published {spec}{replaced}",
                 f"  location: {result.path}", f"  digest:   {result.digest}",
                 f"  manifest: {result.manifest_digest}",
                 f"  size:     {human_bytes(result.size)} in {result.files} files, {result.seconds:.2f}s"]
        if result.bytes_linked:
            lines.append(f"  stored:   {human_bytes(result.bytes_copied)} copied, {human_bytes(result.bytes_linked)} "
                         "linked (the same bytes as other published versions)")
        if notified:
            lines.append("  MLOS Core notified: the model is registered")
        elif not notify:
            lines.append(f"Next: axon register {spec} --digest {result.manifest_digest}")
        return "\n".join(lines)

    out.result(payload, human)


@click.command("unpublish")
@spec_argument
@click.option("--purge", is_flag=True, help="Delete the version and its replaced copies for good.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@json_option
def unpublish_cmd(spec: ModelSpec, purge: bool, yes: bool, as_json: bool) -> None:
    """Take a version out of production (restorable with `axon rollback` unless --purge).

    \b
    Examples:
      axon unpublish acme/ranker@2.1.0
      axon unpublish acme/ranker@2.1.0 --purge --yes
    """
    from axon.publish import unpublish

    if purge and not yes:
        if not sys.stdin.isatty():
            raise UsageError("--purge deletes for good and needs confirmation; no terminal to ask on.",
                             hint=f"Confirm with: axon unpublish {spec} --purge --yes")
        click.confirm(f"Delete {spec} and every replaced copy of it for good?", abort=True)
    result = unpublish(spec, load_settings(), purge=purge)
    Output(json_mode=as_json).result(
        result, f"{'Purged' if purge else 'Unpublished'} {spec}" + ("" if purge else
                                                                      f"; restore it with: axon rollback {spec}"))


@click.command("rollback")
@spec_argument
@json_option
def rollback_cmd(spec: ModelSpec, as_json: bool) -> None:
    """Restore the most recently replaced (or unpublished) copy of a version, atomically.

    \b
    Examples:
      axon rollback acme/ranker@2.1.0
    """
    from axon.publish import rollback

    r = rollback(spec, load_settings())
    Output(json_mode=as_json).result(
        {"spec": str(spec), "status": r.status, "path": str(r.path), "digest": r.digest, "digest_old": r.digest_old,
         "manifest_digest": r.manifest_digest or None},
        f"Rolled back {spec}: digest {r.digest_old} -> {r.digest}")


@click.command("published")
@json_option
def published_cmd(as_json: bool) -> None:
    """List the production repository: digest, size, publisher and time of each version.

    \b
    Examples:
      axon published
      axon published --json
    """
    from axon.publish import published

    settings = load_settings()
    rows = published(settings)

    def human() -> str:
        if not rows:
            return f"Nothing published in {settings.publish_dir}."
        return table([[r["spec"], human_bytes(r["size"]) if r["size"] is not None else "INVALID",
                       str(r["digest"] or "")[:12], str(r.get("manifest_digest") or "")[:19],
                       str(r.get("publisher") or ""), str(r.get("published") or "")[:19]]
                      for r in rows], ["SPEC", "SIZE", "DIGEST", "MANIFEST", "PUBLISHER", "PUBLISHED (UTC)"]) + (
            "\nPin a version with its full manifest digest (axon published --json): axon register SPEC --digest "
            "sha256:…")

    Output(json_mode=as_json).result(rows, human)


@click.command("audit")
@click.argument("spec", required=False, metavar="[NS/NAME[@VERSION]]")
@json_option
def audit_cmd(spec: str | None, as_json: bool) -> None:
    """Print the production audit log (every publish, unpublish, rollback), oldest first.

    \b
    Examples:
      axon audit
      axon audit acme/ranker@2.1.0 --json
    """
    from axon.publish import audit_records
    from axon.store.spec import parse_spec

    wanted = parse_spec(spec) if spec else None
    records, problems = audit_records(load_settings(), wanted)
    out = Output(json_mode=as_json)
    for p in problems:
        out.reporter.warn(p)

    def human() -> str:
        if not records:
            return "No audit records" + (f" for {wanted}." if wanted else ".")
        return table([[r.get("time", "")[:19], r.get("action", ""), r.get("result", ""), r.get("spec", ""),
                       r.get("user", ""), str(r.get("digest_old") or "-")[:12], str(r.get("digest_new") or "-")[:12]]
                      for r in records], ["TIME (UTC)", "ACTION", "RESULT", "SPEC", "USER", "OLD", "NEW"])

    out.result({"records": records, "problems": problems} if as_json else records, human)


@click.command("setup-production")
@click.option("--group", default=None, help="Group allowed to publish (default: publish_group, mlos).")
@click.option("--dir", "root", default=None, metavar="DIR|s3://BUCKET/PREFIX",
              help="Production repository (default: publish_dir, /var/lib/mlos/models).")
@json_option
def setup_production_cmd(group: str | None, root: str | None, as_json: bool) -> None:
    """One-time, as root: create the publish group and the production repository.

    The repository root becomes root:<group> with mode 3775 (members add versions; the sticky
    bit keeps anyone from renaming or removing what they do not own; new directories inherit the
    group), plus axon's state directory <root>/.axon/ (root's: staging, locks, history, an
    append-only audit log, and repository.yaml recording the group, so its members publish with
    no configuration of their own). Running it again repairs ownership and modes.

    With s3://BUCKET/PREFIX (an S3-compatible object store; credentials and endpoint the standard
    AWS way, e.g. AWS_ENDPOINT_URL for MinIO) it checks that the store enforces conditional writes,
    refusing one that does not, and records the repository; who may publish is the bucket's policy.

    \b
    Examples:
      sudo axon setup-production
      sudo axon setup-production --dir /srv/mlos/models --group mlops
      axon setup-production --dir s3://models/prod
    """
    from axon.production import setup_production
    from axon.store.s3 import S3Location, is_s3_url

    settings = load_settings()
    target = root or (str(settings.publish_store) if settings.publish_store else str(settings.publish_dir))
    if is_s3_url(target):
        from axon.object_repository import ObjectRepository

        s3_info = ObjectRepository(S3Location.parse(target)).setup()
        Output(json_mode=as_json).result(
            s3_info, lambda: (f"Production repository ready: {s3_info['root']} (conditional writes enforced; "
                              f"{'recorded' if s3_info['created'] else 'already set up'})\n"
                              "Who may publish is the bucket's access policy: docs/operations.md, \"Object storage\"."))
        return
    info = setup_production(Path(target).expanduser(), group or settings.publish_group)
    Output(json_mode=as_json).result(
        info, lambda: (f"Production repository ready: {info['root']} (root:{info['group']}, 3775)\n"
                       f"  state:  {info['state_dir']}\n  audit:  {info['audit_log']}"
                       f"{' (append-only)' if info['audit_append_only'] else ''}\n"
                       f"Add publishers with: sudo usermod -aG {info['group']} USER"))
