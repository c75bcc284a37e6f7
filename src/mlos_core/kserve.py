"""KServe v2 / Open Inference Protocol, so Triton's clients and perf_analyzer work unchanged.

Model name is ``ns/name`` (``ns/org/repo``), version is the version label. Supports JSON tensors
and the binary tensor data extension (``Inference-Header-Content-Length``) both ways, and the
model repository extension (index, load, unload; admin).
"""

from __future__ import annotations

import asyncio
import math
import struct
from typing import Any, NamedTuple

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from axon.store.dtypes import from_kserve, kserve_name
from axon.store.pin import PIN_FORMS, is_pin
from mlos_core import __version__
from mlos_core.admin_api import AdminAuth
from mlos_core.errors import JSON_HEADERS, ApiError, RawHeaders
from mlos_core.fastpath import FastRoute, ReadBody, Reply
from mlos_core.registry import LoadedModel
from mlos_core.service import InferenceService, prompt_key, tensor_request, text_request
from mlos_core.tensors import MAX_DIMS, RequestSchema, array_from_json, check_against_schema
from mlos_core.wire import LARGE_BODY_BYTES, JSONResponse, check_text_budget, dtype_name, dumps, loads, read_json

__all__ = ["fast_routes", "parse_request", "routes"]

MAX_OUTPUTS = 64  # outputs one request may list

HEADER_LEN = b"inference-header-content-length"


def _split(rest: str) -> tuple[str, str | None, str]:
    """'ns/name[/versions/v][/infer|/ready]' -> (name, version, action); the path arrives
    percent-decoded once, so a '%' left in it was encoded twice and is refused."""
    action = ""
    for suffix in ("/infer", "/ready", "/config", "/stats"):
        if rest.endswith(suffix):
            action, rest = suffix[1:], rest[: -len(suffix)]
            break
    version = None
    if "/versions/" in rest:
        rest, version = rest.rsplit("/versions/", 1)
    name = rest.strip("/")
    if "%" in name or (version and "%" in version):
        raise ApiError(400, "bad_model_id", f"model name {name!r} (version {version!r}) in the path still holds '%' "
                       "after URL decoding (encoded twice?); encode it once: demo%2Fenc or demo/enc")
    return name, version, action


def _metadata(model: LoadedModel) -> dict[str, Any]:
    name, version = model.model_id.rsplit("@", 1)
    io_in = [{"name": t.name, "datatype": kserve_name(t.dtype), "shape": t.shape} for t in model.manifest.inputs]
    if model.text is not None:
        io_in.append({"name": "text", "datatype": "BYTES", "shape": [-1]})
    return {"name": name, "versions": [version], "platform": "onnxruntime_onnx",
            "inputs": io_in,
            "outputs": [{"name": t.name, "datatype": kserve_name(t.dtype), "shape": t.shape}
                        for t in model.manifest.outputs]}


def _decode_bytes(name: str, raw: bytes) -> list[str]:
    """BYTES binary data: each element a little-endian uint32 length, then that many UTF-8 bytes."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        if n - i < 4:
            raise ApiError(400, "bad_tensor", f"input {name!r}: BYTES element {len(out)} is truncated (its 4-byte "
                           f"length prefix has only {n - i} bytes)")
        (k,) = struct.unpack_from("<I", raw, i)
        i += 4
        if k > n - i:
            raise ApiError(400, "bad_tensor", f"input {name!r}: BYTES element {len(out)} declares {k} bytes but "
                           f"only {n - i} remain in its parameters.binary_data_size")
        try:
            out.append(raw[i : i + k].decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(400, "bad_tensor", f"input {name!r}: BYTES element {len(out)} is not UTF-8 text") from None
        i += k
    return out


def _json_strings(name: str, data: Any) -> list[str]:
    """BYTES as JSON: a (nested) list of strings, flattened."""
    out: list[str] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            out.append(item)
        else:
            raise ApiError(400, "bad_tensor", f"input {name!r}: BYTES 'data' must be a list of strings")
    return out


def _params(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ApiError(400, "bad_request", f"{where}: 'parameters' must be an object")
    return params


def _flag(params: dict[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, "bad_request", f"{where}: parameters.{key} must be true or false")
    return value


def _parse_infer(body: bytes, header_len: str | None) -> tuple[dict[str, Any], bytes]:
    if header_len is not None:
        if not (header_len.isascii() and header_len.isdigit()):
            raise ApiError(400, "bad_header", f"{HEADER_LEN.decode()} must be a non-negative integer, not "
                           f"{header_len[:40]!r}")
        n = int(header_len)
        if n > len(body):
            raise ApiError(400, "bad_header", f"{HEADER_LEN.decode()} {n} does not fit a {len(body)}-byte body")
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    try:
        req = loads(head)
    except ValueError:  # orjson.JSONDecodeError, also for text that is not UTF-8
        raise ApiError(400, "bad_json", "the inference request header is not valid JSON") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise ApiError(400, "bad_request", "an inference request needs an 'inputs' list")
    return req, binary


def _requested_outputs(req: dict[str, Any]) -> tuple[dict[str, bool] | None, bool]:
    """({output name: as binary} from 'outputs', or None for every output; parameters.binary_data_output)."""
    all_binary = bool(_flag(_params(req, "the request"), "binary_data_output", "the request"))
    requested = req.get("outputs")
    if requested is None or requested == []:
        return None, all_binary
    if not isinstance(requested, list):
        raise ApiError(400, "bad_outputs", "'outputs' must be a list of {'name': ...} objects")
    if len(requested) > MAX_OUTPUTS:
        raise ApiError(400, "bad_outputs", f"'outputs' lists more than {MAX_OUTPUTS} outputs")
    wanted: dict[str, bool] = {}
    for i, o in enumerate(requested):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise ApiError(400, "bad_outputs", f"outputs[{i}] needs a 'name' (a string)")
        where = f"output {o['name']!r}"
        binary = _flag(_params(o, where), "binary_data", where)
        wanted[o["name"]] = all_binary if binary is None else binary
    return wanted, all_binary


def _input_arrays(model: RequestSchema, req: dict[str, Any], binary: bytes, body_len: int,
                  large: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
    arrays: dict[str, np.ndarray] = {}
    texts: list[str] = []
    offset = 0
    schema = {t.name: t for t in model.inputs}
    max_rows = model.max_rows
    for i, spec in enumerate(req["inputs"]):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ApiError(400, "bad_request", f"inputs[{i}] needs a 'name' (a string)")
        name, dtype, shape = spec["name"], spec.get("datatype"), spec.get("shape")
        if name in arrays or (name == "text" and texts):
            raise ApiError(400, "bad_inputs", f"input {name!r} appears more than once")
        if not isinstance(dtype, str):
            raise ApiError(400, "bad_dtype", f"input {name!r}: 'datatype' must be a string such as 'FP32' or 'BYTES'")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or \
                not all(type(d) is int and d >= 0 for d in shape):
            raise ApiError(400, "bad_shape", f"input {name!r} needs a 'shape' of at most {MAX_DIMS} non-negative "
                           "integers")
        count = math.prod(shape)  # Python integers: no wrap-around
        if count > body_len:  # every value takes at least a byte of the request
            raise ApiError(400, "bad_shape", f"input {name!r}: shape {shape} holds {count} values, more than a "
                           f"{body_len}-byte request can carry")
        size = _params(spec, f"input {name!r}").get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise ApiError(400, "bad_tensor", f"input {name!r}: parameters.binary_data_size must be a "
                               f"non-negative integer number of bytes, not {str(size)[:40]!r}")
            if size > len(binary) - offset:
                raise ApiError(400, "bad_tensor", f"input {name!r}: parameters.binary_data_size {size} goes past "
                               f"the end of the binary data ({len(binary) - offset} bytes left)")
        if dtype == "BYTES":
            if name != "text" or model.text_max_length is None:
                raise ApiError(400, "bad_input", f"BYTES input {name!r}: only text models take a 'text' input")
            if size is not None:
                values = _decode_bytes(name, binary[offset : offset + size])
                offset += size
            else:
                values = _json_strings(name, spec.get("data"))
            if len(values) != count:
                raise ApiError(400, "bad_shape", f"input {name!r}: {len(values)} BYTES elements do not fill shape "
                               f"{shape}")
            if not values:
                raise ApiError(400, "bad_shape", f"input {name!r}: no texts")
            texts.extend(values)
            continue
        np_type = from_kserve(dtype)
        if np_type is None:
            raise ApiError(400, "bad_dtype", f"input {name!r} has unsupported datatype {dtype[:40]!r}")
        if name not in schema:
            raise ApiError(400, "bad_inputs", f"unknown input {name!r}; the model takes {sorted(schema)}")
        if shape and shape[0] > max_rows:  # before converting anything
            raise ApiError(400, "too_many_inputs", f"input {name!r}: at most {max_rows} rows per request, "
                           f"shape {shape}")
        if size is not None:
            need = count * np.dtype(np_type).itemsize
            if size != need:
                raise ApiError(400, "bad_tensor", f"input {name!r}: parameters.binary_data_size is {size} bytes, "
                               f"shape {shape} of {dtype} needs {need}")
            arr = np.frombuffer(binary, dtype=np_type, count=count, offset=offset).reshape(shape)
            offset += size
        else:
            data = spec.get("data")
            if data is None:
                raise ApiError(400, "bad_tensor", f"input {name!r} has neither 'data' nor "
                               "parameters.binary_data_size")
            if isinstance(data, list) and data and not isinstance(data[0], list) and len(data) != count:
                raise ApiError(400, "bad_shape", f"input {name!r}: {len(data)} values do not fill shape {shape}")
            arr = array_from_json(name, data, np_type, pieces=large)
            if arr.size != count:
                raise ApiError(400, "bad_shape", f"input {name!r}: {arr.size} values do not fill shape {shape}")
            arr = arr.reshape(shape)
        arrays[name] = check_against_schema(name, arr, schema[name].shape, schema[name].dtype)
    if offset != len(binary):
        raise ApiError(400, "bad_tensor", f"the binary data holds {len(binary) - offset} bytes beyond what the "
                       "inputs' parameters.binary_data_size declare")
    if texts and arrays:
        raise ApiError(400, "bad_inputs", "send either the 'text' input or the model's tensors, not both")
    return arrays, texts


class Parsed(NamedTuple):
    """A validated infer request: small enough to come back from the helper process cheaply."""

    request_id: str | None
    arrays: dict[str, np.ndarray]
    texts: list[str]
    wanted: dict[str, bool] | None  # None: every output
    all_binary: bool
    key: tuple[str, ...] = ("text",)  # a text request's batching key: its prompt (request parameters)


def parse_request(body: bytes, schema: RequestSchema, header_len: str | None) -> Parsed:
    """Body -> validated request (in the helper process when the body is large)."""
    req, binary = _parse_infer(body, header_len)
    request_id = req.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ApiError(400, "bad_request", "'id' must be a string")
    wanted, all_binary = _requested_outputs(req)
    arrays, texts = _input_arrays(schema, req, binary, len(body), large=len(body) > LARGE_BODY_BYTES)
    check_text_budget(texts)
    params = _params(req, "the request")
    key = prompt_key({k: params[k] for k in ("prompt", "prompt_name") if k in params})  # as the native API's fields
    if key != ("text",) and not texts:
        raise ApiError(400, "bad_prompt", "parameters 'prompt' and 'prompt_name' go with the 'text' input")
    return Parsed(request_id, arrays, texts, wanted, all_binary, key)


def routes(service: InferenceService, admin: AdminAuth) -> list[Route]:
    """Everything but infer (see fast_routes)."""
    registry = service.registry

    async def server_meta(request: Request) -> Response:
        return JSONResponse({"name": "mlos-core", "version": __version__,
                             "extensions": ["binary_tensor_data", "model_repository"]})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:  # as /ready: not while a served model failed
        ok = not registry.failed
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def model(request: Request) -> Response:
        name, version, action = _split(request.path_params["rest"])
        if action == "infer":  # POST never gets here: FastPath answers it
            raise ApiError(405, "method_not_allowed", "use POST for infer")
        m = registry.find(name, version)
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
        admin.require(request)
        rest = request.path_params["rest"]
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object: {'parameters': {'version': '...'}}")
        params = _params(body, "the request")
        for action in ("load", "unload"):
            if rest.endswith("/" + action):
                name = _split(rest[: -len(action) - 1])[0]
                break
        else:
            raise ApiError(404, "not_found", "use /v2/repository/models/{name}/load or /unload")
        version = params.get("version")
        if version is not None and (not isinstance(version, str) or not version):
            raise ApiError(400, "bad_request", "parameters.version must be a version label (a non-empty string)")
        if action == "load":
            model_id = f"{name}@{version or 'latest'}"
            digest = params.get("digest")
            if digest is not None and not is_pin(digest):
                raise ApiError(400, "bad_request", f"parameters.digest must be {PIN_FORMS}")
            if digest is None:  # a load without one keeps the registration's pin, never drops it
                digest = await asyncio.to_thread(registry.saved_pin, model_id)
            await registry.register(model_id=model_id, digest=digest)
        else:
            target = f"{name}@{version}" if version else registry.find(name).model_id
            await registry.unregister(target)
        return JSONResponse({})

    return [
        Route("/v2", server_meta), Route("/v2/health/live", live), Route("/v2/health/ready", ready),
        Route("/v2/models/{rest:path}", model, methods=["GET", "POST"]),
        Route("/v2/repository/index", repo_index, methods=["GET", "POST"]),
        Route("/v2/repository/models/{rest:path}", repo_action, methods=["POST"]),
    ]


def fast_routes(service: InferenceService) -> list[FastRoute]:
    registry = service.registry

    async def infer(tail: str, headers: RawHeaders, read_body: ReadBody) -> Reply:
        """POST /v2/models/{name}[/versions/{v}]/infer, JSON or binary tensors."""
        name, version, _ = _split(tail)
        if version:
            await registry.resolve(f"{name}@{version}")
        m = registry.find(name, version)
        service.admit(m)
        header_len = next((v.decode("latin-1") for k, v in headers if k == HEADER_LEN), None)
        body = await read_body()
        request_id, arrays, texts, wanted, all_binary, key = await service.parse(body, parse_request, m.schema,
                                                                                  header_len)
        deadline = service.deadline()
        if texts:  # more than a batch holds: split into batches and answered as one (service.submit)
            if len(texts) > m.schema.max_texts:
                raise ApiError(400, "too_many_inputs", f"input 'text': at most {m.schema.max_texts} texts per "
                               "request (--max-request-inputs)")
            pending = text_request(texts, m.schema, deadline, key=key)
        else:
            missing = sorted({t.name for t in m.manifest.inputs} - set(arrays))
            if missing:
                raise ApiError(400, "bad_inputs", f"missing inputs {missing}")
            pending = tensor_request(m.schema, arrays, deadline)
        result = await service.submit(m, pending)
        if wanted is None:
            wanted = {k: all_binary for k in result.outputs}
        unknown = sorted(set(wanted) - set(result.outputs))
        if unknown:
            raise ApiError(400, "bad_outputs", f"unknown outputs {unknown}; the model gives {sorted(result.outputs)}")
        model_name, model_version = m.model_id.rsplit("@", 1)
        outs, blobs = [], []
        for oname, as_binary in wanted.items():
            arr = np.ascontiguousarray(result.outputs[oname])
            entry: dict[str, Any] = {"name": oname, "datatype": kserve_name(dtype_name(arr.dtype)),
                                     "shape": list(arr.shape)}
            if as_binary:
                raw = arr.tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = arr.reshape(-1)
            outs.append(entry)
        payload = {"model_name": model_name, "model_version": model_version, "outputs": outs}
        if request_id is not None:
            payload["id"] = request_id
        if not blobs:
            return dumps(payload), JSON_HEADERS
        head = dumps(payload)
        return head + b"".join(blobs), [(b"content-type", b"application/octet-stream"),
                                        (HEADER_LEN, b"%d" % len(head))]

    return [FastRoute("/v2/models/", "/infer", infer)]
