"""MLOS Core health, listing and metrics, on a real server."""

from __future__ import annotations

from tests.support.core_server import Core
from tests.support.served import MLP, TEXT


def test_health_models_and_metrics(core: Core) -> None:
    status, body, _ = core.call("GET", "/health")
    assert status == 200 and body["status"] == "healthy" and body["version"]
    status, body, _ = core.call("GET", "/models")
    states = {m["model_id"]: (m["state"], m["provider"]) for m in body["models"]}
    assert states[TEXT] == ("ready", "CPUExecutionProvider") and states[MLP][0] == "ready"
    core.call("POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})
    status, text, _ = core.call("GET", "/metrics")
    assert status == 200
    text = text.decode() if isinstance(text, bytes) else str(text)
    assert f'mlos_requests_total{{model="{MLP}",outcome="ok"}}' in text
    assert "mlos_batch_size_bucket" in text and "mlos_queue_depth" in text and "mlos_models_loaded" in text
