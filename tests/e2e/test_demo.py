"""`axon demo` end to end, exactly as the README's main command runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_demo_runs_the_whole_pipeline(axon_cli: Any, tmp_path: Path) -> None:
    r = axon_cli("demo", "--json", "--keep", "--dir", str(tmp_path / "sandbox"))
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    stages = [s["stage"] for s in out["stages"]]
    for word in ("build", "install", "test", "validate", "publish", "mlos-core", "register", "inference"):
        assert any(word in s for s in stages), word
    emb = out["response"]["outputs"]["embeddings"]
    assert emb["shape"] == [1, 64] and emb["dtype"] == "float32"
    assert abs(sum(v * v for v in emb["data"][0]) - 1) < 1e-4  # mean-pooled and normalised
    published = tmp_path / "sandbox" / "production" / "demo" / "text-encoder" / "1.0.0" / "manifest.yaml"
    assert published.is_file()
    human = axon_cli("demo")
    assert human.code == 0 and "Hello, MLOS!" in human.stdout and "The same steps for real" in human.stdout
