"""``mlos-core serve``: settings -> uvicorn (uvloop + httptools) running ``create_app``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from mlos_core import __version__

if TYPE_CHECKING:
    from axon.errors import AxonError
    from mlos_core.settings import ServerSettings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="mlos-core")
def cli() -> None:
    """MLOS Core: serve ONNX models from the production repository over HTTP."""


@cli.command("serve")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML file with the same keys as these options (options win).")
@click.option("--repository", metavar="DIR|s3://BUCKET/PREFIX",
              help="Production model repository (default /var/lib/mlos/models); an s3:// one is served from a "
              "verified local copy of each registered version (--cache-dir).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="With an s3:// repository: where the verified copies live (default /var/cache/mlos/models).")
@click.option("--deployment", type=click.Path(dir_okay=False, path_type=Path),
              help="Serve the models of this deployment file (mlos-deploy.yaml), each pinned to its digest, and "
              "follow its changes; admin register/unregister calls are refused (409).")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Serve the one model in this directory (a KServe runtime: /mnt/models, as the storage initializer "
              "leaves it), only if its manifest is the one --digest names; every file sha256-checked.")
@click.option("--digest", "model_digest", metavar="sha256:HEX", help="With --model-dir: the manifest digest the model "
              "is pinned to (exit 3 before serving anything if the directory holds another publish).")
@click.option("--model-name", help="With --model-dir: a name the model answers to besides ns/name (KServe: the "
              "InferenceService's name, {{.Name}}).")
@click.option("--set", "settings_set", multiple=True, metavar="KEY=VALUE",
              help="A server setting by its settings name (max_batch_size=64); repeatable; the options above win.")
@click.option("--host", help="Bind address (default 127.0.0.1).")
@click.option("--port", type=int, help="Port (default 8080; 0 picks a free one).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Execution provider choice.")
@click.option("--max-batch-size", type=int, help="Rows per batch (default 32).")
@click.option("--max-request-inputs", type=int, help="Texts one request may send (default 2048, as OpenAI allows); "
              "more than --max-batch-size are split into batches and answered as one.")
@click.option("--max-queue-delay-ms", type=float, help="Wait this long for a batch to fill (default 0).")
@click.option("--max-batch-tokens", type=int, help="Text: estimated tokens per batch (default 0 = no budget).")
@click.option("--max-queue-size", type=int, help="Waiting requests per model before 503 (default 256).")
@click.option("--instances", type=int, help="Batches run at once per model (default 1).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), help="fp16: transformer-optimized fp16 "
              "graph (needs --device cuda). int8: int8 weights made at load from the verified graph (needs --device "
              "cpu), served only if its outputs keep --int8-min-cosine to fp32's, else fp32 (GET /models says).")
@click.option("--int8-min-cosine", type=float, help="The lowest cosine to fp32 an int8 variant may have to be served "
              "(default 0.99).")
@click.option("--fuse-postprocessing/--no-fuse-postprocessing", default=None,
              help="Run mean pooling inside the graph (default on).")
@click.option("--workers", type=int, help="HTTP worker processes sharing the port (default 1); each loads "
              "every registered model.")
@click.option("--intra-op-threads", type=int, help="onnxruntime threads per batch (default: the cores divided "
              "among the workers).")
@click.option("--intra-op-spinning/--no-intra-op-spinning", default=None,
              help="Let onnxruntime's threads spin briefly between operators (default on: lower latency; off: "
              "idle cores go back to other processes sooner).")
@click.option("--request-timeout", "request_timeout_s", type=float, help="Per-request deadline, s (504 after).")
@click.option("--max-body-bytes", type=int, help="Largest request body (413 above; default 64 MiB).")
@click.option("--header-timeout", "header_timeout_s", type=float,
              help="A request head must arrive within this many seconds (408 after; default 10).")
@click.option("--body-timeout", "body_timeout_s", type=float,
              help="Longest pause inside a request body, s (408 after; default 30).")
@click.option("--idle-timeout", "idle_timeout_s", type=float,
              help="Close a keep-alive connection idle this long, s (default 5).")
@click.option("--max-header-bytes", type=int, help="Largest request head (431 above; default 64 KiB).")
@click.option("--max-connections", type=int, help="Open connections per worker; beyond, an immediate 503 "
              "(default 1024).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Admin token file (created on first start, mode 0640; refused if anyone but root or the "
              "server's user could have written it).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where registrations persist (default <repository>/.axon/core).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--port-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the bound port here once listening (useful with --port 0).")
@click.option("--ray", "on_ray", is_flag=True, help="Deploy on Ray Serve instead (needs --deployment): one replica "
              "set running this server, with the file's scaling; exits once Ray has rolled it out (or blocks "
              "with a local Ray when no --address).")
@click.option("--address", default=None, help="With --ray: the Ray cluster (auto, ray://host:10001, …); default: "
              "start a local one and serve until interrupted.")
def serve(config_file: Path | None, port_file: Path | None, on_ray: bool, address: str | None,
          settings_set: tuple[str, ...], **options: object) -> None:
    """Start the inference server.

    \b
    Examples:
      mlos-core serve
      mlos-core serve --repository /srv/mlos/models --port 9000 --max-batch-size 64
      AWS_ENDPOINT_URL=http://minio:9000 mlos-core serve --repository s3://models/prod
      mlos-core serve --deployment mlos-deploy.yaml
      mlos-core serve --model-dir /mnt/models --digest sha256:9b1f… --model-name ranker --host 0.0.0.0
    """
    import uvicorn

    from mlos_core.app import create_app
    from mlos_core.auth import TokenFileError, load_or_create_token
    from mlos_core.settings import ServerSettings

    try:
        settings = ServerSettings.load(config_file, _parse_set(settings_set), **options)
    except (ValueError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if settings.model_dir is not None:
        settings = _prepare_model_dir(settings, on_ray)
    if on_ray:
        _serve_on_ray(settings, address)
        return
    if address is not None:
        click.echo("error: --address goes with --ray.", err=True)
        sys.exit(2)
    if settings.store is not None:
        from axon.errors import UsageError
        from axon.store.cache_dir import open_cache_dir

        try:
            open_cache_dir(settings.repository)
        except UsageError as exc:
            _fail(exc)
        except OSError as exc:
            click.echo(f"error: cannot make the cache directory {str(settings.repository)!r}: {exc.strerror}.",
                       err=True)
            sys.exit(1)
    if not settings.repository.is_dir():
        click.echo(f"error: model repository {str(settings.repository)!r} does not exist.\n"
                   f"hint: create it with: sudo axon setup-production --dir {settings.repository}", err=True)
        sys.exit(1)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # here, so that a planted token stops the server with one line (the lifespan checks again)
        load_or_create_token(settings.token_file, settings.token_group_source)
    except (TokenFileError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    _raise_open_files_limit(settings.max_connections)
    if settings.workers > 1:
        _serve_workers(settings, port_file)
        return
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, **_uvicorn_options(settings))
    server = uvicorn.Server(config)
    if port_file is not None:
        _write_port_when_started(server, port_file)
    server.run()
    if not server.started:  # the lifespan refused to start (its log says why): not a clean exit
        sys.exit(3)


def _fail(exc: AxonError) -> NoReturn:
    """axon's error as the CLI says it: one line, the hint, its exit code."""
    click.echo(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), err=True)
    sys.exit(exc.exit_code)


def _parse_set(items: tuple[str, ...]) -> dict[str, object]:
    """--set KEY=VALUE pairs; each value read as YAML (64, 2.5, true, text)."""
    import yaml

    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (like max_batch_size=64)", param_hint="--set")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise click.BadParameter(f"the value of {item!r} is not a plain value", param_hint="--set") from None
    return out


def _prepare_model_dir(settings: ServerSettings, on_ray: bool) -> ServerSettings:
    """--model-dir: check the delivered manifest against the pin before anything listens."""
    from axon.errors import AxonError
    from mlos_core.model_dir import prepare

    if on_ray:
        click.echo("error: --model-dir serves one directory on this host; --ray serves a deployment file.", err=True)
        sys.exit(2)
    try:
        prepared, spec = prepare(settings)
    except AxonError as exc:
        _fail(exc)
    except OSError as exc:
        click.echo(f"error: cannot read {str(settings.model_dir)!r}: {exc.strerror}.", err=True)
        sys.exit(1)
    click.echo(f"{spec} in {prepared.model_dir} is the pinned publish ({prepared.model_digest}); verifying its files",
               err=True)
    return prepared


def _serve_on_ray(settings: ServerSettings, address: str | None) -> None:
    """Deploy the deployment file on Ray Serve; exit 1 (the old replicas serving on) if the
    rollout failed. With no --address, the Ray started here lives as long as this command."""
    import json
    import os
    import signal

    from axon.errors import AxonError
    from axon.store.deployment import load_deployment
    from mlos_core import ray_serve

    if settings.deployment is None:
        click.echo("error: --ray needs --deployment FILE (the models and scaling to deploy).", err=True)
        sys.exit(2)
    try:
        deployment = load_deployment(settings.deployment)
        serve = ray_serve.serve_module()
    except AxonError as exc:
        _fail(exc)
    import ray

    if deployment.ray.proxy == "haproxy":  # read when Ray starts: on an existing cluster, set it on `ray start`
        os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": settings.host, "port": settings.port})
        result = ray_serve.deploy(settings, deployment)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # Ray's own errors: a cluster not there, a port taken, …
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        click.echo(f"error: Ray Serve could not deploy {settings.deployment}: {type(exc).__name__}: {first}\n"
                   f"hint: check the cluster ({address or 'a local one'}) and that port {settings.port} is free.",
                   err=True)
        sys.exit(1)
    click.echo(json.dumps(result))
    if result["status"] != "RUNNING":
        why = result.get("reason") or result.get("error") or result["message"]
        click.echo(f"error: the rollout of {settings.deployment} did not complete ({result['status']}): {why}\n"
                   "hint: replicas of the earlier version, if any, keep serving; fix the file and run this again.",
                   err=True)
        sys.exit(1)
    if address is None:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        click.echo(f"MLOS Core on Ray Serve at http://{settings.host}:{settings.port} (Ctrl-C stops it)", err=True)
        try:
            signal.pause()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            serve.shutdown()
            ray.shutdown()


def _uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """What the single-process and the --workers paths give uvicorn alike."""
    from mlos_core.protocol import Limits, protocol_class

    limits = Limits(header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
                    max_header_bytes=settings.max_header_bytes, max_connections=settings.max_connections)
    return {"loop": "uvloop", "http": protocol_class(limits), "log_level": settings.log_level, "access_log": False,
            "timeout_graceful_shutdown": 30, "lifespan": "on", "timeout_keep_alive": settings.idle_timeout_s}


def _raise_open_files_limit(max_connections: int) -> None:
    """Each connection is a descriptor: lift the soft RLIMIT_NOFILE to the hard limit so 1000+ fit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < max_connections + 256:
        logging.getLogger("mlos_core").warning(
            "open-files limit %d is below --max-connections %d + 256 for models and logs: connections beyond it "
            "fail to be accepted; raise it (ulimit -n, LimitNOFILE= in the systemd unit)", soft, max_connections)


def _serve_workers(settings: ServerSettings, port_file: Path | None) -> None:
    """N processes on one port, each listening on a socket of its own (``SO_REUSEPORT``: the
    kernel spreads connections over them; mlos_core.reuseport says why not one shared socket).

    The token was created by the caller, so every worker reads the same one; registrations are
    shared through the state directory (each worker follows the registrations file)."""
    import dataclasses
    import json
    import os

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from mlos_core.reuseport import PortReservation
    from mlos_core.worker_metrics import metrics_directory

    s = settings
    os.environ["MLOS_CORE_SETTINGS"] = json.dumps(
        {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(s).items()})
    config = uvicorn.Config("mlos_core.app:create_app_from_env", factory=True, host=s.host, port=s.port,
                            workers=s.workers, **_uvicorn_options(s))
    try:
        sock = PortReservation.bind_port(s.host, s.port, config.backlog)
    except OSError as exc:
        click.echo(f"error: cannot listen on {s.host}:{s.port}: {exc.strerror or exc}.", err=True)
        sys.exit(1)
    if port_file is not None:
        _write_port_when_listening(port_file, sock.getsockname()[1], s.workers)
    supervisor = Multiprocess(config, sockets=[sock])
    with metrics_directory():  # one /metrics for all the workers (mlos_core.worker_metrics)
        supervisor.run()
    if any(p.exitcode == 3 for p in supervisor.processes):  # 3: uvicorn's code for a worker that could not start
        sys.exit(3)  # (it stopped the others); a refused start is not a clean exit


def _write_port_when_listening(port_file: Path, port: int, workers: int) -> None:
    """The port file once every worker listens (connections made before would all go to the first)."""
    import threading
    import time

    from mlos_core.reuseport import listeners

    def wait() -> None:
        while (n := listeners(port)) is not None and n < workers:
            time.sleep(0.05)
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(port_file)

    threading.Thread(target=wait, daemon=True, name="mlos-port-file").start()


def _write_port_when_started(server: object, port_file: Path) -> None:
    import threading
    import time

    def wait() -> None:
        while not getattr(server, "started", False):
            time.sleep(0.01)
            if getattr(server, "should_exit", False):
                return
        sockets = [s for srv in getattr(server, "servers", []) for s in srv.sockets]
        if sockets:
            tmp = port_file.with_suffix(".tmp")
            tmp.write_text(str(sockets[0].getsockname()[1]))
            tmp.replace(port_file)

    threading.Thread(target=wait, daemon=True).start()


@cli.command("fetch")
@click.argument("spec")
@click.option("--repository", required=True, metavar="s3://BUCKET/PREFIX", help="The object-store repository.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("/var/cache/mlos/models"),
              show_default=True, help="Where the verified copy goes (the --cache-dir of mlos-core serve).")
@click.option("--digest", default=None, help="Fetch only the published copy with this digest: its manifest digest "
              "(sha256:…) or its content digest (32 hex); exit 3 if another is published.")
def fetch(spec: str, repository: str, cache_dir: Path, digest: str | None) -> None:
    """Download a version into the verified local cache ahead of serving it.

    Every file is hashed as it is written and checked against the manifest; the version is moved
    into place only when all of them match (exit 3 otherwise; an interrupted fetch resumes).

    \b
    Examples:
      mlos-core fetch acme/ranker@2.1.0 --repository s3://models/prod
      mlos-core fetch acme/ranker@2.1.0 --repository s3://models/prod --digest sha256:9b1f…
    """
    from axon.errors import AxonError, UsageError
    from axon.store.object_cache import fetch_version
    from axon.store.pin import PIN_FORMS, is_pin
    from axon.store.s3 import ObjectStore, S3Location
    from axon.store.spec import parse_spec

    try:
        if digest is not None and not is_pin(digest):
            raise UsageError(f"--digest {digest!r} is not a digest: give {PIN_FORMS}.")
        path = fetch_version(ObjectStore(S3Location.parse(repository)), parse_spec(spec), cache_dir, digest=digest)
    except AxonError as exc:
        _fail(exc)
    click.echo(f"Fetched {spec} into {path} (every file verified against its manifest)")


def main() -> None:
    cli(prog_name="mlos-core")
