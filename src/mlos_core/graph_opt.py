"""Graph rewrites applied when a model is loaded (the published files are never changed).

* Postprocessing inside the graph: mean pooling (+ L2 normalisation) becomes ONNX nodes, so the
  session returns ``embeddings`` [batch, hidden] instead of copying ``last_hidden_state``
  [batch, seq, hidden] out of the device and pooling it in numpy.
* fp16 for CUDA: onnxruntime's transformer optimizer (fused attention, LayerNorm, GELU where its
  patterns match) and fp16 weights and activations, inputs and outputs kept in their types.

Both work on the verified ModelProto in memory. Pooling only appends nodes, so a graph whose main
initializers stay external data (served from memory) is fine; fp16 needs every weight inlined.
"""

from __future__ import annotations

import logging
from typing import Any

from axon.manifest import Manifest

__all__ = ["FUSED_EMBEDDINGS", "fuse_mean_pooling", "to_fp16"]

log = logging.getLogger("mlos_core.graph_opt")
FUSED_EMBEDDINGS = "embeddings"


def fuse_mean_pooling(model: Any, manifest: Manifest) -> bool:
    """Append masked mean pooling (and normalisation) to *model* in place; True if it applied."""
    from onnx import TensorProto, helper, numpy_helper

    post = manifest.postprocessing or {}
    if post.get("type") != "mean_pooling":
        return False
    graph = model.graph
    hidden = post.get("output") or (graph.output[0].name if graph.output else "")
    inputs = {i.name for i in graph.input}
    outputs = {o.name: o for o in graph.output}
    if hidden not in outputs or "attention_mask" not in inputs or FUSED_EMBEDDINGS in outputs:
        return False
    dims = outputs[hidden].type.tensor_type.shape.dim
    width = dims[2].dim_value if len(dims) == 3 and dims[2].HasField("dim_value") else None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        return False
    import numpy as np

    p = "mlos_pool"
    graph.initializer.extend([
        numpy_helper.from_array(np.asarray([2], np.int64), f"{p}.axis2"),
        numpy_helper.from_array(np.asarray([1], np.int64), f"{p}.axis1"),
        numpy_helper.from_array(np.asarray(1e-9, np.float32), f"{p}.eps"),
    ])
    nodes = [
        helper.make_node("Cast", ["attention_mask"], [f"{p}.mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [f"{p}.mask", f"{p}.axis2"], [f"{p}.mask3"]),
        helper.make_node("Cast", [hidden], [f"{p}.hidden32"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{p}.hidden32", f"{p}.mask3"], [f"{p}.masked"]),
        helper.make_node("ReduceSum", [f"{p}.masked", f"{p}.axis1"], [f"{p}.sum"], keepdims=0),
        helper.make_node("ReduceSum", [f"{p}.mask", f"{p}.axis1"], [f"{p}.count"], keepdims=1),
        helper.make_node("Max", [f"{p}.count", f"{p}.eps"], [f"{p}.count_safe"]),
    ]
    if post.get("normalize", True):
        nodes += [helper.make_node("Div", [f"{p}.sum", f"{p}.count_safe"], [f"{p}.mean"]),
                  helper.make_node("LpNormalization", [f"{p}.mean"], [FUSED_EMBEDDINGS], axis=1, p=2)]
    else:
        nodes.append(helper.make_node("Div", [f"{p}.sum", f"{p}.count_safe"], [FUSED_EMBEDDINGS]))
    graph.node.extend(nodes)
    graph.output.append(helper.make_tensor_value_info(FUSED_EMBEDDINGS, TensorProto.FLOAT, ["batch", width]))
    return True


def to_fp16(model: Any) -> tuple[Any, str]:
    """Transformer-optimized fp16 model (graph inputs/outputs keep their types) and how it was made.

    Every weight must be in the graph itself: the converter cannot see external data (inline it
    first, ``axon.inference.inline_external_data``), and it never reads files.

    Raises:
        ValueError: *model* still names external data.
    """
    from axon.onnx_signature import iter_tensors

    external = next((r.where for r in iter_tensors(model)
                     if r.tensor.data_location == 1 or len(r.tensor.external_data)), None)
    if external is not None:
        raise ValueError(f"fp16 conversion needs every weight in the graph; {external} is external data")
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(model, model_type="bert", num_heads=0, hidden_size=0, opt_level=0, use_gpu=True)
        optimized.convert_float_to_float16(keep_io_types=True)
        return optimized.model, "fp16 (transformer optimizer: " + ", ".join(
            f"{k} {v}" for k, v in sorted(optimized.get_fused_operator_statistics().items()) if v) + ")"
    except Exception as exc:
        log.warning("transformer optimizer failed (%s); converting to fp16 without fusion", exc)
        from onnxruntime.transformers.float16 import convert_float_to_float16

        return convert_float_to_float16(model, keep_io_types=True), f"fp16 (no fusion: {type(exc).__name__})"
