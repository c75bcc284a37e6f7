"""Tiny sentence-transformers models, built offline, and the real library as the test oracle.

One BERT (2 layers, hidden 32, 4 heads, intermediate 37, fixed seed) with a WordPiece vocabulary
written here is saved once with ``save_pretrained`` (a ``BertTokenizerFast`` with it, so
``tokenizer.json`` exists) and exported once to ONNX (``torch.onnx.export``, TorchScript
exporter, opset 17, dynamic batch and sequence axes). Each variant is a
``SentenceTransformer(modules=[Transformer, Pooling(...), (Dense...), (Normalize)])`` saved with
``save(dir)``, plus that ``model.onnx`` (or ``onnx/model.onnx``, as Hub repositories have it).
The oracle is ``SentenceTransformer(dir)`` loaded back from the saved directory, so what the
library reads from those files is what the expected numbers come from.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN = 32
MAX_POSITIONS = 64

_WORDS = tuple(" ".join((
    "the a an and of to in is it that for on with as at by from this be are was not or have quick brown",
    "fox jumps over lazy dog hello world model inference fast safe query passage search document text",
    "sentence embedding river bank morning night city music book water light")).split(" "))
_CJK = "中文日本語한국어你好世界東京"
_EMOJI = ("😀", "🚀", "👍")


def vocabulary() -> list[str]:
    """A WordPiece vocabulary: specials, punctuation, letters (also as ##suffixes), words, some
    CJK characters and emoji; upper-case letters too, so lower-casing changes the ids."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    upper = [c.upper() for c in letters]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,!?;:'\"-()", *letters, *upper,
             *(f"##{c}" for c in letters), *(f"##{c}" for c in upper), "##s", "##ing", "##ed", "##er", "##ly",
             *_WORDS, *_CJK, *_EMOJI, "ü", "ö", "é", "##ü", "##ö", "##é", "ß", "##ß"]
    seen: dict[str, None] = {}
    for token in vocab:
        seen.setdefault(token, None)
    return list(seen)


@contextmanager
def quiet() -> Iterator[None]:
    """The library's and torch's warnings are not ours (pytest makes warnings errors)."""
    import logging

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = logging.getLogger("transformers").level, logging.getLogger("sentence_transformers").level
        logging.getLogger("transformers").setLevel(logging.ERROR)
        logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("transformers").setLevel(old[0])
            logging.getLogger("sentence_transformers").setLevel(old[1])


def build_base(out: Path, seed: int = 0) -> Path:
    """``out/hf``: the BERT and its tokenizer (save_pretrained); ``out/model.onnx``: its export."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    with quiet():
        hf = out / "hf"
        hf.mkdir(parents=True, exist_ok=True)
        (out / "vocab.txt").write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
        tok = BertTokenizerFast(vocab=str(out / "vocab.txt"), do_lower_case=False, strip_accents=False)
        probe = tok("hello World 中文 😀 Köln")["input_ids"]
        assert tok.unk_token_id not in probe, f"the test vocabulary did not load: {probe}"  # else all texts look alike
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=len(vocabulary()), hidden_size=HIDDEN, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=37, max_position_embeddings=MAX_POSITIONS,
                         attn_implementation="eager")
        model = BertModel(cfg).eval()
        model.save_pretrained(hf)
        tok.save_pretrained(hf)

        class LastHidden(torch.nn.Module):
            def __init__(self, bert: Any) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state

        ids = torch.tensor([[2, 40, 41, 42, 3], [2, 43, 3, 0, 0]], dtype=torch.long)
        mask = (ids != 0).long()
        dyn = {0: "batch", 1: "sequence"}
        torch.onnx.export(LastHidden(model), (ids, mask, torch.zeros_like(ids)), str(out / "model.onnx"),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "token_type_ids": dyn,
                                        "last_hidden_state": dyn})
    return out


@dataclass
class Variant:
    """One sentence-transformers configuration of the base model."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    include_prompt: bool = True
    max_seq_length: int | None = None  # written into sentence_bert_config.json (older repositories' way)
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    dense: tuple[str, ...] = ()  # one Dense layer per activation (torch.nn class names), 16 then 8 features
    legacy_pooling_config: bool = False  # pooling_mode_*_token flags instead of pooling_mode
    onnx_subdir: bool = False


@dataclass
class STModel:
    path: Path
    variant: Variant
    _st: Any = None

    @property
    def library(self) -> Any:
        from sentence_transformers import SentenceTransformer

        if self._st is None:
            with quiet():
                self._st = SentenceTransformer(str(self.path), device="cpu")
        return self._st

    def encode(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        """What sentence-transformers computes for *texts* (the oracle)."""
        with quiet():
            return np.asarray(self.library.encode(texts, convert_to_numpy=True, batch_size=64, **kwargs), np.float32)


def build_variant(base: Path, out: Path, v: Variant) -> STModel:
    """Assemble, save and complete (ONNX, config edits) one sentence-transformers package in *out*."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    with quiet():
        modules: list[Any] = [Transformer(str(base / "hf")),
                              Pooling(HIDDEN, pooling_mode=v.modes if len(v.modes) > 1 else v.modes[0],
                                      include_prompt=v.include_prompt)]
        width = HIDDEN * len(v.modes)
        for i, activation in enumerate(v.dense):
            torch.manual_seed(1 + i)
            features = (16, 8)[i % 2]
            modules.append(Dense(width, features, bias=i % 2 == 0,
                                 activation_function=getattr(torch.nn, activation)()))
            width = features
        if v.normalize:
            modules.append(Normalize())
        st = SentenceTransformer(modules=modules, device="cpu", prompts=v.prompts or None,
                                 default_prompt_name=v.default_prompt_name)
        st.save(str(out))
    sbert_file = out / "sentence_bert_config.json"
    sbert = json.loads(sbert_file.read_text()) if sbert_file.exists() else {}
    if v.max_seq_length is not None:
        sbert["max_seq_length"] = v.max_seq_length
    if v.do_lower_case:
        sbert["do_lower_case"] = True
    sbert_file.write_text(json.dumps(sbert, indent=2))
    if v.legacy_pooling_config:
        pooling_file = out / "1_Pooling" / "config.json"
        cfg = json.loads(pooling_file.read_text())
        modes = cfg.pop("pooling_mode")
        modes = [modes] if isinstance(modes, str) else modes
        flags = {"cls_token": "cls", "max_tokens": "max", "mean_tokens": "mean",
                 "mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "weightedmean_tokens": "weightedmean",
                 "lasttoken": "lasttoken"}
        cfg = {"word_embedding_dimension": cfg.pop("embedding_dimension"), **cfg,
               **{f"pooling_mode_{k}": mode in modes for k, mode in flags.items()}}
        pooling_file.write_text(json.dumps(cfg, indent=2))
    target = out / "onnx" / "model.onnx" if v.onnx_subdir else out / "model.onnx"
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(base / "model.onnx", target)
    return STModel(out, v)


# What the tests run every variant on.
SHORT = ["hello world", "the quick brown fox"]
LONG = " ".join(["The quick brown fox jumps over the lazy dog near the river bank"] * 6)
MULTILINGUAL = "Grüße aus Köln 😀 中文 日本語 한국어 🚀 naïve café ÉCOLE"
MIXED = ["a", LONG, MULTILINGUAL, "Hello World, this is a Search Query!", "fox"]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def assert_same_embeddings(got: Any, expected: np.ndarray) -> None:
    """The library's numbers: 1e-5 relative (1e-6 absolute near zero) and cosine > 0.9999 per row."""
    got = np.asarray(got, np.float32)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert (cosine_rows(got, expected) > 0.9999).all()


PROMPTS = {"query": "query: ", "passage": "passage: "}

# name -> configuration; every pooling mode with and without Normalize, truncation by
# max_seq_length on some, lower-casing, concatenated modes, the older config format, prompts.
VARIANTS: dict[str, Variant] = {
    "cls": Variant(("cls",)),
    "cls-norm": Variant(("cls",), normalize=True, max_seq_length=12),
    "mean": Variant(("mean",), onnx_subdir=True),
    "mean-norm": Variant(("mean",), normalize=True, max_seq_length=12, do_lower_case=True),
    "max": Variant(("max",), max_seq_length=12),
    "max-norm": Variant(("max",), normalize=True),
    "sqrt": Variant(("mean_sqrt_len_tokens",)),
    "sqrt-norm": Variant(("mean_sqrt_len_tokens",), normalize=True, do_lower_case=True),
    "weighted": Variant(("weightedmean",), max_seq_length=20),
    "weighted-norm": Variant(("weightedmean",), normalize=True),
    "last": Variant(("lasttoken",)),
    "last-norm": Variant(("lasttoken",), normalize=True, max_seq_length=12),
    "concat": Variant(("mean", "cls", "max"), normalize=True),
    "legacy": Variant(("mean", "cls"), legacy_pooling_config=True),  # flags: cls, then mean
    "prompts": Variant(("mean",), normalize=True, prompts=PROMPTS, default_prompt_name="query"),
    "dense": Variant(("mean",), dense=("Tanh",), normalize=True),
    "dense2": Variant(("cls", "max"), dense=("GELU", "Identity")),
    "dense-relu": Variant(("lasttoken",), dense=("ReLU", "Sigmoid"), normalize=True, max_seq_length=12),
    "prompts-excluded": Variant(("cls", "mean", "lasttoken"), include_prompt=False, prompts=PROMPTS,
                                max_seq_length=16),
}


def build_all(root: Path) -> dict[str, STModel]:
    """Every variant under *root* (built once; a later call with the same root reuses them)."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".done").exists():
            base = build_base(root / "base")
            for name, v in VARIANTS.items():
                shutil.rmtree(root / name, ignore_errors=True)
                build_variant(base, root / name, v)
            build_variant(base, root / "dense-softsign", Variant(("mean",), dense=("Softsign",)))
            (root / ".done").write_text("ok")
    return {name: STModel(root / name, v) for name, v in VARIANTS.items()}
