"""Local inference on a package: the same tokenization and postprocessing MLOS Core applies.

MLOS Core imports this module (axon never imports mlos_core), so ``axon run``, ``axon test``,
``axon validate`` and the server agree on what a model's answer is.

Both load a model the same way, and never by path: the entrypoint and every external data file
its graph names are read through ``open_beneath`` into memory and checked (size, xxh3-128) there
(:func:`read_verified_model`); onnxruntime gets the serialized graph plus those in-memory files
(:func:`build_image`, :func:`create_ort_session`), so what was hashed is what loads, and nothing
is resolved against the process's working directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import math
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, cast

import numpy as np
import xxhash

from axon.errors import AxonError, IntegrityError, InvalidManifestError, InvalidModelError, UsageError
from axon.model import classification
from axon.model.onnx_signature import (
    ExternalDataOutsideError,
    ExternalRef,
    check_external_data,
    check_operator_domains,
    external_data_references,
    iter_tensors,
    parse_model,
    resolve_location,
)
from axon.model.pooling import DenseLayer, load_dense, pool, pooling_spec
from axon.store.dtypes import numpy_type
from axon.store.fastio import open_beneath
from axon.store.manifest import FileEntry, Manifest, TensorSpec

__all__ = [
    "LocalModel",
    "ModelImage",
    "TextEncoder",
    "VerifiedModel",
    "build_image",
    "create_ort_session",
    "inline_external_data",
    "load_dense_layers",
    "ort_failure",
    "postprocess",
    "read_verified_file",
    "read_verified_model",
    "synthesize_inputs",
]

PROTOBUF_LIMIT = (1 << 31) - 1  # a serialized ModelProto is at most this large
# Main-graph initializers smaller than this are inlined too: onnxruntime infers shapes before it
# injects in-memory external data, so constant inputs shape inference reads (Reshape's shape,
# Unsqueeze's axes, ...) must be in the graph. Weights are larger and stay in memory files.
INLINE_BELOW = 1 << 20

DEFAULT_MAX_LENGTH = 512

class TextEncoder:
    """Tokenizes a batch, padded to its longest sequence, into the model's named inputs.

    A sentence-transformers package's manifest also says how its text is prepared: lower-casing
    (``lowercase``: a Lowercase normalizer in front of the tokenizer's own, as the library adds
    it) and prompts (``prompts``, ``default_prompt_name``), prepended to every text of a batch.
    """

    def __init__(self, version_dir: Path, manifest: Manifest, *, sha256: bool = False) -> None:
        from tokenizers import Tokenizer

        pre = manifest.preprocessing or {}
        self.max_length = int(pre.get("max_length") or DEFAULT_MAX_LENGTH)
        rel = str(pre.get("tokenizer", "tokenizer.json"))
        entry = manifest.file(rel)
        if entry is None:
            raise InvalidManifestError(f"The manifest's tokenizer {rel!r} is not among its files.")
        prompts = pre.get("prompts") or {}
        default = pre.get("default_prompt_name")
        if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in prompts.items()):
            raise InvalidManifestError("Invalid manifest: preprocessing 'prompts' must map names to strings.")
        if default is not None and default not in prompts:
            raise InvalidManifestError(f"Invalid manifest: default_prompt_name {default!r} is not one of the prompts.")
        self.prompts: dict[str, str] = dict(prompts)
        self.default_prompt_name: str | None = default
        # Read once, beneath the version, and checked: the bytes hashed are the bytes parsed.
        self.tokenizer = Tokenizer.from_str(read_verified_file(version_dir, entry, sha256=sha256)
                                            .decode("utf-8", "replace"))
        if pre.get("lowercase"):
            _add_lowercase(self.tokenizer)
        self.tokenizer.enable_truncation(max_length=self.max_length)
        pad_token = "[PAD]" if self.tokenizer.token_to_id("[PAD]") is not None else "<pad>"
        pad_id = self.tokenizer.token_to_id(pad_token)
        self.tokenizer.enable_padding(pad_id=pad_id if pad_id is not None else 0, pad_token=pad_token)
        self.inputs = list(manifest.inputs)
        self._prompt_lengths: dict[str, int] = {}

    def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
        """The prompt a request gets: its own, the one it names, else the default (library order).

        Raises:
            UsageError: *prompt_name* is not one of the model's prompts, or both are given.
        """
        if prompt is not None and prompt_name is not None:
            raise UsageError("Give either a prompt or a prompt_name, not both.")
        if prompt is not None:
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise UsageError(f"Prompt name {prompt_name!r} is not one of the model's prompts "
                                 f"({', '.join(sorted(self.prompts)) or 'it has none'}).")
            return self.prompts[prompt_name]
        return self.prompts.get(self.default_prompt_name) if self.default_prompt_name is not None else None

    def prompt_length(self, prompt: str) -> int:
        """Tokens of *prompt* alone, less a trailing special token (sentence-transformers' count)."""
        n = self._prompt_lengths.get(prompt)
        if n is None:
            enc = self.tokenizer.encode(prompt)
            n = len(enc.ids) - (1 if enc.special_tokens_mask and enc.special_tokens_mask[-1] else 0)
            if len(self._prompt_lengths) < 1024:
                self._prompt_lengths[prompt] = n
        return n

    def encode(self, texts: Sequence[str | tuple[str, str]], prompt: str | None = None) -> dict[str, np.ndarray]:
        """The model's inputs for *texts*, each with *prompt* (already resolved) in front. A text
        pair (query, passage) is tokenized as a pair (both segments, their type ids, truncation
        from the longer one first), as a cross-encoder's library does."""
        if prompt:
            if any(not isinstance(t, str) for t in texts):
                raise UsageError("A prompt goes with single texts, not text pairs.")
            texts = [prompt + t for t in texts if isinstance(t, str)]  # all of them (checked above)
        encodings = self.tokenizer.encode_batch(list(texts))
        columns = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                   "token_type_ids": [e.type_ids for e in encodings]}
        feeds = {}
        for t in self.inputs:
            if t.name not in columns:
                raise UsageError(f"The model's input {t.name!r} cannot be made from text; give tensors instead.")
            feeds[t.name] = np.asarray(columns[t.name], dtype=numpy_type(t.dtype) or np.int64)
        return feeds


def _add_lowercase(tokenizer: Any) -> None:
    """A Lowercase normalizer in front, unless one is there (what sentence-transformers does for
    ``do_lower_case``)."""
    from tokenizers.normalizers import Lowercase, Sequence

    current = tokenizer.normalizer
    # A Sequence iterates over its normalizers (the stubs do not say so).
    chained = list(cast("Iterable[Any]", current)) if isinstance(current, Sequence) else None
    if isinstance(current, Lowercase) or (chained is not None and any(isinstance(n, Lowercase) for n in chained)):
        return
    rest = chained if chained is not None else ([current] if current is not None else [])
    tokenizer.normalizer = Sequence([Lowercase(), *rest])


def load_dense_layers(version_dir: Path, manifest: Manifest, *, sha256: bool = False) -> tuple[DenseLayer, ...]:
    """The verified weights of the Dense layers the manifest's pooling lists (none: empty; with
    *sha256*, checked against the sha256 as well as the xxh3-128).

    Raises:
        InvalidManifestError (a weights file not listed, or a sha256 that is not the listed one),
        IntegrityError (the file changed), InvalidModelError (not the shapes the layer says).
    """
    spec = pooling_spec(manifest.postprocessing)
    recorded = {d.get("weights"): d.get("sha256") for d in (manifest.postprocessing or {}).get("dense") or []
                if isinstance(d, dict)}

    def read(path: str) -> bytes:
        entry = manifest.file(path)
        if entry is None:
            raise InvalidManifestError(f"The manifest's Dense weights {path!r} are not among its files.")
        if recorded.get(path) not in (None, entry.sha256):
            raise InvalidManifestError(f"The manifest's Dense weights {path!r} name another sha256 than its file list.")
        return read_verified_file(version_dir, entry, sha256=sha256)

    return load_dense(spec, read)


def postprocess(spec: dict[str, Any] | None, outputs: dict[str, np.ndarray],
                feeds: dict[str, np.ndarray], *, prompt_length: int | None = None,
                dense: tuple[DenseLayer, ...] = ()) -> dict[str, np.ndarray]:
    """Extra outputs from the manifest's postprocessing (raw outputs are kept as they are).

    *prompt_length*: tokens of the prompt in front of every row, left out of pooling when the
    manifest says ``include_prompt: false``. *dense*: the verified layers of the pooling's
    ``dense`` list (:func:`load_dense_layers`).
    """
    if not spec or spec.get("type") in (None, "none"):
        return {}
    name = spec.get("output") or next(iter(outputs))
    pooling = pooling_spec(spec)
    if pooling is not None:
        if "embeddings" in outputs:  # already pooled inside the graph (MLOS Core's fused rewrite)
            return {}
        return {"embeddings": pool(outputs[name], feeds.get("attention_mask"), pooling, prompt_length=prompt_length,
                                   dense=dense)}
    if spec.get("type") == "embedding_output":  # the graph computes the sentence embedding itself
        return {"embeddings": outputs[name]}
    if spec.get("type") == "softmax":  # manifests written before "classification"
        return {"probabilities": classification.scores("softmax", outputs[name])}
    if spec.get("type") == "classification":
        function, _ = classification.check_spec(spec)
        logits = outputs[name]
        return {"scores": classification.scores(function, logits.reshape(len(logits), -1))}
    return {}


def synthesize_inputs(inputs: list[TensorSpec], batch: int = 1, seq: int = 8) -> dict[str, np.ndarray]:
    """Small valid inputs from the I/O schema: dynamic dims become *batch* (first) or *seq*."""
    feeds = {}
    for t in inputs:
        shape = [d if d > 0 else (batch if i == 0 else seq) for i, d in enumerate(t.shape)]
        dtype = numpy_type(t.dtype)
        if dtype is None:
            raise UsageError(f"Input {t.name!r} has dtype {t.dtype!r}, which cannot be synthesised.")
        kind = np.dtype(dtype).kind
        feeds[t.name] = np.ones(shape, dtype=dtype) if kind in "iub" else np.full(shape, 0.5, dtype=dtype)
    return feeds


# --- verified, in-memory loading -------------------------------------------------------------------


def read_verified_file(root: Path, entry: FileEntry, *, sha256: bool = False) -> bytes:
    """The bytes of *entry*, read through ``open_beneath(root, …)`` into memory, with the size and
    xxh3-128 (and with *sha256* the sha256 too) of those very bytes checked against the manifest.

    Raises:
        ExternalDataOutsideError: the path leads outside *root* (a symlink out, even one swapped in),
            or *root* itself is a symlink.
        IntegrityError: the file is missing, not a regular file, or its bytes do not match.
    """
    try:  # the root itself is not followed either: a version directory swapped for a symlink is refused
        rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fd = open_beneath(rootfd, entry.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        finally:
            os.close(rootfd)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.ELOOP) or (exc.errno == errno.ENOTDIR and os.path.islink(root)):
            raise ExternalDataOutsideError(f"File {entry.path!r} resolves outside {str(root)!r}; refusing it."
                                           ) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise IntegrityError(f"File {entry.path!r} of {str(root)!r} is missing.", path=entry.path) from None
        raise AxonError(f"Cannot read {entry.path!r} in {str(root)!r}: {exc.strerror}.") from None
    with io.FileIO(fd, "rb", closefd=True) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError(f"{entry.path!r} in {str(root)!r} is not a regular file.", path=entry.path)
        if st.st_size != entry.size:
            raise IntegrityError(f"File {entry.path!r} has {st.st_size} bytes, the manifest says {entry.size}.",
                                 path=entry.path, expected=str(entry.size), actual=str(st.st_size))
        data = f.readall()
    if len(data) != entry.size or xxhash.xxh3_128(data).hexdigest() != entry.xxh3_128 or (
            sha256 and hashlib.sha256(data).hexdigest() != entry.sha256):
        raise IntegrityError(f"File {entry.path!r} does not match its recorded hash (it changed after it was "
                             "installed or published, or while it was being read).", path=entry.path,
                             expected=entry.xxh3_128)
    return data


@dataclass
class VerifiedModel:
    """A package's model as verified bytes in memory: the parsed graph and its external files."""

    entrypoint: str
    proto: Any  # onnx.ModelProto, parsed from the verified entrypoint bytes (external data not loaded)
    data: bytes | None  # those bytes, while *proto* is unchanged (saves a serialization)
    files: dict[str, bytes] = field(default_factory=dict)  # external data files by package path, verified

    @property
    def paths(self) -> list[str]:
        """The package files this model was read (and verified) from."""
        return [self.entrypoint, *(p for p in self.files if p != self.entrypoint)]

    def replace_proto(self, proto: Any) -> None:
        """Record a rewrite of the graph (the original bytes no longer describe it)."""
        self.proto = proto
        self.data = None


def read_verified_model(version_dir: Path, manifest: Manifest, *, sha256: bool = False) -> VerifiedModel:
    """Read the entrypoint and every external data file its graph names, each verified in memory
    (with *sha256*, against the manifest's sha256 as well as its xxh3-128).

    Every tensor's external data (initializers, node attributes, subgraphs, sparse tensors, local
    functions) must name a file the manifest lists, relative to the entrypoint's directory, and
    every operator domain must be one onnxruntime provides.

    Raises:
        IntegrityError (a file missing or changed), ExternalDataOutsideError (a location or a
        symlink leads outside), UnsupportedOperatorError, InvalidModelError.
    """
    entry = manifest.file(manifest.entrypoint)
    name = PurePosixPath(manifest.entrypoint).name
    if entry is None:
        raise InvalidModelError(f"The manifest does not list its entrypoint {manifest.entrypoint!r}.")
    if entry.size > PROTOBUF_LIMIT:
        raise InvalidModelError(f"Model {manifest.entrypoint!r} is {entry.size} bytes, over protobuf's 2 GiB limit "
                                "for one .onnx file.", hint="Export the weights as external data.")
    data = read_verified_file(version_dir, entry, sha256=sha256)
    proto = parse_model(data, name)
    check_operator_domains(proto, name)
    listed = {f.path: f for f in manifest.files}
    files: dict[str, bytes] = {}
    for path in check_external_data(proto, manifest.entrypoint, listed):
        files[path] = data if path == manifest.entrypoint else read_verified_file(version_dir, listed[path],
                                                                                  sha256=sha256)
    return VerifiedModel(manifest.entrypoint, proto, data, files)


def _tensor_nbytes(tensor: Any) -> int | None:
    """Bytes of a tensor's raw data from its type and shape (None: not a fixed-size type)."""
    import onnx

    count = math.prod(tensor.dims)
    packed = {getattr(onnx.TensorProto, n, -1): per for n, per in
              (("INT4", 2), ("UINT4", 2), ("FLOAT4E2M1", 2), ("INT2", 4), ("UINT2", 4))}
    if tensor.data_type in packed:
        return int(-(-count // packed[tensor.data_type]))
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        return int(count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)
    except (KeyError, ValueError, TypeError):
        return None


def _resolved(model: VerifiedModel) -> Iterator[tuple[ExternalRef, bytes]]:
    """Each external reference of the (possibly rewritten) graph with the verified file it names."""
    name = PurePosixPath(model.entrypoint).name
    for ext in external_data_references(model.proto, name):
        if not ext.external:
            yield ext, b""
            continue
        path = resolve_location(model.entrypoint, ext.location)
        buf = model.files.get(path)
        if buf is None:
            raise InvalidModelError(f"Model {model.entrypoint!r} needs external data file {path!r} (location "
                                    f"{ext.location!r} of {ext.ref.where}), which was not verified.")
        length = ext.length if ext.length is not None else _tensor_nbytes(ext.ref.tensor)
        if length is None or ext.offset + length > len(buf):
            raise InvalidModelError(f"Model {model.entrypoint!r} reads {length} bytes at offset {ext.offset} of "
                                    f"{path!r} ({len(buf)} bytes) for {ext.ref.where}: out of bounds.")
        yield ext, buf


def _inline(ext: ExternalRef, buf: bytes) -> None:
    t = ext.ref.tensor
    if ext.external:
        length = ext.length if ext.length is not None else _tensor_nbytes(t)
        t.raw_data = buf[ext.offset:ext.offset + (length or 0)]
    del t.external_data[:]
    t.data_location = 0  # DEFAULT


def inline_external_data(model: VerifiedModel, *, everything: bool = True) -> None:
    """Copy external data into the graph itself: every tensor's, or (``everything=False``) all but
    the main graph's large dense initializers, which onnxruntime takes from in-memory files. It
    cannot for tensors in node attributes, subgraphs or sparse tensors, nor for constant inputs
    it reads while inferring shapes (see INLINE_BELOW), so those are inlined.

    Raises:
        InvalidModelError: the graph would exceed protobuf's 2 GiB limit.
    """
    changed = False
    for ext, buf in list(_resolved(model)):
        length = ext.length if ext.length is not None else _tensor_nbytes(ext.ref.tensor)
        if everything or not ext.ref.main_initializer or not ext.external or (length or 0) < INLINE_BELOW:
            _inline(ext, buf)
            changed = True
    if changed:
        model.replace_proto(model.proto)
        size = model.proto.ByteSize()
        if size > PROTOBUF_LIMIT:
            what = "its external data" if everything else "the external data it cannot serve from memory"
            raise InvalidModelError(
                f"Model {model.entrypoint!r} would be {size} bytes with {what} inlined, over protobuf's 2 GiB limit.",
                hint="Keep large weights in the main graph's initializers (onnx.save_model(..., "
                "save_as_external_data=True)).")
    if everything:
        model.files.clear()


@dataclass(frozen=True)
class ModelImage:
    """What onnxruntime gets: a serialized graph and the in-memory files its external data names."""

    data: bytes
    external: dict[str, bytes]  # location exactly as written in *data* -> verified bytes


def build_image(model: VerifiedModel) -> ModelImage:
    """Serialize *model* for onnxruntime: the main graph's external initializers name their files
    by a normalised location that is provided from memory; everything else external is inlined.

    Then, right before serializing, every tensor of the graph is checked again: the only external
    references left are main-graph initializers whose location is one of the in-memory files (so
    onnxruntime, loading from bytes, never resolves a location against the working directory).

    Raises:
        InvalidModelError: a reference cannot be served from the verified files.
    """
    inline_external_data(model, everything=False)
    external: dict[str, bytes] = {}
    for ext, buf in _resolved(model):
        t = ext.ref.tensor
        del t.external_data[:]
        for key, value in (("location", ext.location), ("offset", str(ext.offset)),
                           *((("length", str(ext.length)),) if ext.length is not None else ())):
            e = t.external_data.add()
            e.key, e.value = key, value
        external[ext.location] = buf
    if external:
        model.data = None
    for ref in iter_tensors(model.proto):  # the last word: exactly what onnxruntime will see
        t = ref.tensor
        if t.data_location == 1 or len(t.external_data):
            loc = [e.value for e in t.external_data if e.key == "location"]
            if not ref.main_initializer or t.data_location != 1 or len(loc) != 1 or loc[0] not in external:
                raise InvalidModelError(f"Model {model.entrypoint!r}: {ref.where} still names external data "
                                        f"{loc!r} that is not provided from memory; refusing to load it.")
    data = model.data if model.data is not None else model.proto.SerializeToString()
    return ModelImage(data, external)


def ort_failure(exc: BaseException) -> str:
    """The first line of onnxruntime's message (what went wrong, without its C++ context)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def create_ort_session(image: ModelImage, opts: Any, providers: list[str]) -> Any:
    """An onnxruntime session on *image*: bytes, never a path; external data only from memory.

    onnxruntime copies what it needs from the buffers while the session is created, so they can
    be dropped afterwards; *opts* still points at them and must not create another session (the
    session is made without onnxruntime's provider fallback, which would re-create it).
    """
    import onnxruntime as ort

    if image.external:
        names = list(image.external)
        buffers = [np.frombuffer(image.external[n], dtype=np.uint8) for n in names]
        opts.add_external_initializers_from_files_in_memory(names, buffers, [len(b) for b in buffers])
    return ort.InferenceSession(image.data, sess_options=opts, providers=providers, enable_fallback=0)


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or (device == "auto" and os.path.exists("/proc/driver/nvidia/version")
                            and "CUDAExecutionProvider" in ort.get_available_providers()):
        if hasattr(ort, "preload_dlls"):
            with contextlib.suppress(Exception):  # a failure shows in the provider actually chosen
                ort.preload_dlls()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _refused(manifest: Manifest, exc: BaseException) -> InvalidModelError:
    return InvalidModelError(f"onnxruntime cannot load {manifest.spec_text!r}: {ort_failure(exc)}",
                             hint="Check the export (python -m onnx.checker / onnxruntime) and reinstall it.")


class LocalModel:
    """An onnxruntime session on a package plus its text encoder and postprocessing."""

    def __init__(self, version_dir: Path, manifest: Manifest, *, device: str = "auto") -> None:
        """Load *manifest*'s model from *version_dir*, verified in memory (see the module docstring).

        Raises:
            IntegrityError (exit 3), InvalidModelError (exit 2: a bad reference, an unsupported
            domain, or onnxruntime refusing the graph), AxonError (CUDA asked for but unusable).
        """
        import onnxruntime as ort

        self.version_dir = version_dir
        self.manifest = manifest

        def session(providers: list[str]) -> Any:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            return create_ort_session(build_image(read_verified_model(version_dir, manifest)), opts, providers)

        providers = providers_for(device)
        try:
            self.session = session(providers)
        except AxonError:
            raise
        except Exception as exc:
            if providers[0] != "CUDAExecutionProvider":
                raise _refused(manifest, exc) from None
            try:  # did CUDA fail, or the model itself?
                self.session = session(["CPUExecutionProvider"])
            except AxonError:
                raise
            except Exception as cpu_exc:
                raise _refused(manifest, cpu_exc) from None
            if device == "cuda":
                raise AxonError(f"Device 'cuda' was asked for, but CUDA cannot run this model here "
                                f"({ort_failure(exc)}).", hint="Check the driver and CUDA libraries with: axon doctor"
                                ) from None
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            raise AxonError("Device 'cuda' was asked for, but CUDA cannot run this model here.",
                            hint="Check the driver and CUDA libraries with: axon doctor")
        pre = manifest.preprocessing or {}
        self.text = TextEncoder(version_dir, manifest) if pre.get("type") == "tokenizer" else None
        self.dense = load_dense_layers(version_dir, manifest)

    def run(self, *, texts: Sequence[str | tuple[str, str]] | None = None, tensors: dict[str, np.ndarray] | None = None,
            prompt: str | None = None, prompt_name: str | None = None) -> dict[str, np.ndarray]:
        """Outputs for *texts* (with the model's prompt: *prompt*, *prompt_name*, else its default)
        or for *tensors*, postprocessed as the manifest says."""
        prompt_length = None
        if texts is not None:
            if self.text is None:
                raise UsageError("This model takes tensors, not text.",
                                 hint="Use --input-file with JSON or .npz tensors")
            resolved = self.text.resolve_prompt(prompt, prompt_name)
            feeds = self.text.encode(texts, resolved)
            prompt_length = self.text.prompt_length(resolved) if resolved else None
        elif tensors is not None:
            feeds = tensors
        else:
            raise UsageError("Give text or tensors to run the model on.")
        raw = self.session.run(None, feeds)
        outputs = {t.name: a for t, a in zip(self.manifest.outputs, raw, strict=False)}
        outputs.update(postprocess(self.manifest.postprocessing, outputs, feeds, prompt_length=prompt_length,
                                   dense=self.dense))
        return outputs
