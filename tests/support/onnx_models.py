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
