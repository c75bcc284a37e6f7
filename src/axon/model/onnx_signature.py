"""Read what a manifest needs from an ONNX file: inputs, outputs, opset, external data files.

Every tensor of a model is found by one walker (:func:`iter_tensors`): the graph's initializers
(dense and sparse), every tensor held in a node attribute (``Constant``'s ``value``, any
``t``/``tensors``/``sparse_tensor``/``sparse_tensors``), every subgraph (``If``/``Loop``/``Scan``
bodies, any ``g``/``graphs`` attribute) recursively, model-local functions and training graphs.
Any of them can name external data; :func:`external_data_references` checks every such location
(relative, no ``..``, no backslash or control character) and :func:`check_external_data` checks
that each names a file the package lists. :func:`check_operator_domains` refuses operators from
domains this onnxruntime build does not provide.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from axon.errors import InvalidModelError
from axon.store.manifest import TensorSpec

__all__ = [
    "ExternalDataOutsideError",
    "ExternalRef",
    "OnnxSignature",
    "TensorRef",
    "UnsupportedOperatorError",
    "check_external_data",
    "check_operator_domains",
    "external_data_references",
    "iter_tensors",
    "load_graph",
    "onnxruntime_domains",
    "parse_model",
    "read_signature",
    "resolve_location",
    "signature_of",
]

# onnxruntime reads a tensor at this "location" from a raw memory address held in "offset".
ORT_MEMORY_TAG = "*/_ORT_MEM_ADDR_/*"
_EXTERNAL = 1  # onnx.TensorProto.EXTERNAL
_EXPORT_HINT = "Point --from at a .onnx file exported with torch.onnx, optimum or tf2onnx."
# What onnxruntime registers kernels for, used only when onnxruntime itself cannot be asked.
_FALLBACK_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc",
                               "com.ms.internal.nhwc"})


class ExternalDataOutsideError(InvalidModelError):
    """A tensor's external data location leaves the model's directory (absolute path, ``..``)."""


class UnsupportedOperatorError(InvalidModelError):
    """A node uses an operator domain this onnxruntime build has no kernels for."""


@dataclass(frozen=True, slots=True)
class OnnxSignature:
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    external_data: list[str] = field(default_factory=list)  # relative to the model file's directory


@dataclass(frozen=True, slots=True)
class TensorRef:
    """One TensorProto of a model and where it sits (for messages)."""

    tensor: Any  # onnx.TensorProto, the live message inside the model
    where: str  # "initializer 'W'", "attribute 'value' of node 'c' (Constant) in graph 'then_branch' of …"
    main_initializer: bool  # a dense initializer of the main graph (onnxruntime can take its bytes from memory)


@dataclass(frozen=True, slots=True)
class ExternalRef:
    """A tensor whose data lives in another file."""

    ref: TensorRef
    location: str  # normalised, relative to the model file's directory
    offset: int
    length: int | None
    external: bool  # data_location is EXTERNAL (else only stray external_data entries)


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _tensor_specs(values: Iterable[Any], skip: set[str]) -> list[TensorSpec]:
    out = []
    for v in values:
        if v.name in skip:
            continue
        tt = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        out.append(TensorSpec(v.name, _dtype_name(tt.elem_type), shape))
    return out


# --- the walker ---------------------------------------------------------------------------------


def _node_label(node: Any) -> str:
    return f"node {node.name!r} ({node.op_type})" if node.name else f"an unnamed {node.op_type} node"


def _sparse(sparse: Any, where: str) -> Iterator[TensorRef]:
    yield TensorRef(sparse.values, f"values of {where}", False)
    yield TensorRef(sparse.indices, f"indices of {where}", False)


def _graph_tensors(graph: Any, ctx: str, main: bool) -> Iterator[TensorRef]:
    for t in graph.initializer:
        yield TensorRef(t, f"initializer {t.name!r}{ctx}", main)
    for s in graph.sparse_initializer:
        yield from _sparse(s, f"sparse initializer {s.values.name!r}{ctx}")
    for node in graph.node:
        yield from _node_tensors(node, ctx)


def _node_tensors(node: Any, ctx: str) -> Iterator[TensorRef]:
    label = _node_label(node)
    for a in node.attribute:
        here = f"attribute {a.name!r} of {label}{ctx}"
        if a.HasField("t"):
            yield TensorRef(a.t, here, False)
        for i, t in enumerate(a.tensors):
            yield TensorRef(t, f"tensor {i} of {here}", False)
        if a.HasField("sparse_tensor"):
            yield from _sparse(a.sparse_tensor, here)
        for i, s in enumerate(a.sparse_tensors):
            yield from _sparse(s, f"sparse tensor {i} of {here}")
        if a.HasField("g"):
            yield from _graph_tensors(a.g, f" in graph {a.name!r} of {label}{ctx}", False)
        for i, g in enumerate(a.graphs):
            yield from _graph_tensors(g, f" in graph {i} of attribute {a.name!r} of {label}{ctx}", False)


def iter_tensors(model: Any) -> Iterator[TensorRef]:
    """Every TensorProto of *model* (a ModelProto), recursively, with where it sits."""
    yield from _graph_tensors(model.graph, "", True)
    for f in model.functions:
        for node in f.node:
            yield from _node_tensors(node, f" in function {f.domain + ':' if f.domain else ''}{f.name}")
    for i, ti in enumerate(model.training_info):
        yield from _graph_tensors(ti.initialization, f" in training initialization graph {i}", False)
        yield from _graph_tensors(ti.algorithm, f" in training algorithm graph {i}", False)


def _walk_nodes(nodes: Any, ctx: str) -> Iterator[tuple[Any, str]]:
    """Every node of *nodes* and of their subgraphs, recursively, with where it sits."""
    for node in nodes:
        yield node, ctx
        for a in node.attribute:
            if a.HasField("g"):
                yield from _walk_nodes(a.g.node, f" in graph {a.name!r} of {_node_label(node)}{ctx}")
            for i, g in enumerate(a.graphs):
                yield from _walk_nodes(g.node, f" in graph {i} of attribute {a.name!r} of {_node_label(node)}{ctx}")


# --- external data --------------------------------------------------------------------------------


def _bad_location(loc: str, where: str, model_name: str, why: str, *, outside: bool = False) -> InvalidModelError:
    cls = ExternalDataOutsideError if outside else InvalidModelError
    return cls(f"Model {model_name!r} names external data {loc!r} for {where}, which {why}.",
               hint="External data files must sit inside the package, named by relative paths "
               "(re-export with onnx.save_model(..., save_as_external_data=True, location='model.onnx_data')).")


def _check_location(loc: str, where: str, model_name: str) -> str:
    """The normalised relative form of *loc*, or an InvalidModelError naming the tensor and location."""
    if loc == "":
        raise _bad_location(loc, where, model_name, "is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in loc):
        raise _bad_location(loc, where, model_name, "holds a NUL or control character")
    if "\\" in loc:
        raise _bad_location(loc, where, model_name, "holds a backslash")
    if loc.startswith(ORT_MEMORY_TAG) or "_ORT_MEM_ADDR_" in loc:
        raise _bad_location(loc, where, model_name, "is onnxruntime's in-memory address marker")
    pure = PurePosixPath(loc)
    if pure.is_absolute():
        raise _bad_location(loc, where, model_name, "is an absolute path outside the package", outside=True)
    if ".." in pure.parts:
        raise _bad_location(loc, where, model_name, "climbs out with '..'", outside=True)
    norm = str(pure)
    if norm in ("", "."):
        raise _bad_location(loc, where, model_name, "names a directory, not a file")
    return norm


def _int_field(value: str, key: str, loc: str, where: str, model_name: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise _bad_location(loc, where, model_name, f"has a bad {key} {value!r}")
    return int(value)


def external_data_references(model: Any, model_name: str = "model.onnx") -> list[ExternalRef]:
    """Every tensor of *model* that names external data, each location checked.

    Raises:
        ExternalDataOutsideError: a location is absolute or climbs out with ``..``.
        InvalidModelError: a location is empty, holds a backslash, NUL or control character, is
            onnxruntime's memory-address marker, or a tensor repeats a key or lacks its location.
    """
    refs = []
    for ref in iter_tensors(model):
        t = ref.tensor
        external = t.data_location == _EXTERNAL
        if not external and not len(t.external_data):
            continue
        entries: dict[str, str] = {}
        for e in t.external_data:
            if e.key in entries:
                raise InvalidModelError(f"Model {model_name!r} gives {e.key!r} twice in the external data of "
                                        f"{ref.where}.")
            entries[e.key] = e.value
        if "location" not in entries:
            raise InvalidModelError(f"Model {model_name!r} stores {ref.where} as external data without a location.")
        loc = entries["location"]
        norm = _check_location(loc, ref.where, model_name)
        offset = _int_field(entries.get("offset", "0"), "offset", loc, ref.where, model_name)
        length = entries.get("length")
        refs.append(ExternalRef(ref, norm, offset,
                                None if length is None else _int_field(length, "length", loc, ref.where, model_name),
                                external))
    return refs


def resolve_location(entrypoint: str, location: str) -> str:
    """The package path of *location* (already checked), relative to the entrypoint's directory."""
    base = PurePosixPath(entrypoint).parent
    return str(base / location) if str(base) != "." else location


def parse_model(data: bytes, name: str = "model.onnx") -> Any:
    """A ModelProto from serialized bytes (external data is not loaded)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.ModelProto.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidModelError(f"File {name!r} is not a readable ONNX model ({type(exc).__name__}).",
                                hint=_EXPORT_HINT) from exc
    _require_graph(model, name)
    return model


def check_external_data(model: Any, entrypoint: str, listed_files: Collection[str]) -> list[str]:
    """Check every external-data reference of *model* against a package's file list.

    *model* is a ModelProto or the entrypoint's serialized bytes; *entrypoint* is its package path
    (e.g. ``onnx/model.onnx``): locations are relative to its directory. Every location must be
    safe (see :func:`external_data_references`) and resolve to a path in *listed_files*.

    Returns:
        The package paths of the external data files, each once, in the order first named.

    Raises:
        ExternalDataOutsideError: a location is absolute or climbs out with ``..`` (exit 2).
        InvalidModelError: a location is malformed or names a file the package does not list (exit 2).
    """
    name = PurePosixPath(entrypoint).name
    if isinstance(model, (bytes, bytearray, memoryview)):
        model = parse_model(bytes(model), name)
    listed = set(listed_files)
    paths: list[str] = []
    for ext in external_data_references(model, name):
        path = resolve_location(entrypoint, ext.location)
        if path not in listed:
            raise InvalidModelError(
                f"Model {entrypoint!r} needs external data file {path!r} (location {ext.location!r} of "
                f"{ext.ref.where}), which is not in the package.",
                hint="Put the .onnx file and its external data side by side.")
        if path not in paths:
            paths.append(path)
    return paths


# --- operator domains -----------------------------------------------------------------------------


@functools.cache
def _onnxruntime_version() -> str:
    try:
        import onnxruntime

        return str(onnxruntime.__version__)
    except Exception:
        return ""


@functools.cache
def onnxruntime_domains() -> frozenset[str]:
    """Operator domains the installed onnxruntime registers (``""`` is the ONNX domain)."""
    try:
        from onnxruntime.capi import _pybind_state

        found = {s.domain for s in _pybind_state.get_all_operator_schema()}
    except Exception:  # onnxruntime missing or too different: the domains every build has
        return _FALLBACK_DOMAINS
    return frozenset({"", "ai.onnx", *found})


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def check_operator_domains(model: Any, model_name: str = "model.onnx",
                           available: Collection[str] | None = None) -> None:
    """Refuse nodes (in any subgraph or local function) whose domain onnxruntime does not provide.

    A node calling one of the model's own functions is fine; every domain used must also be
    declared in the model's (or the function's) opset_import.

    Raises:
        UnsupportedOperatorError: naming the domain and the operator (exit 2).
    """
    have = {_norm_domain(d) for d in (onnxruntime_domains() if available is None else available)}
    local = {(_norm_domain(f.domain), f.name) for f in model.functions}
    imported = {_norm_domain(o.domain) for o in model.opset_import}
    scopes = [(_walk_nodes(model.graph.node, ""), imported)]
    for f in model.functions:
        scopes.append((_walk_nodes(f.node, f" in function {f.domain + ':' if f.domain else ''}{f.name}"),
                       imported | {_norm_domain(o.domain) for o in f.opset_import}))
    for nodes, declared in scopes:
        for node, ctx in nodes:
            domain = _norm_domain(node.domain)
            where = f"{_node_label(node)}{ctx}"
            if (domain, node.op_type) not in local and domain not in have:
                version = _onnxruntime_version()
                raise UnsupportedOperatorError(
                    f"Model {model_name!r} uses operator {node.op_type!r} from domain {node.domain!r} ({where}), "
                    f"which onnxruntime{' ' + version if version else ''} does not provide "
                    f"(it has the standard domain and {', '.join(repr(d) for d in sorted(have) if d)}).",
                    hint="Export the model with standard ONNX operators only (custom operator libraries "
                    "cannot be loaded).")
            if domain not in declared:
                raise InvalidModelError(f"Model {model_name!r} uses domain {node.domain!r} ({where}) without "
                                        "declaring it in opset_import.")


# --- the signature ------------------------------------------------------------------------------


def _require_graph(model: Any, name: str) -> None:
    if model.ir_version <= 0 or not model.graph.output or not model.opset_import:
        raise InvalidModelError(
            f"File {name!r} is not a readable ONNX model (no IR version, outputs or opset).",
            hint=_EXPORT_HINT,
        )


def load_graph(path: Path) -> Any:
    """Parse the graph (not the external weights) of *path* into a ModelProto.

    Raises:
        InvalidModelError: the file is not a readable ONNX model.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidModelError(
            f"File {path.name!r} is not a readable ONNX model ({type(exc).__name__}).",
            hint=_EXPORT_HINT,
        ) from exc
    return parse_model(data, path.name)


def signature_of(model: Any, name: str = "model.onnx") -> OnnxSignature:
    """Inputs, outputs, opset and external data of a parsed model, every tensor and node checked.

    Raises:
        InvalidModelError (or its subclasses ExternalDataOutsideError, UnsupportedOperatorError).
    """
    _require_graph(model, name)
    graph = model.graph
    external: list[str] = []
    for ext in external_data_references(model, name):
        if ext.location not in external:
            external.append(ext.location)
    check_operator_domains(model, name)
    initializers = {t.name for t in graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxSignature(
        opset=opset,
        inputs=_tensor_specs(graph.input, initializers),
        outputs=_tensor_specs(graph.output, set()),
        external_data=external,
    )


def read_signature(path: Path) -> OnnxSignature:
    """Parse the graph (not the external weights) of *path* and check it (see :func:`signature_of`).

    Raises:
        InvalidModelError: the file is not a readable ONNX model, names external data unsafely, or
            uses an operator domain onnxruntime does not provide.
    """
    return signature_of(load_graph(path), path.name)
