"""Read what a manifest needs from an ONNX file: inputs, outputs, opset, external data files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from axon.errors import InvalidModelError
from axon.manifest import TensorSpec

__all__ = ["OnnxSignature", "read_signature"]


@dataclass(frozen=True, slots=True)
class OnnxSignature:
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    external_data: list[str] = field(default_factory=list)  # relative to the model file's directory
    producer: str = ""


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _tensor_specs(values: object, skip: set[str]) -> list[TensorSpec]:
    out = []
    for v in values:  # type: ignore[attr-defined]
        if v.name in skip:
            continue
        tt = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        out.append(TensorSpec(v.name, _dtype_name(tt.elem_type), shape))
    return out


def read_signature(path: Path) -> OnnxSignature:
    """Parse the graph (not the external weights) of *path*.

    Raises:
        InvalidModelError: the file is not a readable ONNX model.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise InvalidModelError(
            f"File {path.name!r} is not a readable ONNX model ({type(exc).__name__}).",
            hint="Point --from at a .onnx file exported with torch.onnx, optimum or tf2onnx.",
        ) from exc
    graph = model.graph
    if model.ir_version <= 0 or not graph.output or not model.opset_import:
        raise InvalidModelError(
            f"File {path.name!r} is not a readable ONNX model (no IR version, outputs or opset).",
            hint="Point --from at a .onnx file exported with torch.onnx, optimum or tf2onnx.",
        )
    initializers = {t.name for t in graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    external: list[str] = []
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if loc and loc not in external:
                pure = PurePosixPath(loc)
                if pure.is_absolute() or ".." in pure.parts:
                    raise InvalidModelError(
                        f"Model {path.name!r} points its external data outside its directory ({loc!r})."
                    )
                external.append(loc)
    return OnnxSignature(
        opset=opset,
        inputs=_tensor_specs(graph.input, initializers),
        outputs=_tensor_specs(graph.output, set()),
        external_data=external,
        producer=model.producer_name,
    )
