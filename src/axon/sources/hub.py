"""Install from the Hugging Face Hub through the real ``huggingface_hub`` client.

huggingface_hub checks only sizes; we verify every LFS file's sha256 (and every small file's
git blob id) against the Hub's metadata while the bytes stream in, and refuse a mismatch.
"""

from __future__ import annotations

import errno
import os
import shutil
import urllib.error
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from axon.errors import DiskFullError, InvalidModelError, PermissionDeniedError, SourceError
from axon.reporting import Reporter, WholeTask
from axon.sources.base import AUX_FILES, FetchResult, HashingWriter, PartialDownload, check_digest, disk_full
from axon.sources.ranged import DEFAULT_CONNECTIONS, NETWORK_ERRORS, RANGED_ABOVE, Probe, fetch_ranged, probe
from axon.store.blobs import BlobStore
from axon.store.fastio import FileDigest

__all__ = ["ONNX_CANDIDATES", "HubSource"]

ONNX_CANDIDATES = ("model.onnx", "onnx/model.onnx")
SMALL_AT_ONCE = 8  # small files fetched concurrently (each is mostly a round trip)


@dataclass(frozen=True, slots=True)
class _RemoteFile:
    path: str
    size: int | None
    sha256: str | None  # LFS files
    blob_id: str | None  # git blob sha1 of small files


class HubSource:
    kind = "hf"

    def __init__(self, repo_id: str, revision: str, downloads_dir: Path, *, endpoint: str | None,
                 token: str | None, entrypoint: str | None = None, export: bool = False,
                 connections: int = DEFAULT_CONNECTIONS, ranged_above: int = RANGED_ABOVE,
                 part_bytes: int | None = None, blobs: BlobStore | None = None) -> None:
        self.blobs = blobs  # files already stored by sha256 (or git blob id) are placed, not fetched
        self.connections = connections  # a large file's parts at once (1: one stream)
        self.ranged_above = ranged_above
        self.part_bytes = part_bytes  # None: about four parts per connection
        self.export = export  # fetch the safetensors checkpoint (to export), not an ONNX file
        self.repo_id = repo_id
        self.revision = revision
        self.downloads_dir = downloads_dir
        self.endpoint = endpoint
        self.token = token
        self.entrypoint = entrypoint

    def describe(self) -> str:
        return f"{self.repo_id}@{self.revision}"

    # --- errors ---------------------------------------------------------------------------

    def _translate(self, exc: Exception) -> Exception:
        from huggingface_hub import errors as hf_errors

        where = self.endpoint or "https://huggingface.co"
        if isinstance(exc, hf_errors.GatedRepoError):
            return PermissionDeniedError(
                f"Hub repo {self.repo_id!r} is gated: access needs an accepted licence and a token.",
                hint="Accept the terms on the model page, then export HF_TOKEN=<your token> and run again.")
        if isinstance(exc, hf_errors.RepositoryNotFoundError):
            return SourceError(
                f"Hub repo {self.repo_id!r} was not found at {where} (or it is private).",
                hint="Check the name; for a private repo export HF_TOKEN=<your token>.")
        if isinstance(exc, hf_errors.RevisionNotFoundError):
            return SourceError(f"Revision {self.revision!r} of Hub repo {self.repo_id!r} does not exist.",
                               hint="Use a branch, tag or commit that exists (e.g. @main).")
        if isinstance(exc, hf_errors.EntryNotFoundError):
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            return SourceError(f"A file of Hub repo {self.repo_id!r} vanished during the download: {first_line}")
        if isinstance(exc, hf_errors.HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else "?"
            if status == 401:
                return PermissionDeniedError(f"The Hub refused access to {self.repo_id!r} (HTTP 401).",
                                             hint="Export HF_TOKEN=<a token with read access> and run again.")
            return SourceError(f"The Hub answered HTTP {status} for {self.repo_id!r}.",
                               hint="Try again later; partial downloads resume.")
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return disk_full(exc, self.downloads_dir)
        return SourceError(
            f"Cannot reach the Hub at {where}: {type(exc).__name__}: {exc}".splitlines()[0],
            hint="Check the network (or HF_ENDPOINT) and run the same command again; partial downloads resume.")

    # --- listing ---------------------------------------------------------------------------

    def _plan(self, siblings: list[Any]) -> tuple[str, list[_RemoteFile]]:
        files = {s.rfilename: _remote(s) for s in siblings}
        onnx_files = sorted(p for p in files if p.endswith(".onnx"))
        if self.export:
            from axon.export import is_weight_file

            weights = [files[p] for p in sorted(files) if is_weight_file(p)]
            if not weights:
                raise InvalidModelError(f"Hub repo {self.repo_id!r} has no model.safetensors to export.",
                                        hint="Only safetensors checkpoints are exported (pickled .bin files are "
                                        "not loaded).")
            return "", weights + [files[a] for a in AUX_FILES if a in files]
        if self.entrypoint:
            if self.entrypoint not in files:
                raise InvalidModelError(f"Hub repo {self.repo_id!r} has no file {self.entrypoint!r}.",
                                        hint=f"ONNX files there: {', '.join(onnx_files) or 'none'}")
            entry = self.entrypoint
        else:
            entry = next((c for c in ONNX_CANDIDATES if c in files), "")
            if not entry:
                if onnx_files:
                    raise InvalidModelError(
                        f"Hub repo {self.repo_id!r} has no model.onnx or onnx/model.onnx, but other ONNX files.",
                        hint=f"Pick one with --entrypoint (one of: {', '.join(onnx_files[:8])})")
                raise InvalidModelError(
                    f"Hub repo {self.repo_id!r} has no ONNX export (no model.onnx or onnx/model.onnx).",
                    hint=f"Export it on install: axon install hf/{self.repo_id} --export (needs the export "
                    "extra: pip install 'axon-mlos[export]')")
        chosen = [files[entry]] + [files[a] for a in AUX_FILES if a in files]
        # External weights next to the entrypoint (e.g. model.onnx_data) are added after parsing it.
        return entry, chosen

    def _model_info(self) -> Any:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            info = api.model_info(self.repo_id, revision=self.revision, files_metadata=True)
        except Exception as exc:
            raise self._translate(exc) from exc
        if not info.sha:
            raise SourceError(f"The Hub did not report a commit for {self.repo_id}@{self.revision}.")
        return info

    def resolve_commit(self) -> str:
        """The commit the revision points at now (one API call, nothing downloaded)."""
        return str(self._model_info().sha)

    def fetch(self, staging: Path, reporter: Reporter) -> FetchResult:
        reporter.stage(f"resolving {self.repo_id}@{self.revision}")
        info = self._model_info()
        commit = info.sha
        entry, planned = self._plan(list(info.siblings or []))
        known = self._to_fetch(planned)
        free = shutil.disk_usage(self.downloads_dir).free
        if known > free:
            raise DiskFullError(
                f"Not enough disk space for {self.repo_id}: {known} bytes needed, {free} free under "
                f"{str(self.downloads_dir)!r}.",
                hint="Free some space (axon cache gc) or point AXON_CACHE_DIR at a bigger disk.")
        by_path = {s.rfilename: s for s in info.siblings or []}
        result = FetchResult(
            source={"type": "hf", "repo": self.repo_id, "revision": self.revision, "commit": commit},
            entrypoint=entry,
            license=_card_license(info),
        )
        bar = WholeTask(reporter, f"{self.repo_id}@{commit[:8]}",
                        self._to_fetch(planned + _likely_external_data(entry, by_path, planned)))
        try:
            self._download_all(planned, commit, staging, result, bar)
            modules = [_remote(by_path[rel]) for rel in _module_files(staging, by_path) if rel not in result.digests]
            self._download_all(modules, commit, staging, result, bar)  # sentence-transformers: 1_Pooling/, 2_Dense/, …
            if not entry:  # --export: the ONNX file is made from the checkpoint after the download
                result.entrypoint = None
                return result
            from axon.model.onnx_signature import read_signature

            sig = read_signature(staging / entry)
            base = PurePosixPath(entry).parent
            external: list[_RemoteFile] = []
            for loc in sig.external_data:
                rel = str(base / loc) if str(base) != "." else loc
                if rel in result.digests or any(rf.path == rel for rf in external):
                    continue
                s = by_path.get(rel)
                if s is None:
                    raise InvalidModelError(f"{entry!r} in {self.repo_id!r} needs external data {rel!r}, "
                                            "which the repo does not have.")
                external.append(_remote(s))
            self._download_all(external, commit, staging, result, bar)
        finally:
            bar.close()
        if result.reused:
            reporter.stage(f"{len(result.reused)} file(s), {sum(d.size for d in result.reused.values())} bytes, "
                           "already in the cache: not downloaded again")
        return result

    def _to_fetch(self, files: list[_RemoteFile]) -> int:
        return sum(rf.size or 0 for rf in files if self._stored(rf) is None)

    def _stored(self, rf: _RemoteFile) -> FileDigest | None:
        """The blob store's copy of *rf* (by the Hub's sha256, or git blob id for small files)."""
        if self.blobs is None:
            return None
        if rf.sha256:
            return self.blobs.find(rf.sha256, rf.size)
        return self.blobs.find_git(rf.blob_id, rf.size)

    def _download_all(self, files: list[_RemoteFile], commit: str, staging: Path, result: FetchResult,
                      reporter: Reporter) -> None:
        """Large files one after another (each in parallel parts), small ones several at once."""
        small = [rf for rf in files if (rf.size or 0) < self.ranged_above or self.connections < 2]
        for rf in files:
            if rf not in small:
                self._download(rf, commit, staging, result, reporter)
        if len(small) <= 1 or self.connections < 2:
            for rf in small:
                self._download(rf, commit, staging, result, reporter)
            return
        with ThreadPoolExecutor(min(SMALL_AT_ONCE, len(small)), thread_name_prefix="axon-hub") as pool:
            futures = [pool.submit(self._download, rf, commit, staging, result, reporter) for rf in small]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    # --- one file ------------------------------------------------------------------------

    def _download(self, rf: _RemoteFile, commit: str, staging: Path, result: FetchResult,
                  reporter: Reporter) -> None:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        if rf.sha256 is None and rf.blob_id:
            result.git_ids[rf.path] = rf.blob_id
        stored = self._stored(rf)
        if stored is not None and self.blobs is not None:
            self.blobs.place(stored, staging / rf.path)
            result.digests[rf.path] = result.reused[rf.path] = stored
            return

        url = hf_hub_url(self.repo_id, rf.path, revision=commit, endpoint=self.endpoint)
        headers = self._auth_headers()
        try:
            meta = get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint, retry_on_errors=True)
        except Exception as exc:
            raise self._translate(exc) from exc
        if meta.commit_hash and meta.commit_hash != commit:
            raise SourceError(f"The Hub served {rf.path!r} from commit {meta.commit_hash}, not {commit}.",
                              hint="The repo changed during the download; run the command again.")
        size = rf.size if rf.size is not None else meta.size
        expected_sha256 = rf.sha256
        if expected_sha256 and meta.etag and len(meta.etag) == 64 and meta.etag != expected_sha256:
            raise SourceError(f"The Hub's metadata for {rf.path!r} disagrees with itself "
                              f"(tree sha256 {expected_sha256}, ETag {meta.etag}).")
        key = f"hf--{self.repo_id.replace('/', '--')}--{commit[:16]}--{(rf.sha256 or rf.blob_id or rf.path)[:24]}"
        key = key.replace("/", "_")
        partial = PartialDownload(self.downloads_dir, key)
        validator = {"url": url, "sha256": rf.sha256, "blob_id": rf.blob_id, "size": size}
        found = self._parts_from(meta.location or url, headers, size, reporter)
        if found is not None:
            digest, writer = fetch_ranged(found, partial, validator, rf.path, reporter,
                                          headers=_headers_for(found.url, self.endpoint, headers),
                                          connections=self.connections, part_bytes=self.part_bytes, backoff_s=0.2,
                                          git_blob_size=size if rf.sha256 is None and rf.blob_id else None)
        else:
            digest, writer = self._fetch_stream(url, headers, partial, validator, rf, size, reporter)
        try:
            if size is not None and digest.size != size:
                check_digest(rf.path, "size", str(size), str(digest.size), self.describe())
            if rf.sha256:
                check_digest(rf.path, "sha256", rf.sha256, digest.sha256, self.describe())
            elif rf.blob_id and writer.sha1 is not None:
                check_digest(rf.path, "git blob id", rf.blob_id, writer.sha1.hexdigest(), self.describe())
        except Exception:
            partial.discard()
            raise
        partial.finish_into(staging / rf.path)
        result.digests[rf.path] = digest

    def _parts_from(self, location: str, headers: dict[str, str], size: int | None,
                    reporter: Reporter) -> Probe | None:
        """Where a large file's parts come from: the resolve URL's redirect target (the CDN),
        if it serves ranges of the size the Hub announced; else None (one stream)."""
        if size is None or size < self.ranged_above or self.connections < 2:
            return None
        try:
            found = probe(location, _headers_for(location, self.endpoint, headers))
        except NETWORK_ERRORS as exc:
            reporter.stage(f"no ranged download ({type(exc).__name__}); one stream")
            return None
        return found if found.ranges and found.size == size else None

    def _auth_headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # documented, not in __all__

        return dict(build_hf_headers(token=self.token))

    def _fetch_stream(self, url: str, headers: dict[str, str], partial: PartialDownload, validator: dict[str, Any],
                      rf: _RemoteFile, size: int | None, reporter: Reporter) -> tuple[FileDigest, HashingWriter]:
        from huggingface_hub.file_download import http_get

        with partial.open(validator) as (f, have):
            writer = HashingWriter(f, git_blob_size=size if rf.sha256 is None and rf.blob_id else None)
            if have:
                writer.absorb_existing()
            if size is not None and have > size:
                writer.seek(0)
                have = 0
            reporter.start(rf.path, size)
            reporter.advance(have)
            progress = _ReporterTqdm.bind(reporter)
            try:
                http_get(url, writer, resume_size=have, headers=headers, expected_size=size,  # type: ignore[arg-type]  # a file-like writer
                         displayed_filename=rf.path, tqdm_class=progress)
            except Exception as exc:
                raise self._translate(exc) from exc
            finally:
                reporter.finish()
            writer.flush()
            os.fsync(writer.fileno())
            return writer.digest(), writer


_MODULE_FILE_SUFFIXES = (".json", ".safetensors", ".txt")


def _remote(s: Any) -> _RemoteFile:
    """A listed sibling (``files_metadata=True``) as a file to fetch."""
    return _RemoteFile(s.rfilename, s.size if s.lfs is None else s.lfs.size, s.lfs.sha256 if s.lfs else None,
                       s.blob_id)


def _likely_external_data(entry: str, by_path: dict[str, Any], planned: list[_RemoteFile]) -> list[_RemoteFile]:
    """Siblings named after the entrypoint (``model.onnx_data``, ``model.onnx.data``): the external
    data the graph will name once read, counted in the progress bar's total from the start."""
    have = {rf.path for rf in planned}
    return [_remote(s) for name, s in by_path.items()
            if entry and name != entry and name.startswith(entry) and name not in have]


def _module_files(staging: Path, siblings: dict[str, Any]) -> list[str]:
    """The files of the modules ``modules.json`` lists in sub-directories (their configs and
    safetensors weights), so sentence-transformers' Pooling, Dense and Normalize arrive with the
    model; the install step reads them (and refuses what it does not implement)."""
    import json

    try:
        modules = json.loads((staging / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    prefixes = []
    for m in modules if isinstance(modules, list) else []:
        path = m.get("path") if isinstance(m, dict) else None
        if isinstance(path, str) and path.strip("/") and ".." not in path.split("/") and not path.startswith("/"):
            prefixes.append(path.strip("/") + "/")
    return sorted(name for name in siblings
                  if any(name.startswith(p) for p in prefixes) and name.endswith(_MODULE_FILE_SUFFIXES))


def _card_license(info: Any) -> str | None:
    card = getattr(info, "card_data", None) or getattr(info, "cardData", None)
    lic = None
    if card is not None:
        lic = card.get("license") if hasattr(card, "get") else getattr(card, "license", None)
    return str(lic) if lic else None


class _ReporterTqdm:
    """Minimal tqdm stand-in so huggingface_hub's progress lands in our reporter, not on stdout."""

    reporter: Reporter

    @classmethod
    def bind(cls, reporter: Reporter) -> type[_ReporterTqdm]:
        return type("_BoundReporterTqdm", (cls,), {"reporter": reporter})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.n = kwargs.get("initial", 0) or 0
        self.total = kwargs.get("total")

    def update(self, n: int | None = 1) -> None:
        if n:
            self.reporter.advance(n)
            self.n += n

    def close(self) -> None:
        pass

    def __enter__(self) -> _ReporterTqdm:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _headers_for(url: str, endpoint: str | None, headers: dict[str, str]) -> dict[str, str]:
    """*headers* for a request to *url*: the token only goes to the Hub itself, never to the CDN
    host a resolve URL redirects to (its signed URL is the credential there)."""
    hub = urllib.parse.urlsplit(endpoint or "https://huggingface.co").netloc
    if urllib.parse.urlsplit(url).netloc == hub:
        return dict(headers)
    return {k: v for k, v in headers.items() if k.lower() != "authorization"}
