"""``axon register`` and ``axon unregister``: talk to MLOS Core at core_endpoint."""

from __future__ import annotations

import click

from axon.cli._context import load_settings
from axon.cli._options import json_option, spec_argument
from axon.cli._output import Output
from axon.store.spec import ModelSpec


@click.command("register")
@spec_argument
@click.option("--digest", default=None, metavar="DIGEST",
              help="Serve only the published copy with this manifest digest (axon published shows it); "
              "a copy republished since is refused (409), now and after restarts.")
@json_option
def register_cmd(spec: ModelSpec, digest: str | None, as_json: bool) -> None:
    """Register a published model with MLOS Core (it verifies, loads and warms it up).

    Reads the admin token from <publish_dir>/.axon/core/token (or MLOS_CORE_TOKEN /
    MLOS_CORE_TOKEN_FILE) and calls POST /models/register on core_endpoint.

    \b
    Examples:
      axon register acme/ranker@2.1.0
      axon register acme/ranker@2.1.0 --digest 3f0c9a1e5b7d2c48a6e1f09b7c3d5e21
      MLOS_CORE_ENDPOINT=http://gpu-box:8080 axon register acme/ranker@2.1.0
    """
    from axon.core_client import CoreClient

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
