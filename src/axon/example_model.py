"""The bundled example model, built as code: a small BERT-style text encoder.

Everything is deterministic (fixed seed, fixed vocabulary), so two builds give byte-identical
files and therefore the same integrity digest. The same builder makes the MiniLM-L6-shaped
encoder the server benchmarks use (``EncoderConfig.minilm_l6()``).
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from axon.store.layout import MANIFEST_NAME

__all__ = ["EncoderConfig", "build_encoder_onnx", "build_example_package", "build_tokenizer"]

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "hello", "world", "mlos", "axon", "model", "models", "inference", "server", "production", "cache",
    "publish", "register", "test", "validate", "run", "the", "a", "an", "is", "are", "was", "be", "to", "of",
    "and", "in", "on", "for", "with", "this", "that", "it", "as", "at", "by", "from", "or", "not", "no", "yes",
    "what", "how", "why", "fast", "safe", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "sentence",
    "embedding", "text", "token", "tokens", "vector", "vectors", "hi", "good", "bad", "great", "data",
    "machine", "learning", "deep", "network", "neural", "onnx", "runtime", "gpu", "cpu", "batch", "request",
    "response"
]


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    vocab_size: int = 0  # 0: the size of the built-in vocabulary
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 128
    max_positions: int = 128
    seed: int = 1234

    @classmethod
    def minilm_l6(cls) -> EncoderConfig:
        """The shape of sentence-transformers/all-MiniLM-L6-v2 (random weights)."""
        return cls(vocab_size=30522, hidden=384, layers=6, heads=12, ffn=1536, max_positions=512)

    @classmethod
    def bert_base(cls) -> EncoderConfig:
        return cls(vocab_size=30522, hidden=768, layers=12, heads=12, ffn=3072, max_positions=512)


def example_vocab(size: int = 0) -> list[str]:
    vocab = list(SPECIAL_TOKENS)
    vocab += list(string.ascii_lowercase) + list(string.digits) + list(string.punctuation)
    vocab += [f"##{c}" for c in string.ascii_lowercase + string.digits]
    vocab += [w for w in WORDS if w not in vocab]
    i = 0
    while len(vocab) < size:  # pad out to the requested size with unused tokens
        vocab.append(f"[unused{i}]")
        i += 1
    return vocab


def build_tokenizer(vocab: list[str], max_length: int) -> Any:
    """A real WordPiece tokenizer (BERT normaliser and pre-tokeniser, [CLS] … [SEP])."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    tok.decoder = decoders.WordPiece()
    tok.enable_truncation(max_length=max_length)
    return tok


def build_encoder_onnx(cfg: EncoderConfig, vocab_size: int) -> Any:
    """A BERT-style encoder graph: embeddings, N x (self-attention + GELU FFN), post-LN."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(cfg.seed)
    h, nh = cfg.hidden, cfg.heads
    dh = h // nh
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, *shape: int, scale: float = 0.02) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name: str, value: Any, dtype: Any = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def ones(name: str) -> str:
        return const(name, np.ones(h, dtype=np.float32))

    def zeros(name: str, n: int = h) -> str:
        return const(name, np.zeros(n, dtype=np.float32))

    def layer_norm(x: str, prefix: str) -> str:
        return node("LayerNormalization", [x, ones(f"{prefix}.gamma"), zeros(f"{prefix}.beta")], f"{prefix}.out",
                    axis=-1, epsilon=1e-12)

    def linear(x: str, prefix: str, n_in: int, n_out: int) -> str:
        mm = node("MatMul", [x, weight(f"{prefix}.weight", n_in, n_out)], f"{prefix}.mm")
        return node("Add", [mm, zeros(f"{prefix}.bias", n_out)], f"{prefix}.out")

    # Embeddings: word + position, then LayerNorm.
    word = node("Gather", [weight("embeddings.word", vocab_size, h), "input_ids"], "embeddings.word_out")
    shape = node("Shape", ["input_ids"], "embeddings.shape")
    seq_len = node("Gather", [shape, const("c.one_idx", 1, np.int64)], "embeddings.seq_len", axis=0)
    positions = node("Range", [const("c.zero_i64", 0, np.int64), seq_len, const("c.one_i64", 1, np.int64)],
                     "embeddings.positions")
    pos = node("Gather", [weight("embeddings.position", cfg.max_positions, h), positions], "embeddings.pos_out")
    x = layer_norm(node("Add", [word, pos], "embeddings.sum"), "embeddings.ln")

    # Additive attention mask: 0 where attended, -10000 where padded; shape [B, 1, 1, S]. Spelled
    # as PyTorch's BERT exports it (Unsqueeze, Unsqueeze, Cast, 1 - m, * -10000) so onnxruntime's
    # transformer optimizer recognises the attention blocks and fuses them.
    mask_3d = node("Unsqueeze", ["attention_mask", const("c.axis_1", [1], np.int64)], "mask.3d")
    mask_4d = node("Unsqueeze", [mask_3d, const("c.axis_2", [2], np.int64)], "mask.4d")
    mask_f = node("Cast", [mask_4d], "mask.float", to=TensorProto.FLOAT)
    inverted = node("Sub", [const("c.one_f", 1.0), mask_f], "mask.inverted")
    bias = node("Mul", [inverted, const("c.neg_big", -10000.0)], "mask.bias")

    split_shape = const("c.split_heads", [0, 0, nh, dh], np.int64)
    merge_shape = const("c.merge_heads", [0, 0, h], np.int64)
    sqrt_dh = const("c.sqrt_dh", float(np.sqrt(dh)))
    half = const("c.half", 0.5)
    sqrt2 = const("c.sqrt2", float(np.sqrt(2.0)))
    one = "c.one_f"
    for i in range(cfg.layers):
        p = f"layer{i}"
        q = node("Transpose", [node("Reshape", [linear(x, f"{p}.q", h, h), split_shape], f"{p}.q.split")],
                 f"{p}.q.heads", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, f"{p}.k", h, h), split_shape], f"{p}.k.split")],
                 f"{p}.k.heads", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, f"{p}.v", h, h), split_shape], f"{p}.v.split")],
                 f"{p}.v.heads", perm=[0, 2, 1, 3])
        scores = node("Add", [node("Div", [node("MatMul", [q, k], f"{p}.qk"), sqrt_dh], f"{p}.scaled"), bias],
                      f"{p}.scores")
        probs = node("Softmax", [scores], f"{p}.probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctx.t", perm=[0, 2, 1, 3])
        attn = linear(node("Reshape", [ctx, merge_shape], f"{p}.ctx.merged"), f"{p}.attn_out", h, h)
        x = layer_norm(node("Add", [x, attn], f"{p}.res1"), f"{p}.ln1")
        up = linear(x, f"{p}.ffn_up", h, cfg.ffn)
        erf = node("Erf", [node("Div", [up, sqrt2], f"{p}.gelu.div")], f"{p}.gelu.erf")
        gelu = node("Mul", [node("Mul", [up, half], f"{p}.gelu.half"), node("Add", [erf, one], f"{p}.gelu.1p")],
                    f"{p}.gelu")
        down = linear(gelu, f"{p}.ffn_down", cfg.ffn, h)
        x = layer_norm(node("Add", [x, down], f"{p}.res2"), f"{p}.ln2")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state"))

    graph = helper.make_graph(
        nodes, "axon_example_encoder",
        inputs=[helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
                helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        outputs=[helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", h])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="axon-example",
                              producer_version="1")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def build_example_package(out_dir: Path, cfg: EncoderConfig | None = None, *, max_length: int = 128) -> Path:
    """Write model.onnx, tokenizer.json, config.json and a partial manifest.yaml into *out_dir*.

    The partial manifest carries what cannot be read from the files (description, licence,
    pre/postprocessing); ``axon install --from DIR`` completes it with hashes and I/O.
    """
    import yaml

    cfg = cfg or EncoderConfig()
    vocab = example_vocab(cfg.vocab_size)
    vocab_size = len(vocab)
    max_length = min(max_length, cfg.max_positions)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_encoder_onnx(cfg, vocab_size)
    (out_dir / "model.onnx").write_bytes(model.SerializeToString())
    build_tokenizer(vocab, max_length).save(str(out_dir / "tokenizer.json"))
    config = {"model_type": "bert", "architectures": ["BertModel"], **asdict(cfg), "vocab_size": vocab_size}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    partial = {
        "apiVersion": "axon.mlos.io/v1",
        "kind": "Model",
        "metadata": {"description": f"axon example text encoder ({cfg.layers} layers, hidden {cfg.hidden})",
                     "license": "Apache-2.0"},
        "spec": {
            "format": {"type": "onnx", "entrypoint": "model.onnx"},
            "preprocessing": {"type": "tokenizer", "tokenizer": "tokenizer.json", "max_length": max_length,
                              "truncation": True, "padding": "longest"},
            "postprocessing": {"type": "mean_pooling", "normalize": True, "output": "last_hidden_state"},
            "requirements": {"memory_bytes": (out_dir / "model.onnx").stat().st_size * 4, "gpu": "optional"},
        },
    }
    (out_dir / MANIFEST_NAME).write_text(yaml.safe_dump(partial, sort_keys=False))
    write_reference(out_dir, max_length)
    return out_dir


REFERENCE_TEXTS = ["Hello, MLOS!", "The quick brown fox jumps over the lazy dog.", "fast safe model inference"]


def write_reference(out_dir: Path, max_length: int) -> None:
    """samples/reference.json: inputs and the embeddings they must give (what `axon validate` checks)."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(REFERENCE_TEXTS)
    ids = np.asarray([e.ids for e in enc], np.int64)
    mask = np.asarray([e.attention_mask for e in enc], np.int64)
    sess = ort.InferenceSession(str(out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (hidden,) = sess.run(None, {"input_ids": ids, "attention_mask": mask})
    w = mask[..., None].astype(np.float32)
    pooled = (hidden * w).sum(axis=1) / w.sum(axis=1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    (out_dir / "samples").mkdir(exist_ok=True)
    ref = {"inputs": {"texts": REFERENCE_TEXTS},
           "outputs": {"embeddings": [[round(float(v), 7) for v in row] for row in pooled]},
           "atol": 1e-4, "rtol": 1e-3}
    (out_dir / "samples" / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
