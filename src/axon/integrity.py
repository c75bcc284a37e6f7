"""Hash package trees and verify them against their manifest."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from axon.errors import IntegrityError
from axon.fastio import FileDigest, hash_files
from axon.layout import MANIFEST_NAME
from axon.manifest import FileEntry, Manifest

__all__ = ["Problem", "VerifyReport", "hash_paths", "list_package_files", "verify_version_dir"]

# Names axon writes next to a version's files that are not part of the package.
NON_PACKAGE_NAMES = frozenset({MANIFEST_NAME})
NON_PACKAGE_DIRS = frozenset({".axon"})


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    kind: str  # missing | size | sha256 | xxh3_128 | unexpected | not-a-file | unreadable
    expected: str = ""
    actual: str = ""

    def describe(self) -> str:
        if self.kind == "missing":
            return f"{self.path}: missing"
        if self.kind == "unexpected":
            return f"{self.path}: not listed in the manifest"
        if self.kind in ("not-a-file", "unreadable"):
            return f"{self.path}: {self.kind} ({self.actual})" if self.actual else f"{self.path}: {self.kind}"
        return f"{self.path}: {self.kind} mismatch (expected {self.expected}, got {self.actual})"


@dataclass(slots=True)
class VerifyReport:
    spec: str
    path: Path
    files_checked: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            first = self.problems[0]
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise IntegrityError(
                f"Integrity check failed for {self.spec!r}: {first.describe()}{more}.",
                path=first.path, expected=first.expected, actual=first.actual,
                hint=f"Reinstall it with: axon install {self.spec} --force",
            )


def list_package_files(version_dir: Path) -> list[str]:
    """Relative POSIX paths of every entry below *version_dir* except axon's own names."""
    out = []
    for dirpath, dirnames, filenames in os.walk(version_dir):
        rel_dir = os.path.relpath(dirpath, version_dir)
        dirnames[:] = sorted(d for d in dirnames if not (rel_dir == "." and d in NON_PACKAGE_DIRS))
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                out.append(os.path.normpath(os.path.join(rel_dir, d)))
                dirnames.remove(d)
        for name in sorted(filenames):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in NON_PACKAGE_NAMES:
                continue
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def hash_paths(
    paths: Iterable[Path], *, workers: int | None = None, progress: Callable[[int], object] | None = None,
    sha256: bool = True,
) -> list[FileDigest]:
    """Hash files in parallel (hashing and reads release the GIL); order follows *paths*."""
    return hash_files(list(paths), workers=workers or 0, progress=progress, sha256=sha256)


def verify_version_dir(
    version_dir: Path, manifest: Manifest, *, progress: Callable[[int], object] | None = None,
    check_sha256: bool = True,
) -> VerifyReport:
    """Re-hash every listed file and compare size, sha256 and xxh3-128 with the manifest.

    *check_sha256* false checks xxh3-128 alone (8x faster): enough to catch corruption, and
    publish re-checks sha256 on the copy it makes, so tampering cannot slip through.
    """
    report = VerifyReport(manifest.spec_text, version_dir)
    present: list[FileEntry] = []
    for entry in manifest.files:
        p = version_dir / entry.path
        try:
            st = p.lstat()
        except FileNotFoundError:
            report.problems.append(Problem(entry.path, "missing"))
            continue
        except OSError as exc:
            report.problems.append(Problem(entry.path, "unreadable", actual=exc.strerror or str(exc)))
            continue
        if not stat.S_ISREG(st.st_mode):
            report.problems.append(Problem(entry.path, "not-a-file", actual="symlink" if stat.S_ISLNK(st.st_mode)
                                           else "not a regular file"))
            continue
        if st.st_size != entry.size:
            report.problems.append(Problem(entry.path, "size", str(entry.size), str(st.st_size)))
            continue
        present.append(entry)
    listed = {e.path for e in manifest.files}
    for rel in list_package_files(version_dir):
        if rel not in listed:
            report.problems.append(Problem(rel, "unexpected"))
    try:
        digests = hash_paths([version_dir / e.path for e in present], progress=progress, sha256=check_sha256)
    except PermissionError as exc:
        report.problems.append(Problem(str(exc.filename), "unreadable", actual="permission denied"))
        return report
    for entry, digest in zip(present, digests, strict=True):
        report.files_checked += 1
        report.bytes_checked += digest.size
        if digest.xxh3_128 != entry.xxh3_128:
            report.problems.append(Problem(entry.path, "xxh3_128", entry.xxh3_128, digest.xxh3_128))
        elif check_sha256 and digest.sha256 != entry.sha256:
            report.problems.append(Problem(entry.path, "sha256", entry.sha256, digest.sha256))
    return report
