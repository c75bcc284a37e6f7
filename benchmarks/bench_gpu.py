"""GPU: MLOS Core end to end (HTTP, JSON, tokenization, batching) against raw onnxruntime on the
same GPU, BERT-base shape (12 layers, hidden 768; random weights), sequence length 128, text in,
mean-pooled embeddings out. Also checks the server really runs on CUDAExecutionProvider.

  python benchmarks/bench_gpu.py [--device cuda] [--model bert-base] [--clients 128] [--seconds 8]

Reference ceilings for an H200 are in ../shared/docs/gpu-reference.md (raw ORT fp32 b=32: 4,336
seq/s; fp16 fused + IOBinding: 9,726 seq/s). This measures the server against raw fp32 ORT run
here, in the same session, and the fp16 server against raw fp16 + IOBinding run here (the goal
is >= 0.7x of that ceiling).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import core, prepare, rows_per_second

WORDS = ["hello", "world", "mlos", "axon", "model", "inference", "server", "production", "cache", "publish",
         "register", "test", "validate", "run"]
LONG_TEXT = " ".join(WORDS * 12)  # > 128 tokens: truncated to exactly 128
REFERENCE_FP16_IOBINDING = 9726  # ../shared/docs/gpu-reference.md, H200, BERT-base fp16 fused + IOBinding


def load_many(url: str, body: dict[str, object], clients: int, seconds: float, procs: int) -> dict[str, float]:
    """Several load generator processes at once (one Python process tops out near 10k req/s)."""
    import subprocess

    here = Path(__file__).resolve().parent
    running = [subprocess.Popen([sys.executable, str(here / "loadgen.py"), "--url", url, "--body", json.dumps(body),
                                 "--clients", str(clients // procs), "--seconds", str(seconds)],
                                stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in running]
    return {"throughput": sum(o["throughput"] for o in outs), "p50_ms": max(o["p50_ms"] for o in outs),
            "p95_ms": max(o["p95_ms"] for o in outs)}


def raw(model_dir: Path, device: str, batch: int, seconds: float, precision: str = "fp32",
        iobinding: bool = False) -> tuple[float, str]:
    """seq/s of session.run on one fixed batch; with *iobinding*, inputs and outputs stay on the device
    (the ceiling the reference figure measures: no host copies per run)."""
    import onnx
    import onnxruntime as ort
    from tokenizers import Tokenizer

    if device == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    model: str | bytes = str(model_dir / "model.onnx")
    if precision == "fp16":
        from mlos_core.graph_opt import to_fp16

        proto, how = to_fp16(onnx.load(str(model)))
        print(f"raw {how}", flush=True)
        model = proto.SerializeToString()
    sess = ort.InferenceSession(model, providers=providers)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(128)
    enc = tok.encode_batch([LONG_TEXT] * batch)
    ids = np.asarray([e.ids for e in enc], np.int64)
    mask = np.asarray([e.attention_mask for e in enc], np.int64)
    step = lambda: sess.run(None, {"input_ids": ids, "attention_mask": mask})  # noqa: E731
    if iobinding:
        where = "cuda" if sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        io = sess.io_binding()
        io.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(ids, where, 0))
        io.bind_ortvalue_input("attention_mask", ort.OrtValue.ortvalue_from_numpy(mask, where, 0))
        for out in sess.get_outputs():
            io.bind_output(out.name, where, 0)
        step = lambda: sess.run_with_iobinding(io)  # noqa: E731
    return rows_per_second(step, batch, seconds, warmup=5), sess.get_providers()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="bert-base", choices=["minilm", "bert-base"])
    ap.add_argument("--clients", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--workers", type=int, default=8, help="server worker processes for the second run")
    ap.add_argument("--loadgens", type=int, default=4, help="load generator processes")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="axon-bench-gpu-"))
    t0 = time.perf_counter()
    repo = prepare(work, args.model)
    print(f"prepared {args.model} in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs", flush=True)
    enc_dir = repo / "bench" / "encoder" / "1"
    raw_tput, raw_provider = raw(enc_dir, args.device, args.batch, args.seconds)
    print(f"raw onnxruntime fp32 b={args.batch}, seq 128 on {raw_provider}: {raw_tput:.1f} seq/s", flush=True)
    results: dict[str, object] = {"raw_fp32": raw_tput, "raw_provider": raw_provider}
    # (precision, worker processes, execution instances per model): one process per CUDA context
    # time-slices the GPU between contexts, so fp16 is also tried in one process with more instances.
    configs = [("fp32", 1, 2), ("fp32", args.workers, 2)]
    ceiling = raw_tput
    if args.device == "cuda":
        raw16, _ = raw(enc_dir, args.device, args.batch, args.seconds, "fp16")
        print(f"raw onnxruntime fp16 b={args.batch}, seq 128: {raw16:.1f} seq/s", flush=True)
        ceiling, _ = raw(enc_dir, args.device, args.batch, args.seconds, "fp16", iobinding=True)
        print(f"raw onnxruntime fp16 + IOBinding b={args.batch}, seq 128: {ceiling:.1f} seq/s "
              f"(reference figure for an H200: {REFERENCE_FP16_IOBINDING:,} seq/s)", flush=True)
        results["raw_fp16"] = raw16
        results["raw_fp16_iobinding"] = ceiling
        configs += [("fp16", 1, 2), ("fp16", 1, 4), ("fp16", args.workers, 2)]
    else:
        ceiling, _ = raw(enc_dir, args.device, args.batch, args.seconds, iobinding=True)
        print(f"raw onnxruntime fp32 + IOBinding b={args.batch}: {ceiling:.1f} seq/s", flush=True)
    mb = 64
    for precision, workers, instances in configs:
        s = core(repo, work, args.device, "--max-batch-size", str(mb), "--max-queue-size", "4096",
                 "--instances", str(instances), "--workers", str(workers), "--precision", precision)
        if workers > 1:
            time.sleep(10)  # the other workers load the model from the shared registrations file
        models = json.loads(__import__("urllib.request").request.urlopen(s.url + "/models").read())["models"]
        provider = {m["model_id"]: m["provider"] for m in models}["bench/encoder@1"]
        r = load_many(s.url + "/models/bench/encoder@1/inference", {"input": LONG_TEXT, "outputs": ["embeddings"]},
                      args.clients, args.seconds, args.loadgens)
        s.stop()
        ratio = r["throughput"] / raw_tput
        vs_ceiling = r["throughput"] / ceiling
        notes = {m["model_id"]: m.get("runtime_notes") for m in models}["bench/encoder@1"]
        print(f"server {precision} ({notes}), max_batch {mb}, {workers} worker(s) x {instances} instance(s), "
              f"{args.clients} clients "
              f"on {provider}: "
              f"{r['throughput']:.1f} seq/s, p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms "
              f"-> {ratio:.2f}x raw fp32, {vs_ceiling:.2f}x the IOBinding ceiling measured here"
              + (f" (goal >= 0.7), {r['throughput'] / REFERENCE_FP16_IOBINDING:.2f}x the reference figure"
                 if precision == "fp16" else ""), flush=True)
        results[f"server_{precision}_w{workers}_i{instances}"] = {"throughput": r["throughput"], "provider": provider,
                                                "ratio_vs_raw": ratio, "ratio_vs_ceiling": vs_ceiling,
                                                "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"]}
    servers = {k: v for k, v in results.items() if k.startswith("server_") and isinstance(v, dict)}
    best = max(servers, key=lambda k: servers[k]["throughput"])
    print(f"best server configuration: {best}: {servers[best]['throughput']:.1f} seq/s = "
          f"{servers[best]['ratio_vs_ceiling']:.2f}x the IOBinding ceiling measured here", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
