"""Served throughput with CLS and max pooling fused into the graph vs mean pooling fused, same run.

Model: the MiniLM-L6-shaped encoder of axon.example_model (6 layers, hidden 384, 12 heads, FFN
1536; random weights), installed three times with the same files and different manifests'
postprocessing: ``{type: pooling, modes: [mean|cls|max], normalize: true}``. One server
(max_batch_size 32) serves all three; 32 closed-loop clients (benchmarks/loadgen.py, another
process) ask each in turn for ``embeddings``, interleaved over rounds, best round kept.

  cls fused vs mean fused     target >= 0.97x throughput
  max fused vs mean fused     target >= 0.97x throughput

  .venv/bin/python benchmarks/bench_pooling.py [--seconds 5] [--rounds 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import SENTENCE, core, load, note

MODES = ("mean", "cls", "max")


def prepare(work: Path) -> Path:
    """One MiniLM-shaped package, installed and published once per pooling mode."""
    from axon.demo import sandbox_settings
    from axon.example_model import EncoderConfig, build_example_package
    from axon.install import install
    from axon.publish import publish
    from axon.store.spec import parse_spec

    settings = sandbox_settings(work)
    for mode in MODES:
        pkg = build_example_package(work / f"pkg-{mode}", EncoderConfig.minilm_l6(), max_length=128)
        manifest = yaml.safe_load((pkg / "manifest.yaml").read_text())
        manifest["spec"]["postprocessing"] = {"type": "pooling", "modes": [mode], "include_prompt": True,
                                              "normalize": True, "output": "last_hidden_state"}
        (pkg / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        install(parse_spec(f"bench/{mode}@1"), settings, from_=str(pkg))
        publish(parse_spec(f"bench/{mode}@1"), settings)
    return settings.publish_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="axon-bench-pooling-", dir="/var/tmp"))
    print(f"work dir {work}; {os.cpu_count()} CPUs; device {args.device}", flush=True)
    repo = prepare(work)
    server = core(repo, work, args.device, "--max-batch-size", "32", "--max-queue-size", "1024",
                  models=tuple(f"bench/{m}@1" for m in MODES))
    best: dict[str, float] = dict.fromkeys(MODES, 0.0)
    try:
        for r in range(args.rounds):
            for mode in MODES:
                res = load(server.url + f"/models/bench/{mode}@1/inference",
                           {"input": SENTENCE, "outputs": ["embeddings"]}, args.clients, args.seconds)
                best[mode] = max(best[mode], res["throughput"])
                print(f"round {r + 1} {mode:<4} fused: {res['throughput']:8.1f} sent/s  p50 {res['p50_ms']:.1f} ms  "
                      f"p95 {res['p95_ms']:.1f} ms", flush=True)
    finally:
        server.stop()
    for mode in ("cls", "max"):
        ratio = best[mode] / best["mean"]
        note(f"{mode} fused vs mean fused (x throughput)", ratio, ratio >= 0.97,
             f"target >= 0.97; {best[mode]:.1f} vs {best['mean']:.1f} sent/s (best of {args.rounds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
