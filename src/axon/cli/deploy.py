"""``axon deploy``, ``axon undeploy``, ``axon deployments``: the deployment file a fleet serves."""

from __future__ import annotations

from pathlib import Path

import click

from axon.cli._context import load_settings
from axon.cli._options import json_option, spec_argument
from axon.cli._output import Output, table
from axon.errors import UsageError
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
@click.option("--emit", type=click.Choice(["kserve"]), default=None,
              help="Also write the engine's manifests for this model: kserve = a ClusterServingRuntime and an "
              "InferenceService (kubectl apply -f OUT).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --emit: where the manifests go (default: kserve/ beside the deployment file).")
@click.option("--image", default=None, help="With --emit kserve: the MLOS Core image (default mlos-core:VERSION, "
              "what the repository's Dockerfile builds).")
@click.option("--repository-uri", default=None, metavar="URI",
              help="With --emit kserve: the repository as the cluster reaches it (default: an s3:// repository "
              "itself; a local one needs e.g. pvc://CLAIM/PATH).")
@click.option("--name", "isvc_name", default=None, help="With --emit kserve: the InferenceService's name (default "
              "from the spec: acme-ranker-2-1-0).")
@click.option("--service-account", default=None,
              help="With --emit kserve: the service account whose secret lets the storage initializer read the store.")
@json_option
def deploy_cmd(spec: ModelSpec, replicas: int | None, autoscale: str | None, gpus: float | None, file: Path,
               emit: str | None, out_dir: Path | None, image: str | None, repository_uri: str | None,
               isvc_name: str | None, service_account: str | None, as_json: bool) -> None:
    """Pin a published model in the deployment file, verified first.

    Re-hashes the published copy (axon verify --published), reads its manifest digest, and
    writes the file atomically; every server started with --deployment FILE then loads it,
    verified against that digest. Scaling options apply to the whole deployment.

    \b
    Examples:
      axon deploy acme/ranker@2.1.0
      axon deploy acme/ranker@2.1.0 --autoscale 1:4 --gpus 0.5
      axon deploy acme/ranker@2.1.0 --replicas 2 --file /etc/mlos/mlos-deploy.yaml
      axon deploy acme/ranker@2.1.0 --emit kserve --gpus 1 && kubectl apply -f kserve/
    """
    from axon.deploy import KServeOptions, Scaling, deploy, parse_autoscale

    out = Output(json_mode=as_json)
    scaling = Scaling(replicas, parse_autoscale(autoscale) if autoscale else None, gpus)
    given = {"--out": out_dir, "--image": image, "--repository-uri": repository_uri, "--name": isvc_name,
             "--service-account": service_account}
    if emit is None and any(v is not None for v in given.values()):
        raise UsageError(f"{', '.join(k for k, v in given.items() if v is not None)} go(es) with --emit kserve.")
    kserve = KServeOptions(out_dir or file.parent / "kserve", image, repository_uri, isvc_name, service_account) \
        if emit == "kserve" else None
    result = deploy(spec, load_settings(), file, scaling, kserve=kserve)
    verb = {"deployed": "Deployed", "updated": "Updated", "unchanged": "Already deployed"}[result["status"]]

    def human() -> str:
        text = (f"{verb} {spec} in {file}: pinned to {result['digest']}; {_scaling_text(result)}\n"
                f"Servers started with --deployment {file} follow it.")
        if kserve is not None:
            text += (f"\nKServe manifests: {', '.join(result['manifests'])}\n"
                     f"Apply them with: kubectl apply -f {kserve.out_dir}")
        return text

    out.result(result, human)


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
