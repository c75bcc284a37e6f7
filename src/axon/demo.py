"""``axon demo``: the whole pipeline on the bundled example model, in a sandbox.

Build the example (a BERT-style ONNX encoder and a WordPiece tokenizer, from code) -> install it
into a sandbox dev cache -> test -> validate -> publish into a sandbox production repository ->
start MLOS Core on a free port -> register -> send the seed's request -> shut the server down.
No network, no root.
"""

from __future__ import annotations

import grp
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axon.errors import AxonError
from axon.reporting import Reporter
from axon.settings import Settings, set_config_value
from axon.store.spec import parse_spec

__all__ = ["DEMO_INPUT", "DEMO_SPEC", "DemoResult", "run_demo"]

DEMO_SPEC = "demo/text-encoder@1.0.0"
DEMO_INPUT = "Hello, MLOS!"


@dataclass(slots=True)
class DemoResult:
    sandbox: Path
    endpoint: str = ""
    stages: list[dict[str, Any]] = field(default_factory=list)
    response: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _stage(result: DemoResult, name: str, reporter: Reporter) -> Iterator[dict[str, Any]]:
    reporter.stage(name)
    info: dict[str, Any] = {"stage": name}
    t0 = time.perf_counter()
    result.stages.append(info)  # listed in the order stages start
    yield info
    info["seconds"] = round(time.perf_counter() - t0, 4)


def sandbox_settings(sandbox: Path) -> Settings:
    """Settings for a self-contained dev cache and production repository under *sandbox*."""
    env = {"AXON_HOME": str(sandbox / "home" / ".axon"), "AXON_CACHE_DIR": str(sandbox / "cache"),
           "AXON_PUBLISH_DIR": str(sandbox / "production"), "HOME": str(sandbox / "home")}
    settings = Settings.from_env(env)
    # In the sandbox the caller's own primary group plays the part of 'mlos'.
    set_config_value(settings.config_file, "publish_group", grp.getgrgid(os.getegid()).gr_name)
    settings = Settings.from_env(env)
    settings.publish_dir.mkdir(parents=True, exist_ok=True)
    return settings


def run_demo(sandbox: Path, reporter: Reporter) -> DemoResult:
    from axon.core_client import CoreClient
    from axon.core_process import running_core
    from axon.example_model import build_example_package
    from axon.install import install
    from axon.publish import publish
    from axon.validation import run_tests, validate

    result = DemoResult(sandbox)
    settings = sandbox_settings(sandbox)
    spec = parse_spec(DEMO_SPEC)
    with _stage(result, "build the example model (ONNX encoder + WordPiece tokenizer)", reporter) as info:
        pkg = build_example_package(sandbox / "example-model")
        info["path"] = str(pkg)
    with _stage(result, f"axon install {spec} --from {pkg.name}/", reporter) as info:
        installed = install(spec, settings, from_=str(pkg), force=True, reporter=reporter)
        info.update(path=str(installed.path), digest=installed.manifest.digest)
    with _stage(result, f"axon test {spec}", reporter) as info:
        run = run_tests(spec, settings)
        info["checks"] = {c.name: c.ok for c in run.checks}
        if not run.ok:
            raise AxonError(f"axon test failed in the demo: {[c.detail for c in run.checks if not c.ok]}")
    with _stage(result, f"axon validate {spec}", reporter) as info:
        report = validate(spec, settings, seconds=0.3)
        perf = report.get("performance", {})
        info.update(passed=report["passed"], p50_ms=perf.get("batch1", {}).get("p50_ms"),
                    max_abs_error=report.get("accuracy", {}).get("max_abs_error"))
        if not report["passed"]:
            raise AxonError("axon validate failed in the demo; see the report in the sandbox.")
    with _stage(result, f"axon publish {spec}", reporter) as info:
        published = publish(spec, settings)
        info.update(path=str(published.path), status=published.status)
    with _stage(result, "mlos-core serve on a free port (start ... shutdown)", reporter) as info, \
            running_core(settings.publish_dir, sandbox, ["--device", settings.device, "--log-level", "warning"]) \
            as core:
        endpoint = info["endpoint"] = result.endpoint = core.url
        client = CoreClient(settings.with_(core_endpoint=endpoint))
        with _stage(result, f"axon register {spec}", reporter) as reg:
            registered = client.register(spec)
            reg.update(provider=registered.get("provider"), status=registered.get("status"))
        with _stage(result, f"POST /models/{spec}/inference {{\"input\": \"{DEMO_INPUT}\"}}", reporter) as inf:
            req = urllib.request.Request(f"{endpoint}/models/{spec}/inference",
                                         data=json.dumps({"input": DEMO_INPUT}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(req, timeout=30) as resp:
                result.response = json.loads(resp.read())
            emb = result.response["outputs"]["embeddings"]
            inf.update(shape=emb["shape"], inference_time_us=result.response["inference_time_us"])
    return result
