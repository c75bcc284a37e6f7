"""Tiny ONNX models built with the onnx helper API (no binaries in the repo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp_model(*, features: int = 4, out: int = 3, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """y = relu(x @ W + b): input x float32 [batch, features], output y float32 [batch, out]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((features, out)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(out).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_mlp(path: Path, **kwargs: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(mlp_model(**kwargs).SerializeToString())
    return path


def write_external_data_model(directory: Path, *, features: int = 64, out: int = 64) -> Path:
    """model.onnx whose weights live in model.onnx_data next to it."""
    directory.mkdir(parents=True, exist_ok=True)
    model = mlp_model(features=features, out=out)
    onnx.save_model(model, str(directory / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data", size_threshold=0)
    return directory / "model.onnx"


# --- external data in every place a graph can hold a tensor --------------------------------------

EXTERNAL_PLACES = ("initializer", "constant", "then", "else")


def make_external(tensor: TensorProto, location: str, offset: int = 0) -> bytes:
    """Move *tensor*'s bytes out of the graph: it now names (location, offset, length); returns the bytes."""
    raw = tensor.raw_data or numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data
    for key in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
        tensor.ClearField(key)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return raw


BIG_ROWS = 65_600  # W is just over 1 MiB: served to onnxruntime from an in-memory file, not inlined


def external_data_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"matrix": rng.standard_normal((4, 4)).astype(np.float32),
            "initializer": rng.standard_normal((BIG_ROWS, 4)).astype(np.float32),
            **{p: rng.standard_normal(4).astype(np.float32) for p in EXTERNAL_PLACES[1:]}}


def external_data_model(*, seed: int = 0, locations: dict[str, str] | None = None,
                        arrays: dict[str, np.ndarray] | None = None,
                        only: tuple[str, ...] = EXTERNAL_PLACES) -> tuple[onnx.ModelProto, bytes]:
    """y = x @ M + mean(W, rows) + C + (T if sum(x) > 0 else E): W a graph initializer (1 MiB), C a
    ``Constant`` node's attribute, T and E initializers of the ``If`` node's two branch subgraphs,
    each one external data (M stays in the graph). Their bytes lie one after the other in the
    returned blob (W at 0, then C, T, E), each named at ``locations.get(place, "weights.bin")``.
    With *only*, just those places are external (the others stay in the graph).
    Input x float32 [batch, 4], output y float32 [batch, 4]."""
    arrays = arrays or external_data_arrays(seed)
    locations = locations or {}
    tensors = {p: numpy_helper.from_array(arrays[p], n) for p, n in zip(EXTERNAL_PLACES, "WCTE", strict=True)}
    blob = b""
    for place in EXTERNAL_PLACES:
        if place in only:
            blob += make_external(tensors[place], locations.get(place, "weights.bin"), len(blob))

    def branch(name: str, place: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Identity", [tensors[place].name], [f"{name}_out"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [4])],
                                 [tensors[place]])

    nodes = [helper.make_node("MatMul", ["x", "M"], ["xm"]),
             helper.make_node("ReduceMean", ["W"], ["w_mean"], axes=[0], keepdims=0),
             helper.make_node("Add", ["xm", "w_mean"], ["xw"]),
             helper.make_node("Constant", [], ["c"], name="const", value=tensors["constant"]),
             helper.make_node("Add", ["xw", "c"], ["z"]),
             helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.float32(0))),
             helper.make_node("Greater", ["total", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["sel"], name="choose", then_branch=branch("then_branch", "then"),
                              else_branch=branch("else_branch", "else")),
             helper.make_node("Add", ["z", "sel"], ["y"])]
    graph = helper.make_graph(nodes, "external", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                              [tensors["initializer"], numpy_helper.from_array(arrays["matrix"], "M")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, blob


def write_external_data_package(directory: Path, *, seed: int = 0, locations: dict[str, str] | None = None,
                                entrypoint: str = "model.onnx") -> Path:
    """*entrypoint* (under *directory*) and ``weights.bin`` beside it; see external_data_model."""
    model, blob = external_data_model(seed=seed, locations=locations)
    path = directory / entrypoint
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    (path.parent / "weights.bin").write_bytes(blob)
    return path


def custom_domain_model(domain: str = "com.example.custom", op: str = "Frobnicate") -> onnx.ModelProto:
    """x -> Relu -> a node *op* of *domain* (no onnxruntime has its kernel) -> y, both float32 [batch, 4]."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, ["r"], ["y"], name="custom", domain=domain)]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    model.ir_version = 8
    return model


def unknown_op_model() -> onnx.ModelProto:
    """A standard-domain node whose operator does not exist: only onnxruntime notices (at load)."""
    nodes = [helper.make_node("NoSuchOperator", ["x"], ["y"], name="bogus")]
    graph = helper.make_graph(nodes, "bogus", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# Places a tensor (and so external data) can hide, beyond external_data_model's four.
HIDDEN_PLACES = ("sparse_initializer", "sparse_attribute", "tensors_attribute", "loop_body", "nested_if", "function",
                 "constant_of_shape", "training_info")


def model_with_hidden_tensor(place: str, location: str) -> onnx.ModelProto:
    """A small valid-looking graph with one tensor at *place* naming external data *location*
    (for the reference walker; not all of them run in onnxruntime)."""
    t = numpy_helper.from_array(np.arange(4, dtype=np.float32), "hidden")
    make_external(t, location)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    extra: dict[str, object] = {}
    functions = []
    if place == "sparse_initializer":
        idx = numpy_helper.from_array(np.arange(4, dtype=np.int64), "hidden_idx")
        extra["sparse_initializer"] = [helper.make_sparse_tensor(t, idx, [4])]
    elif place == "sparse_attribute":
        idx = numpy_helper.from_array(np.arange(4, dtype=np.int64), "hidden_idx")
        nodes = [helper.make_node("Constant", [], ["k"], sparse_value=helper.make_sparse_tensor(t, idx, [4])),
                 helper.make_node("Add", ["x", "k"], ["y"])]
    elif place == "tensors_attribute":
        attr = helper.make_attribute("pool", [t])
        node = helper.make_node("Identity", ["x"], ["y"])
        node.attribute.append(attr)
        nodes = [node]
    elif place in ("loop_body", "nested_if"):
        inner = helper.make_graph([helper.make_node("Identity", ["hidden"], ["v"])], "inner", [],
                                  [helper.make_tensor_value_info("v", TensorProto.FLOAT, [4])], [t])
        if place == "loop_body":
            body = helper.make_graph(
                [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                 helper.make_node("Constant", [], ["k"], value=t)],
                "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
                [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("k", TensorProto.FLOAT, [4])])
            nodes = [helper.make_node("Loop", ["", ""], ["ks"], body=body), helper.make_node("Identity", ["x"], ["y"])]
        else:
            then = helper.make_graph([helper.make_node("If", ["c"], ["v"], then_branch=inner, else_branch=inner)],
                                     "outer", [], [helper.make_tensor_value_info("v", TensorProto.FLOAT, [4])])
            nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.bool_(True))),
                     helper.make_node("If", ["c"], ["v"], then_branch=then, else_branch=then),
                     helper.make_node("Add", ["x", "v"], ["y"])]
    elif place == "function":
        fn = helper.make_function("local.fns", "AddHidden", ["a"], ["b"],
                                  [helper.make_node("Constant", [], ["k"], value=t),
                                   helper.make_node("Add", ["a", "k"], ["b"])],
                                  [helper.make_opsetid("", 17)])
        functions = [fn]
        nodes = [helper.make_node("AddHidden", ["x"], ["y"], domain="local.fns")]
    elif place == "constant_of_shape":
        shape = numpy_helper.from_array(np.asarray([4], np.int64), "shape")
        t1 = numpy_helper.from_array(np.asarray([1.0], np.float32), "v")
        make_external(t1, location)
        nodes = [helper.make_node("ConstantOfShape", ["shape"], ["k"], value=t1),
                 helper.make_node("Add", ["x", "k"], ["y"])]
        extra["initializer"] = [shape]
    elif place != "training_info":
        raise ValueError(place)
    graph = helper.make_graph(nodes, "hidden", [x], [y], extra.pop("initializer", []), **extra)  # type: ignore[arg-type]
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("local.fns", 1)] if functions else [])
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    model.ir_version = 8
    if place == "training_info":
        init = helper.make_graph([], "init", [], [], [t])
        model.training_info.add().initialization.CopyFrom(init)
    return model


def mlp_outputs(x: np.ndarray, **kwargs: int) -> np.ndarray:
    """What :func:`mlp_model` (same *kwargs*) computes for *x*, in numpy: the oracle of its runs."""
    init = {t.name: numpy_helper.to_array(t) for t in mlp_model(**kwargs).graph.initializer}
    y: np.ndarray = np.maximum(np.asarray(x, np.float32) @ init["W"] + init["b"], 0)
    return y


def int8_collapsing_model(*, features: int = 8, out: int = 4, seed: int = 0) -> onnx.ModelProto:
    """y = (x * m) @ W, where m zeroes feature 0 and W's row 0 is huge: int8 per output channel
    scales every column by that row, so the small weights that make the answer round to zero
    (and y with them), while fp32 computes it. A model the int8 gate must refuse."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((features, out)) * 1e-2).astype(np.float32)
    w[0, :] = 1e4
    m = np.ones(features, np.float32)
    m[0] = 0.0
    nodes = [helper.make_node("Mul", ["x", "m"], ["xm"]), helper.make_node("MatMul", ["xm", "W"], ["y"])]
    graph = helper.make_graph(
        nodes, "collapsing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(m, "m")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
