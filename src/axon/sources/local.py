"""Install from a local ``.onnx`` file or a model directory."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import yaml

from axon.errors import InvalidModelError, SourceError, UsageError
from axon.reporting import Reporter
from axon.sources.base import FetchResult, disk_full
from axon.store.fastio import FileDigest, copy_files, is_within
from axon.store.layout import MANIFEST_NAME

__all__ = ["LocalSource"]

SKIP_DIRS = frozenset({".git", ".cache", "__pycache__", ".axon", ".ipynb_checkpoints"})


class LocalSource:
    kind = "local"

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()

    def describe(self) -> str:
        return str(self.path)

    def _collect(self) -> list[tuple[Path, str]]:
        root = self.path.resolve()
        if root.is_file():
            if root.suffix.lower() != ".onnx":
                raise InvalidModelError(f"File {str(self.path)!r} is not an .onnx file.",
                                        hint="Pass a .onnx file or a directory holding one.")
            return [(root, root.name)]
        files: list[tuple[Path, str]] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for d in list(dirnames):
                full = Path(dirpath, d)
                if full.is_symlink():
                    raise UsageError(f"Directory symlink {str(full)!r} inside the model directory is not supported.",
                                     hint="Replace it with the directory it points to.")
            for name in sorted(filenames):
                full = Path(dirpath, name)
                rel = full.relative_to(root).as_posix()
                if rel == MANIFEST_NAME:
                    continue
                if full.is_symlink():
                    target = full.resolve()
                    if not is_within(root, full) or not target.is_file():
                        raise UsageError(
                            f"Symlink {rel!r} points outside the model directory ({str(target)!r}); refusing to "
                            "follow it.", hint="Copy the file into the model directory instead.")
                    full = target
                elif not full.is_file():
                    raise UsageError(f"{rel!r} in the model directory is not a regular file.")
                files.append((full, rel))
        return files

    def _bundled_manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST_NAME
        if not self.path.is_dir() or not path.is_file():
            return {}
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"Bundled manifest {str(path)!r} is not readable YAML: {exc}".splitlines()[0]) from exc
        return data if isinstance(data, dict) else {}

    def fetch(self, staging: Path, reporter: Reporter) -> FetchResult:
        if not self.path.exists():
            raise SourceError(f"Local path {str(self.path)!r} does not exist.",
                              hint="Check the path given to --from.")
        try:
            files = self._collect()
        except PermissionError as exc:
            raise SourceError(f"Cannot read {exc.filename!r}: permission denied.") from exc
        if not files:
            raise InvalidModelError(f"Directory {str(self.path)!r} holds no files.",
                                    hint="Pass a directory holding a .onnx model.")
        result = FetchResult(source={"type": "local", "path": str(self.path.resolve())})
        total = sum(src.stat().st_size for src, _ in files)
        reporter.start(f"copy {self.path.name}", total)
        try:
            for _, rel in files:
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            # Parallel kernel copies; each digest is of the copy, i.e. of what gets installed.
            copied = copy_files([(src, staging / rel) for src, rel in files], verify=True,
                                progress=reporter.advance)
            for (_, rel), row in zip(files, copied, strict=True):
                result.digests[rel] = FileDigest(row.size, str(row.sha256), str(row.xxh3_128))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(exc, staging) from exc
            if isinstance(exc, PermissionError):
                raise SourceError(f"Cannot read {exc.filename!r}: permission denied.") from exc
            raise
        finally:
            reporter.finish()
        bundled = self._bundled_manifest()
        meta = bundled.get("metadata") or {}
        spec = bundled.get("spec") or {}
        result.description = meta.get("description")
        result.license = meta.get("license")
        if isinstance(spec, dict):
            entry = (spec.get("format") or {}).get("entrypoint")
            if isinstance(entry, str):
                result.entrypoint = entry
            for key in ("preprocessing", "postprocessing", "requirements"):
                if isinstance(spec.get(key), dict):
                    result.extra[key] = spec[key]
        return result
