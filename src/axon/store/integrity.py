"""Hash package trees and verify them against their manifest."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from axon.errors import IntegrityError
from axon.store.fastio import FileDigest, hash_files, open_beneath
from axon.store.layout import MANIFEST_NAME
from axon.store.manifest import FileEntry, Manifest
from axon.store.nofollow import fd_path

__all__ = ["Problem", "VerifyReport", "hash_paths", "list_package_files", "mismatch", "verify_version_dir"]

# Names axon writes next to a version's files that are not part of the package.
NON_PACKAGE_NAMES = frozenset({MANIFEST_NAME})
NON_PACKAGE_DIRS = frozenset({".axon"})


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    kind: str  # missing | size | sha256 | xxh3_128 | unexpected | not-a-file | unreadable | unrecorded
    expected: str = ""
    actual: str = ""

    def describe(self) -> str:
        if self.kind == "missing":
            return f"{self.path}: missing"
        if self.kind == "unexpected":
            return f"{self.path}: not listed in the manifest"
        if self.kind == "unrecorded":
            return (f"{self.path}: digest {self.actual} is not the {self.expected} its last publish recorded "
                    "(changed in place after publishing)")
        if self.kind in ("not-a-file", "unreadable"):
            return f"{self.path}: {self.kind} ({self.actual})" if self.actual else f"{self.path}: {self.kind}"
        # The digest found is never shown: the file may be one the caller could not read itself
        # (a root verify or publish of a tree someone else controls).
        return f"{self.path}: {self.kind} mismatch (expected {self.expected})"


@dataclass(slots=True)
class VerifyReport:
    spec: str
    path: Path | str  # a version directory, or an object store's URL for it
    files_checked: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    published: bool = False  # a copy in the production repository (else the dev cache)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        """IntegrityError (exit 3) naming the first problem, with what repairs it: reinstalling a
        dev-cache copy, republishing a production one (``published``)."""
        if not self.problems:
            return
        first = self.problems[0]
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        if self.published:
            raise IntegrityError(f"The published copy of {self.spec!r} is damaged: {first.describe()}{more}.",
                                 hint=f"Restore it with: axon publish {self.spec} --force (from a verified dev "
                                 "cache copy)")
        raise IntegrityError(
            f"Integrity check failed for {self.spec!r}: {first.describe()}{more}.",
            path=first.path, expected=first.expected, actual=first.actual,
            hint=f"Reinstall it with: axon install {self.spec} --force",
        )


def mismatch(entry: FileEntry, digest: FileDigest, *, check_sha256: bool = True) -> Problem | None:
    """How bytes whose *digest* was taken differ from the manifest's *entry* (None: they match)."""
    if digest.size != entry.size:
        return Problem(entry.path, "size", str(entry.size), str(digest.size))
    if digest.xxh3_128 != entry.xxh3_128:
        return Problem(entry.path, "xxh3_128", entry.xxh3_128, digest.xxh3_128)
    if check_sha256 and digest.sha256 != entry.sha256:
        return Problem(entry.path, "sha256", entry.sha256, digest.sha256)
    return None


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
    check_sha256: bool = True, already_hashed: Collection[str] = (), report_unlisted: bool = True,
) -> VerifyReport:
    """Re-hash every listed file and compare size, sha256 and xxh3-128 with the manifest.

    Every file is opened beneath the version directory without following any symlink, and the
    hash reads that open file: a symlink swapped in after a check is refused, never followed.
    *check_sha256* false checks xxh3-128 alone (8x faster): enough to catch corruption. Files in
    *already_hashed* (their bytes were read and checked in memory by the caller) are opened and
    their type and size checked, but not hashed again. *report_unlisted*: files present but not
    listed are problems too.
    """
    report = VerifyReport(manifest.spec_text, version_dir)
    try:
        vfd = os.open(version_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW | O_DIRECTORY: a symlink or a file
            report.problems.append(Problem(".", "not-a-file", actual="not a directory (a symlink?)"))
        else:
            report.problems.append(Problem(".", "unreadable", actual=exc.strerror or str(exc)))
        return report
    try:
        listed = {e.path for e in manifest.files}
        for rel in list_package_files(version_dir) if report_unlisted else ():
            if rel not in listed:
                report.problems.append(Problem(rel, "unexpected"))
        for start in range(0, len(manifest.files), _FD_BATCH):
            _verify_batch(vfd, manifest.files[start:start + _FD_BATCH], report, progress, check_sha256,
                          already_hashed)
    finally:
        os.close(vfd)
    report.problems.sort(key=lambda p: (p.kind == "unexpected", p.path))
    return report


_FD_BATCH = 256  # files held open at once while hashing


def _verify_batch(vfd: int, entries: list[FileEntry], report: VerifyReport,
                  progress: Callable[[int], object] | None, check_sha256: bool, already_hashed: Collection[str]
                  ) -> None:
    opened: list[tuple[FileEntry, int]] = []
    try:
        for entry in entries:
            try:
                fd = open_beneath(vfd, entry.path, os.O_RDONLY | os.O_NONBLOCK, follow_symlinks=False)
            except FileNotFoundError:
                report.problems.append(Problem(entry.path, "missing"))
                continue
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EXDEV):
                    report.problems.append(Problem(entry.path, "not-a-file", actual="symlink"))
                elif exc.errno == errno.ENOTDIR:
                    report.problems.append(Problem(entry.path, "not-a-file", actual="a parent is not a directory"))
                else:
                    report.problems.append(Problem(entry.path, "unreadable", actual=exc.strerror or str(exc)))
                continue
            opened.append((entry, fd))
        present: list[tuple[FileEntry, int]] = []
        for entry, fd in opened:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                report.problems.append(Problem(entry.path, "not-a-file", actual="not a regular file"))
            elif st.st_size != entry.size:
                report.problems.append(Problem(entry.path, "size", str(entry.size), str(st.st_size)))
            elif entry.path in already_hashed:
                report.files_checked += 1
                report.bytes_checked += st.st_size
            else:
                present.append((entry, fd))
        by_path = {fd_path(fd): entry.path for entry, fd in present}
        try:
            digests = hash_paths([Path(p) for p in by_path], progress=progress, sha256=check_sha256)
        except OSError as exc:  # a read error, or no /proc to reopen the descriptors through
            where = by_path.get(str(exc.filename), str(exc.filename))
            report.problems.append(Problem(where, "unreadable", actual=exc.strerror or type(exc).__name__))
            return
        for (entry, _), digest in zip(present, digests, strict=True):
            report.files_checked += 1
            report.bytes_checked += digest.size
            if (problem := mismatch(entry, digest, check_sha256=check_sha256)) is not None:
                report.problems.append(problem)
    finally:
        for _, fd in opened:
            os.close(fd)
