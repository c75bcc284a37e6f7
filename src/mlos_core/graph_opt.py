"""Graph rewrites applied when a model is loaded (the published files are never changed).

* Postprocessing inside the graph: pooling (cls, mean, max, mean_sqrt_len_tokens, weightedmean,
  lasttoken, several concatenated; + L2 normalisation) becomes ONNX nodes, so the
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

from axon.model.pooling import DenseLayer
from axon.store.manifest import Manifest

__all__ = ["FUSED_EMBEDDINGS", "fuse_mean_pooling", "fuse_pooling", "to_fp16"]

log = logging.getLogger("mlos_core.graph_opt")
FUSED_EMBEDDINGS = "embeddings"


def fuse_pooling(model: Any, manifest: Manifest, dense: tuple[DenseLayer, ...] = ()) -> str | None:
    """Append the manifest's pooling (every mode, concatenated in its order, then its Dense layers
    — *dense*, their verified weights, become initializers — then L2 normalisation when asked) to
    *model* in place, as :func:`axon.model.pooling.pool` computes it in numpy.

    Returns what was fused ("cls+max pooling"), or None where it does not apply: no pooling, no
    ``attention_mask`` input, an opset below 13, or ``include_prompt: false`` (the prompt's tokens
    are left out of pooling per request, which the numpy path does).
    """
    from onnx import TensorProto, helper, numpy_helper

    from axon.model.pooling import pooling_spec

    spec = pooling_spec(manifest.postprocessing)
    if spec is None or not spec.include_prompt or len(dense) != len(spec.dense):
        return None
    graph = model.graph
    hidden = spec.output or (graph.output[0].name if graph.output else "")
    inputs = {i.name for i in graph.input}
    outputs = {o.name: o for o in graph.output}
    if hidden not in outputs or "attention_mask" not in inputs or FUSED_EMBEDDINGS in outputs:
        return None
    dims = outputs[hidden].type.tensor_type.shape.dim
    width = dims[2].dim_value if len(dims) == 3 and dims[2].HasField("dim_value") else None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        return None
    import numpy as np

    p = "mlos_pool"
    nodes: list[Any] = []

    def const(name: str, value: Any, dtype: Any) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), f"{p}.{name}"))
        return f"{p}.{name}"

    def node(op: str, ins: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, ins, [f"{p}.{out}"], name=f"{p}.{out}", **attrs))
        return f"{p}.{out}"

    def reduce(op: str, x: str, out: str, keepdims: int) -> str:  # over axis 1
        if op == "ReduceSum" or opset >= 18:  # axes became an input (ReduceSum at 13, the others at 18)
            return node(op, [x, axis1], out, keepdims=keepdims)
        return node(op, [x], out, axes=[1], keepdims=keepdims)

    def gather_rows(index: str, out: str) -> str:  # hidden[b, index[b], :] for index [B, 1] int64
        idx3 = node("Unsqueeze", [index, axis2], f"{out}.idx3")  # [B, 1, 1]
        shape = node("Concat", [one_one, node("Slice", [node("Shape", [h32], f"{out}.shape"), two, three],
                                                     f"{out}.width")], f"{out}.target", axis=0)
        expanded = node("Expand", [idx3, shape], f"{out}.idx")  # [B, 1, H]
        return node("Squeeze", [node("GatherElements", [h32, expanded], f"{out}.rows", axis=1), axis1], out)

    axis1, axis2 = const("axis1", [1], np.int64), const("axis2", [2], np.int64)
    one_one, two, three = const("one_one", [1, 1], np.int64), const("two", [2], np.int64), const("three", [3], np.int64)
    eps = const("eps", 1e-9, np.float32)
    h32 = node("Cast", [hidden], "hidden32", to=TensorProto.FLOAT)
    mask = node("Cast", ["attention_mask"], "mask", to=TensorProto.FLOAT)  # [B, S]
    mask3 = node("Unsqueeze", [mask, axis2], "mask3")  # [B, S, 1]
    mean_parts: dict[str, str] = {}

    def masked_sum() -> tuple[str, str]:
        if not mean_parts:
            mean_parts["sum"] = reduce("ReduceSum", node("Mul", [h32, mask3], "masked"), "sum", 0)
            mean_parts["count"] = node("Max", [reduce("ReduceSum", mask, "count_raw", 1), eps], "count")
        return mean_parts["sum"], mean_parts["count"]

    parts = []
    for i, mode in enumerate(spec.modes):
        if mode == "cls":  # the first attended position
            parts.append(gather_rows(node("ArgMax", [mask], f"cls{i}.first", axis=1, keepdims=1), f"cls{i}"))
        elif mode == "lasttoken":  # the last attended position (the last one when none is)
            last = node("ArgMax", [mask], f"last{i}.pos", axis=1, keepdims=1, select_last_index=1)
            parts.append(gather_rows(last, f"last{i}"))
        elif mode == "max":
            filled = node("Where", [node("Equal", [mask3, const("zero", 0.0, np.float32)], f"max{i}.pad"),
                                    const("neg_inf", -np.inf, np.float32), h32], f"max{i}.filled")
            parts.append(reduce("ReduceMax", filled, f"max{i}", 0))
        elif mode == "mean":
            total, count = masked_sum()
            parts.append(node("Div", [total, count], f"mean{i}"))
        elif mode == "mean_sqrt_len_tokens":
            total, count = masked_sum()
            parts.append(node("Div", [total, node("Sqrt", [count], f"sqrt{i}.len")], f"sqrt{i}"))
        elif mode == "weightedmean":  # weights 1, 2, ... from the first attended position
            seq = node("Gather", [node("Shape", [mask], f"wm{i}.shape"), const("one", 1, np.int64)], f"wm{i}.seq",
                       axis=0)
            seq_f = node("Cast", [seq], f"wm{i}.seq_f", to=TensorProto.FLOAT)
            one_f = const("one_f", 1.0, np.float32)
            positions = node("Range", [one_f, node("Add", [seq_f, one_f], f"wm{i}.end"), one_f], f"wm{i}.pos")
            first = node("Cast", [node("ArgMax", [mask], f"wm{i}.first_i", axis=1, keepdims=1)], f"wm{i}.first",
                         to=TensorProto.FLOAT)
            weights = node("Mul", [mask, node("Sub", [positions, first], f"wm{i}.w")], f"wm{i}.weights")
            total = reduce("ReduceSum", node("Mul", [h32, node("Unsqueeze", [weights, axis2], f"wm{i}.w3")],
                                             f"wm{i}.weighted"), f"wm{i}.sum", 0)
            count = node("Max", [reduce("ReduceSum", weights, f"wm{i}.count_raw", 1), eps], f"wm{i}.count")
            parts.append(node("Div", [total, count], f"wm{i}"))
        else:
            return None
    pooled = parts[0] if len(parts) == 1 else node("Concat", parts, "concat", axis=1)
    for j, layer in enumerate(dense):
        pooled = node("MatMul", [pooled, const(f"dense{j}.weight_t", np.ascontiguousarray(layer.weight.T), np.float32)],
                      f"dense{j}.mm")
        if layer.bias is not None:
            pooled = node("Add", [pooled, const(f"dense{j}.bias", layer.bias, np.float32)], f"dense{j}.linear")
        if layer.activation == "tanh":
            pooled = node("Tanh", [pooled], f"dense{j}.act")
        elif layer.activation == "relu":
            pooled = node("Relu", [pooled], f"dense{j}.act")
        elif layer.activation == "sigmoid":
            pooled = node("Sigmoid", [pooled], f"dense{j}.act")
        elif layer.activation == "gelu":  # exact (erf) GELU, torch.nn.GELU's default
            half = node("Mul", [pooled, const(f"dense{j}.half", 0.5, np.float32)], f"dense{j}.half_x")
            erf = node("Erf", [node("Div", [pooled, const(f"dense{j}.sqrt2", np.sqrt(2.0), np.float32)],
                                    f"dense{j}.scaled")], f"dense{j}.erf")
            pooled = node("Mul", [half, node("Add", [erf, const(f"dense{j}.one", 1.0, np.float32)], f"dense{j}.1p")],
                          f"dense{j}.act")
    if spec.normalize:
        nodes.append(helper.make_node("LpNormalization", [pooled], [FUSED_EMBEDDINGS], name=f"{p}.normalize",
                                      axis=1, p=2))
    else:
        nodes.append(helper.make_node("Identity", [pooled], [FUSED_EMBEDDINGS], name=f"{p}.out"))
    graph.node.extend(nodes)
    out_width = dense[-1].weight.shape[0] if dense else (width * len(spec.modes) if width else None)
    graph.output.append(helper.make_tensor_value_info(FUSED_EMBEDDINGS, TensorProto.FLOAT, ["batch", out_width]))
    return "+".join(spec.modes) + " pooling" + (f" + {len(dense)} dense" if dense else "")


def fuse_mean_pooling(model: Any, manifest: Manifest) -> bool:
    """The older name: fuse whatever pooling the manifest asks for; True if it applied."""
    return fuse_pooling(model, manifest) is not None


def to_fp16(model: Any) -> tuple[Any, str]:
    """Transformer-optimized fp16 model (graph inputs/outputs keep their types) and how it was made.

    Every weight must be in the graph itself: the converter cannot see external data (inline it
    first, ``axon.model.inference.inline_external_data``), and it never reads files.

    Raises:
        ValueError: *model* still names external data.
    """
    from axon.model.onnx_signature import iter_tensors

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
