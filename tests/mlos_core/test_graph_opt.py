"""Load-time graph rewrites: the transformer optimizer really fuses our encoder's attention."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from axon.example_model import EncoderConfig, build_encoder_onnx
from mlos_core.graph_opt import to_fp16


def _run(model_bytes: bytes, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def test_encoder_attention_is_fused_and_exact_in_fp32() -> None:
    """The bundled encoder is spelled the way onnxruntime's optimizer expects BERT, so every
    layer's attention becomes one fused op (what fp16 serving on a GPU relies on)."""
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = EncoderConfig(layers=3)
    model = build_encoder_onnx(cfg, 120)
    optimized = optimize_model(model, model_type="bert", num_heads=0, hidden_size=0, opt_level=0, use_gpu=False)
    stats = optimized.get_fused_operator_statistics()
    assert stats["Attention"] == cfg.layers and stats["SkipLayerNormalization"] == 2 * cfg.layers
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 120, (3, 11)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 2:] = 0
    plain = _run(model.SerializeToString(), ids, mask)
    fused = _run(optimized.model.SerializeToString(), ids, mask)
    attended = mask.astype(bool)
    np.testing.assert_allclose(fused[attended], plain[attended], rtol=1e-4, atol=1e-5)


def test_fp16_conversion_reports_the_fused_attention() -> None:
    cfg = EncoderConfig(layers=2)
    converted, note = to_fp16(build_encoder_onnx(cfg, 120))
    assert "no fusion" not in note and f"Attention {cfg.layers}" in note, note
    ops = {n.op_type for n in converted.graph.node}
    assert "Attention" in ops
    # Inputs and outputs keep their types: clients still send int64 ids and get float32 back.
    assert [i.type.tensor_type.elem_type for i in converted.graph.input] == [7, 7]
    assert converted.graph.output[0].type.tensor_type.elem_type == 1
