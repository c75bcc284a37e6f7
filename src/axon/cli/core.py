"""``axon register`` and ``axon unregister``: talk to MLOS Core at core_endpoint."""

from __future__ import annotations

import click

from axon.cli._context import load_settings
from axon.cli._options import json_option, spec_argument
from axon.cli._output import Output
from axon.errors import UsageError
from axon.store.pin import PIN_FORMS, is_pin
from axon.store.spec import ModelSpec


@click.command("register")
@spec_argument
@click.option("--digest", default=None, metavar="DIGEST",
              help="Serve only the published copy with this digest: its manifest digest (sha256:…, every file's "
              "sha256 then checked) or its content digest (32 hex); a copy republished since is refused (409), now "
              "and after restarts.")
@json_option
def register_cmd(spec: ModelSpec, digest: str | None, as_json: bool) -> None:
    """Register a published model with MLOS Core (it verifies, loads and warms it up).

    Reads the admin token from <publish_dir>/.axon/core/token (or MLOS_CORE_TOKEN /
    MLOS_CORE_TOKEN_FILE) and calls POST /models/register on core_endpoint.

    \b
    Examples:
      axon register acme/ranker@2.1.0
      axon register acme/ranker@2.1.0 --digest sha256:9b1f…(64 hex digits, from axon published --json)
      MLOS_CORE_ENDPOINT=http://gpu-box:8080 axon register acme/ranker@2.1.0
    """
    from axon.core_client import CoreClient

    if digest is not None and not is_pin(digest):
        raise UsageError(f"--digest {digest!r} is not a digest: give {PIN_FORMS}.",
                         hint="See the published digests with: axon published --json")
    settings = load_settings()
    result = CoreClient(settings).register(spec, digest=digest)
    verb = {"registered": "Registered", "unchanged": "Already registered", "reloaded": "Reloaded"}.get(
        str(result.get("status")), "Registered")
    Output(json_mode=as_json).result(
        result, lambda: (f"{verb} {spec} on {result.get('provider')} ({settings.core_endpoint})\n"
                         f"Try: curl -X POST {settings.core_endpoint}/models/{spec}/inference "
                         "-H 'Content-Type: application/json' -d '{\"input\": \"Hello, MLOS!\"}'"))


@click.command("unregister")
@spec_argument
@json_option
def unregister_cmd(spec: ModelSpec, as_json: bool) -> None:
    """Unload a model from MLOS Core (its published files stay where they are).

    \b
    Examples:
      axon unregister acme/ranker@2.1.0
    """
    from axon.core_client import CoreClient

    settings = load_settings()
    result = CoreClient(settings).unregister(spec)
    Output(json_mode=as_json).result(result, f"Unregistered {spec} from {settings.core_endpoint}")
