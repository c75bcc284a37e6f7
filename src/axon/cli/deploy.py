"""``axon deploy``, ``axon undeploy``, ``axon deployments``: the deployment file a fleet serves."""

from __future__ import annotations

from pathlib import Path

import click

from axon.cli._context import load_settings
from axon.cli._options import json_option, spec_argument
from axon.cli._output import Output, table
from axon.store.spec import ModelSpec

file_option = click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path),
                           default=Path("mlos-deploy.yaml"), show_default=True,
                           help="The deployment file (servers started with --deployment follow it).")


def _scaling_text(r: dict[str, object]) -> str:
    a = r.get("autoscale")
    scale = (f"autoscale {a['min']}..{a['max']} (target {a['target_ongoing_requests']} ongoing requests)"  # type: ignore[index]
             if a else f"{r.get('replicas')} replica(s)")
    return scale + (f", {r['gpus']:g} GPU each" if r.get("gpus") else "")


@click.command("deploy")
@spec_argument
@click.option("--replicas", type=int, default=None, help="A fixed number of replicas.")
@click.option("--autoscale", default=None, metavar="MIN:MAX[:TARGET]",
              help="Autoscale between MIN and MAX replicas, TARGET ongoing requests each (default 2).")
@click.option("--gpus", type=float, default=None, help="GPUs per replica (fractions share one, e.g. 0.5).")
@file_option
@json_option
def deploy_cmd(spec: ModelSpec, replicas: int | None, autoscale: str | None, gpus: float | None, file: Path,
               as_json: bool) -> None:
    """Pin a published model in the deployment file, verified first.

    Re-hashes the published copy (axon verify --published), reads its manifest digest, and
    writes the file atomically; every server started with --deployment FILE then loads it,
    verified against that digest. Scaling options apply to the whole deployment.

    \b
    Examples:
      axon deploy acme/ranker@2.1.0
      axon deploy acme/ranker@2.1.0 --autoscale 1:4 --gpus 0.5
      axon deploy acme/ranker@2.1.0 --replicas 2 --file /etc/mlos/mlos-deploy.yaml
    """
    from axon.deploy import Scaling, deploy, parse_autoscale

    out = Output(json_mode=as_json)
    scaling = Scaling(replicas, parse_autoscale(autoscale) if autoscale else None, gpus)
    result = deploy(spec, load_settings(), file, scaling)
    verb = {"deployed": "Deployed", "updated": "Updated", "unchanged": "Already deployed"}[result["status"]]
    out.result(result, lambda: f"{verb} {spec} in {file}: pinned to {result['digest']}; {_scaling_text(result)}\n"
               f"Servers started with --deployment {file} follow it.")


@click.command("undeploy")
@spec_argument
@file_option
@json_option
def undeploy_cmd(spec: ModelSpec, file: Path, as_json: bool) -> None:
    """Take a model out of the deployment file (servers following it unload it).

    \b
    Examples:
      axon undeploy acme/ranker@2.1.0
    """
    from axon.deploy import undeploy

    result = undeploy(spec, load_settings(), file)
    Output(json_mode=as_json).result(result, f"Removed {spec} from {file}.")


@click.command("deployments")
@file_option
@json_option
def deployments_cmd(file: Path, as_json: bool) -> None:
    """List what the deployment file serves: models, pinned digests, scaling.

    \b
    Examples:
      axon deployments
      axon deployments --file /etc/mlos/mlos-deploy.yaml --json
    """
    from axon.deploy import deployment_rows

    rows = deployment_rows(file)

    def human() -> str:
        head = f"{file}: {rows['repository']}, {_scaling_text(rows)}"
        if not rows["models"]:
            return head + "\nNo models deployed."
        return head + "\n" + table([[m["spec"], m["digest"]] for m in rows["models"]], ["SPEC", "DIGEST"])

    Output(json_mode=as_json).result(rows, human)
