"""``axon test-integration``: the running MLOS Core is healthy, serves the model, and answers what
local inference answers, from the same content."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from axon.cache import get_installed
from axon.core_client import CoreClient
from axon.settings import Settings
from axon.store.spec import ModelSpec

__all__ = ["ANSWER_ATOL", "IntegrationCheck", "IntegrationReport", "check_core_integration"]

ANSWER_ATOL = 1e-3  # the server may batch, fuse pooling and pad differently: not bit-identical


@dataclass(frozen=True, slots=True)
class IntegrationCheck:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class IntegrationReport:
    spec: ModelSpec
    endpoint: str
    checks: list[IntegrationCheck]

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)


def check_core_integration(spec: ModelSpec, settings: Settings, *, text: str = "Hello, MLOS!") -> IntegrationReport:
    """Health and registration at ``settings.core_endpoint``; when the model is ready there, one
    request (*text* for a text model, synthesised tensors otherwise) compared output by output
    with local CPU inference on the cached copy, and the server's digest with the cache's.

    Raises:
        CoreUnavailableError: the server does not answer.
        NotInstalledError: the model is registered but not in the dev cache.
    """
    from axon.model.inference import LocalModel, synthesize_inputs

    client = CoreClient(settings)
    checks: list[IntegrationCheck] = []
    health = client.health()
    checks.append(IntegrationCheck("health", health.get("status") == "healthy",
                                   f"{settings.core_endpoint} version {health.get('version')}"))
    models = {m["model_id"]: m for m in client.models().get("models", [])}
    served = models.get(str(spec), {})
    state = served.get("state")
    checks.append(IntegrationCheck("registered", state == "ready", f"state {state or 'not registered'}"
                                   + ("" if state else f" (run: axon register {spec})")))
    if state != "ready":
        return IntegrationReport(spec, settings.core_endpoint, checks)
    cached = get_installed(settings.cache_dir, spec)
    local = LocalModel(cached.path, cached.manifest, device="cpu")
    if local.text is not None:
        body: dict[str, Any] = {"input": text}
        mine = local.run(texts=[text])
    else:
        feeds = synthesize_inputs(cached.manifest.inputs)
        body = {"inputs": {k: v.tolist() for k, v in feeds.items()}}
        mine = local.run(tensors=feeds)
    answer = client.infer(spec, body)["outputs"]
    worst = 0.0
    for name, arr in mine.items():
        if name in answer:
            worst = max(worst, float(np.abs(np.asarray(answer[name]["data"]) - arr).max(initial=0)))
    same = worst <= ANSWER_ATOL and set(mine) <= set(answer)
    checks.append(IntegrationCheck("same answer", same, f"max abs difference {worst:.2e} over {sorted(mine)}"))
    checks.append(IntegrationCheck("same content", served.get("digest") == cached.manifest.digest,
                                   f"server digest {served.get('digest')}, cache {cached.manifest.digest}"))
    return IntegrationReport(spec, settings.core_endpoint, checks)
