"""The baseline a team would write first: a Starlette endpoint calling session.run per request in a
thread pool (no batching). Served by uvicorn with the same loop and parser as MLOS Core.

  python benchmarks/naive_server.py MODEL_DIR PORT
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tokenizers import Tokenizer


def build(model_dir: str) -> Starlette:
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    sess = ort.InferenceSession(f"{model_dir}/model.onnx", providers=["CPUExecutionProvider"])

    def infer(text: str) -> list[float]:
        enc = tok.encode(text)
        ids = np.asarray([enc.ids], np.int64)
        mask = np.asarray([enc.attention_mask], np.int64)
        (hidden,) = sess.run(None, {"input_ids": ids, "attention_mask": mask})
        pooled = hidden.mean(axis=1)[0]
        return (pooled / np.linalg.norm(pooled)).tolist()

    async def endpoint(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        return JSONResponse({"embeddings": await run_in_threadpool(infer, body["input"])})

    return Starlette(routes=[Route("/infer", endpoint, methods=["POST"])])


if __name__ == "__main__":
    uvicorn.run(build(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), loop="uvloop", http="httptools",
                log_level="error", access_log=False)
