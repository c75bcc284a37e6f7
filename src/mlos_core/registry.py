"""Registered models: verified, loaded, warmed up, batched; persisted across restarts."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from axon.errors import AxonError
from axon.model.classification import check_against_graph
from axon.model.inference import load_dense_layers
from axon.model.pooling import DenseLayer
from axon.store.atomic import atomic_write_text
from axon.store.deployment import Deployment, load_deployment, parse_deployment
from axon.store.manifest import Manifest
from axon.store.modes import CORE_FILE_MODE
from axon.store.pin import is_manifest_pin, pin_matches, published_as
from mlos_core.batching import Batcher, Pending
from mlos_core.errors import ApiError
from mlos_core.precision import PrecisionReport, int8_variant
from mlos_core.preprocessing import TextPipeline, postprocess
from mlos_core.repository import (
    Located,
    VerifiedModel,
    locate,
    locate_delivered,
    model_refusal,
    read_verified_model,
    verify_files,
)
from mlos_core.runtime import SessionInfo, create_session, warm_up
from mlos_core.settings import ServerSettings
from mlos_core.telemetry import Metrics
from mlos_core.tensors import RequestSchema

if TYPE_CHECKING:
    from axon.store.s3 import ObjectStore

__all__ = ["LoadedModel", "Registry"]

log = logging.getLogger("mlos_core.registry")


def count_tokens(items: list[Pending], feeds: dict[str, np.ndarray]) -> None:
    """Each text request's ``tokenized``: its rows' attention-mask sums (what usage reports count)."""
    mask = feeds.get("attention_mask")
    if mask is None or mask.ndim != 2:  # a model without a mask input: every position counts
        ids = next(iter(feeds.values()))
        mask = np.ones(ids.shape[:2], np.int64)
    start = 0
    for item in items:
        item.tokenized = int(mask[start:start + item.rows].sum())
        start += item.rows


@dataclass
class LoadedModel:
    located: Located
    session: SessionInfo
    text: TextPipeline | None
    batcher: Batcher
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    output_names: list[str] = field(default_factory=list)
    dense: tuple[DenseLayer, ...] = ()  # verified Dense weights (numpy pooling; fused graphs carry their own)
    max_request_inputs: int = 2048  # texts one request may send (split into batches of max_batch_size)
    sha256_verified: bool = False  # every file checked against its sha256 too (a manifest-digest pin)
    precision: PrecisionReport = field(default_factory=lambda: PrecisionReport("fp32", "fp32"))

    def __post_init__(self) -> None:
        self.output_names = [o.name for o in self.session.session.get_outputs()]

    @property
    def model_id(self) -> str:
        return str(self.located.spec)

    @property
    def manifest(self) -> Manifest:
        return self.located.manifest

    @functools.cached_property
    def schema(self) -> RequestSchema:
        return RequestSchema(self.model_id, tuple(self.manifest.inputs),
                             self.text.max_length if self.text is not None else None, self.batcher.max_batch_size,
                             self.max_request_inputs, pairs=self.labels is not None)

    @functools.cached_property
    def labels(self) -> list[str] | None:
        """A classifier's or cross-encoder's labels, in id order (None: not one)."""
        post = self.manifest.postprocessing or {}
        if post.get("type") not in ("classification", "softmax"):
            return None
        labels = post.get("labels")
        return [str(x) for x in labels] if isinstance(labels, list) else []

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "model_id": self.model_id, "state": "ready", "digest": m.digest, "manifest_digest": m.manifest_digest,
            "verification": "sha256+xxh3_128" if self.sha256_verified else "xxh3_128",
            "path": str(self.located.version_dir),
            "provider": self.session.provider, "runtime_notes": self.session.note or None,
            "precision": self.precision.to_dict(),
            "inputs": [t.to_dict() for t in m.inputs], "outputs": [t.to_dict() for t in m.outputs],
            "text_input": self.text is not None,
            "postprocessing": (m.postprocessing or {}).get("type"),
            "queue_depth": self.batcher.depth, "loaded_at": self.loaded_at, "load_seconds": round(self.load_seconds, 3),
        }

    # Runs on the batcher's worker thread.
    def run_batch(self, items: list[Pending]) -> list[dict[str, np.ndarray]]:
        prompt_length: int | None = None
        if items[0].texts is not None:
            if self.text is None:  # the handlers only queue text for text models
                raise ApiError(400, "not_a_text_model", f"model {self.model_id!r} takes tensors, not text")
            # Requests batch together only with the same prompt (their keys hold it), as
            # sentence-transformers encodes a batch with one prompt; none named: the default.
            key = items[0].key
            prompt = None if key[0] == "pairs" else \
                self.text.resolve_prompt(key[2] if key[1:2] == ("prompt",) else None,
                                         key[2] if key[1:2] == ("prompt_name",) else None)
            feeds = self.text.encode([t for item in items for t in (item.texts or [])], prompt)
            prompt_length = self.text.prompt_length(prompt) if prompt else None
            count_tokens(items, feeds)
        else:
            tensors = [item.tensors for item in items if item.tensors is not None]  # a tensor batch: all of them
            feeds = {n: np.concatenate([t[n] for t in tensors], axis=0) for n in tensors[0]}
        available = self.output_names
        wanted: set[str] | None = None
        if all(item.outputs is not None for item in items):
            wanted = {name for item in items for name in item.outputs or ()}
        names = available
        if wanted is not None and "embeddings" in available and wanted <= {"embeddings"}:
            names = ["embeddings"]  # only the pooled rows leave the device
        raw = self.session.session.run(names, feeds)
        outputs = dict(zip(names, raw, strict=True))
        outputs.update(postprocess(self.manifest.postprocessing, outputs, feeds, prompt_length=prompt_length,
                                   dense=self.dense))
        results = []
        start = 0
        for item in items:
            stop = start + item.rows
            results.append({k: v[start:stop] for k, v in outputs.items()})
            start = stop
        return results


def _why(exc: Exception) -> str:
    """One line for the failures list; anything but an ApiError also leaves its traceback at debug level."""
    if isinstance(exc, ApiError):
        return exc.message
    log.debug("loading a saved registration failed", exc_info=exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


Stamp = tuple[int, int, int]  # (st_ino, st_size, st_mtime_ns) of the registrations file; (0, 0, 0) when absent


class Registry:
    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}
        # Saved registrations that could not be loaded: id (or the registrations file itself) -> why.
        self.failed: dict[str, str] = {}
        self._failed_at: dict[str, Stamp] = {}  # the registrations file as it was when the load failed
        self._locks: dict[str, asyncio.Lock] = {}
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        # With a deployment file, it is the registrations file: read-only here, the served set.
        self.state_file = settings.deployment or settings.state_dir / "registrations.json"
        self._saved: tuple[Stamp, list[str], str | None] | None = None
        self._deployed: tuple[Stamp, Deployment | AxonError] | None = None
        self._store: ObjectStore | None = None  # an s3:// repository's client, made on first use
        self._registering: dict[str, int] = {}  # model ids being fetched and loaded now: never evicted

    def get(self, model_id: str) -> LoadedModel:
        model = self.models.get(model_id)
        if model is None:
            raise ApiError(404, "model_not_found", f"model {model_id!r} is not registered "
                           "(register it: axon register SPEC)")
        return model

    def find(self, name: str, version: str | None = None) -> LoadedModel:
        """``name@version`` when a version is given, else the version of *name* registered last.
        With --model-name, that name is the served model's too (KServe's clients use it)."""
        name = self.canonical(name)
        if version:
            return self.get(f"{name}@{version}")
        candidates = [m for key, m in self.models.items() if key.rsplit("@", 1)[0] == name]
        if not candidates:
            raise ApiError(404, "model_not_found", f"model {name!r} is not registered")
        return max(candidates, key=lambda m: m.loaded_at)

    def canonical(self, name: str) -> str:
        """*name*, or the served model's ``ns/name`` when *name* is the --model-name alias."""
        if self.settings.model_name is not None and name == self.settings.model_name:
            served = self.saved_models()
            if served:
                return served[0].rsplit("@", 1)[0]
        return name

    async def resolve(self, model_id: str) -> LoadedModel:
        """Like get, but a model another worker registered a moment ago is loaded here first.

        A saved registration that failed to load is not retried per request (that would re-hash
        the whole model each time): it answers 503 until the registrations file changes (someone
        registered again) or an admin registers it here. Concurrent requests share one load.
        With --model-name, ``<that name>@<version>`` is the served model's id too."""
        name, at, version = model_id.rpartition("@")
        if at:
            model_id = f"{self.canonical(name)}@{version}"
        model = self.models.get(model_id)
        if model is not None:
            return model
        stamp, (saved, _) = await asyncio.to_thread(self._saved_now)
        if model_id in self.failed and self._failed_at.get(model_id) == stamp:
            raise self._failed_error(model_id)
        if model_id not in saved:
            return self.get(model_id)
        loading = self._loading.get(model_id)
        if loading is None:
            loading = self._loading[model_id] = asyncio.ensure_future(self._load_saved(model_id, stamp))
            loading.add_done_callback(lambda _: self._loading.pop(model_id, None))
        return await asyncio.shield(loading)

    async def _load_saved(self, model_id: str, stamp: Stamp) -> LoadedModel:
        try:
            await self.register(model_id=model_id, persist=False)
        except Exception as exc:
            self._mark_failed(model_id, _why(exc), stamp)
            raise self._failed_error(model_id) from None
        return self.get(model_id)

    def _mark_failed(self, model_id: str, why: str, stamp: Stamp | None = None) -> None:
        self.failed[model_id] = why
        self._failed_at[model_id] = self._state_stamp() if stamp is None else stamp
        log.error("could not load saved registration %s: %s", model_id, why)

    def _failed_error(self, model_id: str) -> ApiError:
        fix = ("it is tried again every 30 s and whenever the deployment file changes (axon deploy SPEC)"
               if self.managed
               else "fix it, then register it again (axon register SPEC)")
        return ApiError(503, "model_failed", f"model {model_id!r} is registered but failed to load "
                        f"({self.failed[model_id]}); {fix}", headers={"Retry-After": "30"})

    def _lock(self, model_id: str) -> asyncio.Lock:
        return self._locks.setdefault(model_id, asyncio.Lock())

    def _rewrite(self, model: VerifiedModel, manifest: Manifest, dense: tuple[DenseLayer, ...] = ()
                 ) -> tuple[VerifiedModel, list[str]]:
        """fp16 and in-graph pooling, on the verified graph in memory (never on the published files).

        Pooling only appends nodes, so external weights stay where they are (served from memory);
        fp16 converts every weight, so a model with external data is inlined first (refused with
        a 400 when that would pass protobuf's 2 GiB limit)."""
        s = self.settings
        if not (s.fuse_postprocessing or s.precision == "fp16"):
            return model, []
        from axon.model.inference import inline_external_data
        from mlos_core.graph_opt import fuse_pooling, to_fp16

        notes = []
        if s.precision == "fp16":
            if model.files:
                try:
                    inline_external_data(model)
                except AxonError as exc:
                    raise ApiError(400, "fp16_unsupported", f"{manifest.spec_text!r}: --precision fp16 "
                                   f"converts the whole graph in memory and cannot here: {exc.message}") from None
            proto, how = to_fp16(model.proto)
            model.replace_proto(proto)
            notes.append(how)
        fused = fuse_pooling(model.proto, manifest, dense) if s.fuse_postprocessing else None
        if fused:
            model.replace_proto(model.proto)
            notes.append(f"{fused} in the graph")
        return model, notes

    def _build(self, located: Located, sha256: bool = False) -> LoadedModel:
        """Blocking: verify every file, create and warm the session (runs in a thread).

        The model (entrypoint + external data) is read once, into memory, verified there, and
        only those bytes reach onnxruntime; the other files are hashed in place (xxh3-128, and
        with *sha256* their sha256 too)."""
        t0 = time.perf_counter()
        root = self.settings.repository
        verified = read_verified_model(located, sha256=sha256)
        verify_files(root, located, already_verified=verified.paths, sha256=sha256)
        try:
            dense = load_dense_layers(located.version_dir, located.manifest, sha256=sha256)
        except AxonError as exc:
            raise model_refusal(exc, located.manifest.spec_text) from None
        verified, self_notes = self._rewrite(verified, located.manifest, dense)
        info = create_session(verified, self.settings.device, intra_op_threads=self.settings.session_threads,
                              intra_op_spinning=self.settings.intra_op_spinning)
        if self.settings.precision != "int8":
            del verified  # onnxruntime copied what it needs: one copy of the weights, not two
        try:
            check_against_graph(located.manifest.postprocessing,
                                {o.name: o.shape for o in info.session.get_outputs()})
        except AxonError as exc:
            raise model_refusal(exc, located.manifest.spec_text) from None
        info.note = "; ".join(n for n in (info.note, *self_notes) if n)
        text = None
        if located.manifest.preprocessing and located.manifest.preprocessing.get("type") == "tokenizer":
            text = TextPipeline(located.version_dir, located.manifest, sha256=sha256)
        precision = PrecisionReport(self.settings.precision, self.settings.precision)
        if self.settings.precision == "int8":
            info, precision = int8_variant(verified, info, located, text, dense, self.settings, sha256=sha256)
            del verified
        warm_up(info, located.manifest)
        model_id = str(located.spec)

        def observe(event: str, size: int = 0, compute_s: float = 0.0) -> None:
            if event == "batch":
                self.metrics.batch(model_id, size, compute_s)
            elif event == "timeout":
                self.metrics.request(model_id, "timeout", "deadline_exceeded")

        s = self.settings
        loaded = LoadedModel(located, info, text, None, dense=dense,  # type: ignore[arg-type]  # batcher: below
                             max_request_inputs=self.settings.max_request_inputs, sha256_verified=sha256,
                             precision=precision)
        loaded.batcher = Batcher(model_id, loaded.run_batch, max_batch_size=s.max_batch_size,
                                 max_queue_delay_s=s.max_queue_delay_ms / 1000, max_queue_size=s.max_queue_size,
                                 instances=s.instances, observe=observe, max_batch_tokens=s.max_batch_tokens)
        loaded.load_seconds = time.perf_counter() - t0
        log.info("loaded %s on %s in %.2fs%s", model_id, info.provider, loaded.load_seconds,
                 f" ({info.note})" if info.note else "")
        return loaded

    async def register(self, *, model_id: str | None = None, manifest_path: str | None = None,
                       digest: str | None = None, persist: bool = True) -> dict[str, Any]:
        """Verify, load and serve a published version. With *digest*, only a version whose manifest
        has exactly that digest (409 otherwise, nothing loaded), and the pin is saved with the
        registration, so a restart (or another worker) refuses a republished copy too."""
        if persist:
            self._refuse_if_managed()
        if self.settings.store is None:
            return await self._register(model_id, manifest_path, digest, persist)
        key = str(model_id)
        self._registering[key] = self._registering.get(key, 0) + 1
        in_use = await asyncio.to_thread(self._hold_in_use, model_id)
        try:
            await self._fetch(model_id, manifest_path, digest, persist)
            return await self._register(model_id, manifest_path, digest, persist)
        finally:
            if in_use is not None:
                os.close(in_use)
            self._registering[key] -= 1
            if not self._registering[key]:
                del self._registering[key]

    def _hold_in_use(self, model_id: str | None) -> int | None:
        """Blocking: the cache's in-use lock of *model_id* while it is fetched and loaded (other
        workers' evictions skip it); None for what is not a version (refused later, clearly)."""
        from axon.store.object_cache import hold_in_use
        from axon.store.spec import parse_spec

        try:
            return hold_in_use(self.settings.repository, parse_spec(str(model_id)))
        except (AxonError, OSError):
            return None

    async def _register(self, model_id: str | None, manifest_path: str | None, digest: str | None,
                        persist: bool) -> dict[str, Any]:
        located = await asyncio.to_thread(self._locate, model_id, manifest_path)
        key = str(located.spec)
        pin = digest if digest is not None or persist else await asyncio.to_thread(self._pin_of, key)
        self._refuse_unpinned(key, pin)
        if not pin_matches(located.manifest, pin):
            assert pin is not None
            raise ApiError(409, "digest_mismatch", f"{key!r} is published with digest "
                           f"{published_as(located.manifest, pin)}, not the pinned {pin}; it was republished "
                           "(--force) since it was pinned. Register the digest you mean to serve (axon register "
                           "SPEC --digest D)")
        sha256 = is_manifest_pin(pin)  # a manifest digest pinned: every file's sha256 checked too
        async with self._lock(key):
            current = self.models.get(key)
            if current is not None and current.manifest.manifest_digest == located.manifest.manifest_digest and (
                    current.sha256_verified or not sha256):  # a copy loaded on xxh3 alone is reloaded for a sha256 pin
                # The same manifest: a no-op, but the files are re-checked so damage is still caught,
                # and the pin given now (or its absence) is what the registration keeps.
                await asyncio.to_thread(verify_files, self.settings.repository, located, sha256=sha256)
                if persist:
                    await asyncio.to_thread(self._persist_change, add=key, pin=digest)
                return {**current.describe(), "status": "unchanged"}
            try:
                loaded = await asyncio.to_thread(self._build, located, sha256)
            except ApiError:
                raise
            except Exception as exc:  # onnxruntime refusing the graph, a warm-up that fails, ...
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                log.debug("loading %s failed", key, exc_info=True)
                raise ApiError(422, "model_load_failed", f"model {key!r} passed verification but could not be "
                               f"loaded: {type(exc).__name__}: {first[:300]}") from None
            loaded.batcher.start()
            self.models[key] = loaded  # new requests go to the new copy from here on
            self.failed.pop(key, None)
            self._failed_at.pop(key, None)
            if persist:
                await asyncio.to_thread(self._persist_change, add=key, pin=digest)
            if current is not None:
                await current.batcher.close()  # in-flight requests on the old copy finish first
                return {**loaded.describe(), "status": "reloaded"}
            return {**loaded.describe(), "status": "registered"}

    def _locate(self, model_id: str | None, manifest_path: str | None = None) -> Located:
        if self.settings.model_dir is not None:
            if manifest_path is not None:
                raise ApiError(400, "bad_request", "this server serves the one model in its --model-dir")
            return locate_delivered(self.settings.model_dir, model_id)
        return locate(self.settings.repository, model_id=model_id, manifest_path=manifest_path)

    def _refuse_unpinned(self, model_id: str, pin: str | None) -> None:
        """Under a deployment every model is pinned: none (the file changed or broke since its
        list was read) loads nothing rather than something unpinned."""
        if pin is None and self.managed:
            raise ApiError(409, "not_deployed", f"{model_id!r} has no pin in the deployment now (it changed, or it "
                           "does not parse); nothing was loaded")

    def _refuse_if_managed(self) -> None:
        if self.managed:
            where = f"the deployment file {str(self.settings.deployment)!r}" if self.settings.deployment else \
                "its deployment (Ray Serve)"
            raise ApiError(409, "managed_by_deployment", f"this server serves the models of {where}; change the "
                           "deployment file (axon deploy / undeploy) and apply it, not this replica")

    async def unregister(self, model_id: str, *, persist: bool = True) -> dict[str, Any]:
        if persist:
            self._refuse_if_managed()
        async with self._lock(model_id):
            if model_id not in self.models and not (persist and model_id in await asyncio.to_thread(self.saved_models)):
                raise ApiError(404, "model_not_found", f"model {model_id!r} is not registered")
            if persist:  # first: until the file says so, a request would load the saved registration again
                await asyncio.to_thread(self._persist_change, remove=model_id)
                self.failed.pop(model_id, None)
                self._failed_at.pop(model_id, None)
            model = self.models.pop(model_id, None)
            if model is not None:
                await model.batcher.close()
            if self.settings.store is not None:
                await asyncio.to_thread(self._evict_unused, set(self.models) | set(self._registering))
        return {"status": "unregistered", "model_id": model_id}

    def _evict_unused(self, in_use: set[str]) -> None:
        """An s3:// repository: drop the local copies no registration (of any worker) uses and
        none of this worker's registrations in progress (*in_use*, with what it serves) needs."""
        from axon.store.object_cache import evict
        from axon.store.spec import parse_spec

        saved, error = self._read_saved()
        if error is not None:
            return  # a malformed registrations file: keep everything rather than guess what others use
        try:
            specs = [parse_spec(k) for k in in_use | set(saved)]
        except AxonError:
            return
        try:
            gone = evict(self.settings.repository, specs)
        except (AxonError, OSError) as exc:  # the copies stay; the unregistration itself is done
            log.warning("evicting unused copies from %s failed: %s", self.settings.repository,
                        getattr(exc, "message", None) or exc)
            return
        for spec in gone:
            log.info("evicted the local copy of %s (no registration uses it)", spec)

    def _state_stamp(self) -> Stamp:
        try:
            st = self.state_file.stat()
        except OSError:
            return (0, 0, 0)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _saved_at(self, stamp: Stamp) -> tuple[list[str], str | None]:
        """The saved model ids and, if the file is malformed, why: read once per version of the file."""
        saved = self._saved  # one read of the attribute: other threads may replace it meanwhile
        if saved is None or saved[0] != stamp:
            saved = self._saved = (stamp, *self._read_saved())
        return saved[1], saved[2]

    @property
    def managed(self) -> bool:
        """Whether a deployment, not admin calls, says what this server serves."""
        return self.settings.deployment is not None or self.settings.deployment_doc is not None

    def _deployment(self) -> Deployment:
        """The deployment this server serves: the file (read again when it changed: it is
        followed), or the document it was started with (Ray Serve: changes come as a rollout).
        One parse per version of the file serves both the model list and the pins."""
        stamp = self._state_stamp()
        cached = self._deployed  # one read of the attribute: other threads may replace it meanwhile
        if cached is None or cached[0] != stamp:
            try:
                if self.settings.deployment_doc is not None:
                    found: Deployment | AxonError = parse_deployment(yaml.safe_load(self.settings.deployment_doc),
                                                                     "(the Ray Serve deployment)")
                else:
                    assert self.settings.deployment is not None
                    found = load_deployment(self.settings.deployment)
            except AxonError as exc:
                found = exc
            cached = self._deployed = (stamp, found)
        if isinstance(cached[1], AxonError):
            raise cached[1].with_traceback(None)
        return cached[1]

    def _read_saved(self) -> tuple[list[str], str | None]:
        if self.managed:
            try:
                return [str(m.spec) for m in self._deployment().models], None
            except AxonError as exc:
                return [], exc.message
        try:
            data = json.loads(self.state_file.read_bytes())
        except FileNotFoundError:
            return [], None
        except (OSError, ValueError) as exc:
            return [], f"cannot read saved registrations: {str(exc).splitlines()[0]}"
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            return [], "saved registrations are malformed: expected {\"models\": [\"ns/name@version\", ...]}"
        ids = [m for m in models if isinstance(m, str)]
        bad = [m for m in models if not isinstance(m, str)]
        return ids, (f"saved registrations hold entries that are not model ids: {json.dumps(bad)[:200]}"
                     if bad else None)

    def saved_models(self) -> list[str]:
        return self._saved_at(self._state_stamp())[0]

    def _saved_now(self) -> tuple[Stamp, tuple[list[str], str | None]]:
        """Blocking (reads the file): the registrations file's stamp and what it says."""
        stamp = self._state_stamp()
        return stamp, self._saved_at(stamp)

    async def _fetch(self, model_id: str | None, manifest_path: str | None, digest: str | None,
                     persist: bool) -> None:
        """An s3:// repository: bring the version into the verified local cache (the repository
        the rest of registration reads), refusing a pinned digest that differs before any download."""
        from axon.errors import (
            BusyError,
            CacheConflictError,
            ConflictError,
            IntegrityError,
            NotACacheDirError,
            NotPublishedError,
            StoreError,
        )
        from axon.store.object_cache import fetch_version
        from axon.store.s3 import ObjectStore, S3Location
        from axon.store.spec import parse_spec

        if model_id is None or manifest_path is not None:
            raise ApiError(400, "bad_request", "with an s3:// repository, register a version by its model_id "
                           "(ns/name@version)")
        try:
            spec = parse_spec(model_id)
        except AxonError as exc:
            raise ApiError(400, "bad_model_id", str(exc)) from None
        pin = digest if digest is not None or persist else await asyncio.to_thread(self._pin_of, str(spec))
        self._refuse_unpinned(str(spec), pin)
        if self._store is None:
            assert self.settings.store is not None
            self._store = await asyncio.to_thread(ObjectStore, S3Location.parse(self.settings.store))
        try:
            await asyncio.to_thread(fetch_version, self._store, spec, self.settings.repository, digest=pin)
        except NotPublishedError as exc:
            raise ApiError(404, "not_published", exc.message) from None
        except IntegrityError as exc:
            code = "digest_mismatch" if pin is not None and exc.expected == pin else "integrity"
            raise ApiError(409, code, exc.message) from None
        except CacheConflictError as exc:
            raise ApiError(409, "cache_conflict", exc.message) from None
        except NotACacheDirError as exc:  # the cache directory is not one any more (its mark removed)
            log.error("fetching %s: %s", spec, exc.message)
            raise ApiError(503, "cache_unavailable", f"the server's local cache could not take {str(spec)!r} "
                           "(the server log says why)", headers={"Retry-After": "5"}) from None
        except (StoreError, ConflictError, BusyError) as exc:
            log.warning("fetching %s failed: %s", spec, exc.message)
            raise ApiError(503, "store_unavailable", f"{str(spec)!r} could not be fetched from the repository now; "
                           "retry shortly (the server log says why)", headers={"Retry-After": "5"}) from None
        except AxonError as exc:  # an invalid manifest in the store
            raise model_refusal(exc, spec) from None
        except OSError as exc:  # the local cache (disk full, permissions)
            log.error("the local cache %s failed while fetching %s: %s", self.settings.repository, spec, exc)
            raise ApiError(503, "cache_unavailable", f"the server's local cache could not take {str(spec)!r} "
                           "(the server log says why)", headers={"Retry-After": "5"}) from None

    def _read_pins(self) -> dict[str, str]:
        """The digests saved registrations are pinned to (the registrations file's ``pins``, or
        the deployment file's digests)."""
        if self.managed:
            try:
                return {str(m.spec): m.digest for m in self._deployment().models}
            except AxonError:
                return {}
        try:
            data = json.loads(self.state_file.read_bytes())
        except (OSError, ValueError):
            return {}
        pins = data.get("pins") if isinstance(data, dict) else None
        return {k: v for k, v in pins.items() if isinstance(k, str) and isinstance(v, str)} \
            if isinstance(pins, dict) else {}

    def _pin_of(self, model_id: str) -> str | None:
        return self._read_pins().get(model_id)

    def saved_pin(self, model_id: str) -> str | None:
        """Blocking: the digest the saved registration of *model_id* is pinned to, if any."""
        return self._pin_of(model_id)

    def _persist_change(self, *, add: str | None = None, remove: str | None = None, pin: str | None = None) -> None:
        """Read-modify-write of the registrations file under a lock: workers share it."""
        import fcntl
        import os

        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.settings.state_dir / "registrations.lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC,
                     CORE_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            models = set(self._read_saved()[0])  # the file itself, never a cached read of it
            pins = {m: p for m, p in self._read_pins().items() if m in models}
            if add:
                models.add(add)
                pins.pop(add, None)  # a registration without a digest replaces an earlier pin
                if pin is not None:
                    pins[add] = pin
            if remove:
                models.discard(remove)
                pins.pop(remove, None)
            state: dict[str, Any] = {"models": sorted(models)}
            if pins:
                state["pins"] = dict(sorted(pins.items()))
            text = json.dumps(state, indent=2) + "\n"
            atomic_write_text(self.state_file, text, mode=CORE_FILE_MODE)
        finally:
            os.close(fd)

    async def sync_from_state(self) -> None:
        """Load what the registrations file lists and unload what it no longer does (other workers).
        A model that failed to load is retried only once the file has changed since."""
        stamp, (listed, error) = await asyncio.to_thread(self._saved_now)
        if error is not None:  # a file half-edited or mistyped: keep serving what is loaded, and say why
            self._note_state_error(stamp)
            return
        saved = set(listed)
        for model_id in sorted(saved - set(self.models)):
            if model_id in self.failed and self._failed_at.get(model_id) == stamp:
                continue
            try:
                await self.register(model_id=model_id, persist=False)
            except Exception as exc:
                self._mark_failed(model_id, _why(exc), stamp)
        for model_id in sorted(saved & set(self.models)):  # pinned or reloaded since (another worker)
            pin = await asyncio.to_thread(self._pin_of, model_id)
            loaded = self.models.get(model_id)
            if loaded is None or (pin_matches(loaded.manifest, pin) and (loaded.sha256_verified or
                                                                        not is_manifest_pin(pin))
                                  and await asyncio.to_thread(self._still_published, loaded)):
                continue
            try:
                await self.register(model_id=model_id, persist=False)
            except Exception as exc:
                await self.unregister(model_id, persist=False)
                self._mark_failed(model_id, _why(exc), stamp)
        for model_id in sorted(set(self.models) - saved):
            await self.unregister(model_id, persist=False)
        for model_id in list(self.failed):
            if model_id not in saved:
                self.failed.pop(model_id, None)
                self._failed_at.pop(model_id, None)
        self._note_state_error(stamp)

    def _still_published(self, loaded: LoadedModel) -> bool:
        """Whether the repository (or the local cache of an s3:// one) still holds the manifest
        *loaded* was built from, byte for byte (not: another worker reloaded a republished copy)."""
        try:
            located = self._locate(loaded.model_id)
        except ApiError:
            return False
        return located.manifest.manifest_digest == loaded.manifest.manifest_digest

    def _note_state_error(self, stamp: Stamp) -> None:
        """A malformed registrations file is listed among the failures (as the file's path)."""
        error = self._saved_at(stamp)[1]
        key = str(self.state_file)
        if error is None:
            self.failed.pop(key, None)
        elif self.failed.get(key) != error:
            self.failed[key] = error
            log.error("%s: %s", key, error)

    async def watch_state(self, interval_s: float = 0.5, retry_s: float = 30.0) -> None:
        last = None
        managed = self.settings.deployment is not None  # a file to follow (a Ray replica's document is fixed)
        retried = time.monotonic()
        while True:
            stamp = await asyncio.to_thread(self._state_stamp)
            if managed and time.monotonic() - retried > retry_s and any(k in self._failed_at for k in self.failed):
                # Under a deployment nobody registers by hand: a model that failed (a store down,
                # a cache full) is tried again now and then, not only when the file changes.
                retried = time.monotonic()
                self._failed_at.clear()
                last = None
            if stamp != last:
                last = stamp
                try:
                    await self.sync_from_state()
                except Exception:
                    log.exception("syncing registrations failed")
            await asyncio.sleep(interval_s)

    async def restore(self) -> None:
        """Re-register (and so re-verify) what was registered before the restart. Nothing saved
        stops the server from starting: what cannot be loaded is listed as failed (/models, /ready)."""
        stamp, (saved, _) = await asyncio.to_thread(self._saved_now)
        self._note_state_error(stamp)
        for model_id in saved:
            try:
                await self.register(model_id=model_id, persist=False)
            except Exception as exc:
                self._mark_failed(model_id, _why(exc), stamp)

    async def close(self) -> None:
        for model in list(self.models.values()):
            await model.batcher.close()
