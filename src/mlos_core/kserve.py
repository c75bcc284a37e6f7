"""KServe v2 / Open Inference Protocol, so Triton's clients and perf_analyzer work unchanged.

Model name is ``ns/name`` (``ns/org/repo``), version is the version label. Supports JSON tensors
and the binary tensor data extension (``Inference-Header-Content-Length``) both ways, and the
model repository extension (index, load, unload; admin).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlos_core import __version__
from mlos_core.errors import ApiError
from mlos_core.fastpath import JSON_HEADERS, Handler, Headers, ReadBody, Reply
from mlos_core.jsonio import JSONResponse, dumps, loads
from mlos_core.registry import LoadedModel, Registry
from mlos_core.settings import ServerSettings
from mlos_core.tensors import KSERVE_TO_NP, check_against_schema, kserve_datatype

__all__ = ["infer_handler", "routes"]

HEADER_LEN = b"inference-header-content-length"


def _find_model(registry: Registry, name: str, version: str | None) -> LoadedModel:
    if version:
        return registry.get(f"{name}@{version}")
    candidates = [m for k, m in registry.models.items() if k.rsplit("@", 1)[0] == name]
    if not candidates:
        raise ApiError(404, "model_not_found", f"model {name!r} is not registered")
    return max(candidates, key=lambda m: m.loaded_at)


def _split(rest: str) -> tuple[str, str | None, str]:
    """'ns/name[/versions/v][/infer|/ready]' -> (name, version, action)."""
    action = ""
    for suffix in ("/infer", "/ready", "/config", "/stats"):
        if rest.endswith(suffix):
            action, rest = suffix[1:], rest[: -len(suffix)]
            break
    version = None
    if "/versions/" in rest:
        rest, version = rest.rsplit("/versions/", 1)
    return rest.strip("/"), version, action


def _metadata(model: LoadedModel) -> dict[str, Any]:
    name, version = model.model_id.rsplit("@", 1)
    io_in = [{"name": t.name, "datatype": kserve_datatype(t.dtype), "shape": t.shape} for t in model.manifest.inputs]
    if model.text is not None:
        io_in.append({"name": "text", "datatype": "BYTES", "shape": [-1]})
    return {"name": name, "versions": [version], "platform": "onnxruntime_onnx",
            "inputs": io_in,
            "outputs": [{"name": t.name, "datatype": kserve_datatype(t.dtype), "shape": t.shape}
                        for t in model.manifest.outputs]}


def _decode_bytes(raw: bytes) -> list[str]:
    out, i = [], 0
    while i < len(raw):
        (n,) = struct.unpack_from("<I", raw, i)
        out.append(raw[i + 4 : i + 4 + n].decode("utf-8"))
        i += 4 + n
    return out


def _parse_infer(body: bytes, header_len: str | None) -> tuple[dict[str, Any], bytes]:
    if header_len is not None:
        try:
            n = int(header_len)
        except ValueError:
            raise ApiError(400, "bad_header", f"{HEADER_LEN} must be an integer") from None
        if n < 0 or n > len(body):
            raise ApiError(400, "bad_header", f"{HEADER_LEN} {n} does not fit a {len(body)}-byte body")
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    try:
        req = loads(head)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "bad_json", "the inference request header is not valid JSON") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise ApiError(400, "bad_request", "an inference request needs an 'inputs' list")
    return req, binary


def _input_arrays(model: LoadedModel, req: dict[str, Any], binary: bytes) -> tuple[dict[str, np.ndarray], list[str]]:
    arrays: dict[str, np.ndarray] = {}
    texts: list[str] = []
    offset = 0
    schema = {t.name: t for t in model.manifest.inputs}
    for spec in req["inputs"]:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ApiError(400, "bad_request", "every input needs a 'name'")
        name, dtype, shape = spec["name"], spec.get("datatype"), spec.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ApiError(400, "bad_shape", f"input {name!r} needs a 'shape' of non-negative integers")
        params = spec.get("parameters") or {}
        size = params.get("binary_data_size")
        if dtype == "BYTES":
            if size is not None:
                values = _decode_bytes(binary[offset : offset + int(size)])
                offset += int(size)
            else:
                values = [str(v) for v in np.asarray(spec.get("data", [])).reshape(-1)]
            if name != "text" or model.text is None:
                raise ApiError(400, "bad_input", f"BYTES input {name!r}: only text models take a 'text' input")
            texts.extend(values)
            continue
        if dtype not in KSERVE_TO_NP:
            raise ApiError(400, "bad_dtype", f"input {name!r} has unsupported datatype {dtype!r}")
        np_type = KSERVE_TO_NP[dtype]
        count = int(np.prod(shape)) if shape else 1
        if size is not None:
            size = int(size)
            if offset + size > len(binary) or size != count * np.dtype(np_type).itemsize:
                raise ApiError(400, "bad_tensor", f"input {name!r}: binary data does not hold {count} {dtype} values")
            arr = np.frombuffer(binary, dtype=np_type, count=count, offset=offset).reshape(shape)
            offset += size
        else:
            try:
                arr = np.asarray(spec.get("data"), dtype=np_type).reshape(shape)
            except (ValueError, TypeError):
                raise ApiError(400, "bad_tensor", f"input {name!r}: data does not fill shape {shape}") from None
        if name not in schema:
            raise ApiError(400, "bad_inputs", f"unknown input {name!r}; the model takes {sorted(schema)}")
        arrays[name] = check_against_schema(name, arr, schema[name].shape, schema[name].dtype)
    return arrays, texts


def routes(settings: ServerSettings, registry: Registry, admin: Callable[[Request], None]) -> list[Route]:
    """Everything but infer (see infer_handler)."""
    from mlos_core.app import read_json

    async def server_meta(request: Request) -> Response:
        return JSONResponse({"name": "mlos-core", "version": __version__,
                             "extensions": ["binary_tensor_data", "model_repository"]})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def model(request: Request) -> Response:
        name, version, action = _split(request.path_params["rest"])
        if action == "infer":  # POST never gets here: FastPath answers it
            raise ApiError(405, "method_not_allowed", "use POST for infer")
        m = _find_model(registry, name, version)
        if action == "ready":
            return JSONResponse({"name": name, "ready": True})
        if action == "config":
            return JSONResponse({"name": name, "platform": "onnxruntime_onnx",
                                 "max_batch_size": m.batcher.max_batch_size})
        return JSONResponse(_metadata(m))

    async def repo_index(request: Request) -> Response:
        rows = [{"name": k.rsplit("@", 1)[0], "version": k.rsplit("@", 1)[1], "state": "READY"}
                for k in sorted(registry.models)]
        rows += [{"name": k.rsplit("@", 1)[0], "version": k.rsplit("@", 1)[-1], "state": "UNAVAILABLE",
                  "reason": v} for k, v in registry.failed.items()]
        return JSONResponse(rows)

    async def repo_action(request: Request) -> Response:
        admin(request)
        rest = request.path_params["rest"]
        body = await read_json(request, settings.max_body_bytes)
        params = (body.get("parameters") or {}) if isinstance(body, dict) else {}
        for action in ("load", "unload"):
            if rest.endswith("/" + action):
                name = rest[: -len(action) - 1].strip("/")
                break
        else:
            raise ApiError(404, "not_found", "use /v2/repository/models/{name}/load or /unload")
        version = params.get("version")
        if action == "load":
            await registry.register(model_id=f"{name}@{version or 'latest'}")
        else:
            target = f"{name}@{version}" if version else _find_model(registry, name, None).model_id
            await registry.unregister(target)
        return JSONResponse({})

    return [
        Route("/v2", server_meta), Route("/v2/health/live", live), Route("/v2/health/ready", ready),
        Route("/v2/models/{rest:path}", model, methods=["GET", "POST"]),
        Route("/v2/repository/index", repo_index, methods=["GET", "POST"]),
        Route("/v2/repository/models/{rest:path}", repo_action, methods=["POST"]),
    ]


def infer_handler(settings: ServerSettings, registry: Registry, admit: Callable[[LoadedModel], None],
                  run_inference: Callable[[LoadedModel, Any], Awaitable[Any]]) -> Handler:
    """POST /v2/models/{name}[/versions/{v}]/infer, JSON or binary tensors (a FastRoute)."""
    from mlos_core.app import dtype_name, estimate_tokens, pending_from_arrays
    from mlos_core.batching import Pending

    async def infer(tail: str, headers: Headers, read_body: ReadBody) -> Reply:
        name, version, _ = _split(tail)
        if version:
            await registry.resolve(f"{name}@{version}")
        m = _find_model(registry, name, version)
        admit(m)
        header_len = next((v.decode("latin-1") for k, v in headers if k == HEADER_LEN), None)
        req, binary = _parse_infer(await read_body(), header_len)
        arrays, texts = _input_arrays(m, req, binary)
        deadline = time.perf_counter() + settings.request_timeout_s
        if texts:
            if len(texts) > m.batcher.max_batch_size:
                raise ApiError(400, "too_many_inputs", f"at most {m.batcher.max_batch_size} texts per request")
            pending = Pending(rows=len(texts), key=("text",), texts=texts, deadline=deadline,
                              tokens=estimate_tokens(texts, m))
        else:
            missing = sorted({t.name for t in m.manifest.inputs} - set(arrays))
            if missing:
                raise ApiError(400, "bad_inputs", f"missing inputs {missing}")
            pending = pending_from_arrays(m, arrays, deadline)
        result = await run_inference(m, pending)
        requested = req.get("outputs")
        all_binary = bool((req.get("parameters") or {}).get("binary_data_output"))
        wanted: dict[str, bool] = {}
        if isinstance(requested, list) and requested:
            for o in requested:
                if isinstance(o, dict) and isinstance(o.get("name"), str):
                    wanted[o["name"]] = bool((o.get("parameters") or {}).get("binary_data", all_binary))
        else:
            wanted = {k: all_binary for k in result.outputs}
        unknown = sorted(set(wanted) - set(result.outputs))
        if unknown:
            raise ApiError(400, "bad_outputs", f"unknown outputs {unknown}; the model gives {sorted(result.outputs)}")
        model_name, model_version = m.model_id.rsplit("@", 1)
        outs, blobs = [], []
        for oname, as_binary in wanted.items():
            arr = np.ascontiguousarray(result.outputs[oname])
            entry: dict[str, Any] = {"name": oname, "datatype": kserve_datatype(dtype_name(arr.dtype)),
                                     "shape": list(arr.shape)}
            if as_binary:
                raw = arr.tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = arr.reshape(-1)
            outs.append(entry)
        payload = {"model_name": model_name, "model_version": model_version, "outputs": outs}
        if "id" in req:
            payload["id"] = req["id"]
        if not blobs:
            return dumps(payload), JSON_HEADERS
        head = dumps(payload)
        return head + b"".join(blobs), [(b"content-type", b"application/octet-stream"),
                                        (HEADER_LEN, b"%d" % len(head))]

    return infer

