# cython: language_level=3
"""Native hot paths of axon: streaming hashes, kernel-side copies, containment checks.

Private: ``axon.store.fastio`` is the only importer. It owns argument checking, types, the
pure-Python reference that serves as the test oracle and the fallback, and the scheduling of
many files over threads; this module does the work of one file at a time.

Rules kept throughout (see docs/architecture.md):
* ``nogil`` covers only syscalls on C values; paths become C strings before, Python results
  are built after.
* A failed syscall: retry on EINTR, copy errno at once, close fds, raise
  ``OSError(errno, strerror, path)`` so Python picks the right subclass. Errnos that mean
  "not supported here" step down to the next copy method instead of raising.
* Between chunks the GIL is taken back to run signal handlers (Ctrl-C mid-file), check the
  shared cancel flag (``fastio.Cancel``: worker threads cannot see signals) and report progress.
"""

import hashlib
import os
import stat as _stat
import threading
from collections import deque
from queue import SimpleQueue

import xxhash

from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport errno
from libc.stdlib cimport free, malloc
from libc.string cimport strcmp, strlen, strncmp
from posix.fcntl cimport O_CLOEXEC, O_CREAT, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, open as c_open
from posix.stat cimport fstat, struct_stat
from posix.types cimport off_t
from posix.unistd cimport close, read

cdef extern from "errno.h":
    const int ENXIO

METHODS = ("reflink", "copy_file_range", "sendfile", "readwrite")
# A file this large is worth a second hashing thread and has its pages dropped behind the copy;
# fastio.py's scheduler counts large files with the same bound (a test checks they agree).
LARGE_FILE_BYTES = PIPELINE_MIN_BYTES


cdef inline object _oserror(int err, object path):
    return OSError(err, os.strerror(err), path)


cdef inline void _check(object cancel) except *:
    """Raise when *cancel* (a ``fastio.Cancel``, or anything with ``cancelled``) is set."""
    if cancel is not None and cancel.cancelled:
        raise KeyboardInterrupt("cancelled")
    PyErr_CheckSignals()


cdef int _open(bytes bpath, object path, int flags, int mode) except -1:
    cdef const char *cpath = bpath
    cdef int fd
    cdef int err
    while True:
        with nogil:
            fd = c_open(cpath, flags | O_CLOEXEC, mode)
            err = errno
        if fd >= 0:
            return fd
        if err != EINTR:
            raise _oserror(err, path)
        PyErr_CheckSignals()


cdef int _fstat(int fd, object path, struct_stat *st) except -1:
    cdef int rc
    cdef int err
    with nogil:
        rc = fstat(fd, st)
        err = errno
    if rc != 0:
        raise _oserror(err, path)
    return 0


cdef ssize_t _read_full(int fd, unsigned char *buf, size_t size, object path, off_t offset=-1) except -1:
    """Read until *size* bytes or EOF (from *offset* with pread when it is >= 0); returns bytes read."""
    cdef size_t done = 0
    cdef ssize_t n
    cdef int err
    while done < size:
        with nogil:
            if offset >= 0:
                n = pread(fd, buf + done, size - done, offset + <off_t>done)
            else:
                n = read(fd, buf + done, size - done)
            err = errno
        if n < 0:
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            raise _oserror(err, path)
        if n == 0:
            break
        done += n
    return done


# --- hashing ------------------------------------------------------------------------------


cdef tuple _hash_serial(int fd, object path, Py_ssize_t chunk_size, object progress, object cancel, bint want_sha):
    cdef bytearray buffer = bytearray(chunk_size)
    cdef unsigned char[::1] view = buffer
    cdef ssize_t n
    cdef long long total = 0
    mv = memoryview(buffer)
    sha = hashlib.sha256() if want_sha else None
    xxh = xxhash.xxh3_128()
    while True:
        n = _read_full(fd, &view[0], chunk_size, path)
        if n == 0:
            break
        chunk = mv[:n]
        if want_sha:
            sha.update(chunk)
        xxh.update(chunk)
        total += n
        if progress is not None:
            progress(n)
        _check(cancel)
    return total, (sha.hexdigest() if want_sha else None), xxh.hexdigest()


class _Sha256Beside:
    """sha256 on a helper thread, of buffers the calling thread fills (and uses for xxh3 first):
    the two digests of one stream are computed on two cores.

    ``take()`` a free buffer index, fill ``buffers[i]``, ``hand_over(i, n)``; ``finish()`` waits
    for the helper and returns the hex digest; ``stop()`` (idempotent) ends the helper on failure.
    sha256 is the slow hash (about 1.6 GB/s with SHA instructions), so this makes both digests
    together cost what sha256 alone costs.
    """

    def __init__(self, int count, Py_ssize_t size, str name):
        self.sha = hashlib.sha256()
        self.buffers = [bytearray(size) for _ in range(count)]
        self.free = SimpleQueue()
        self.ready = SimpleQueue()
        self.failure = []
        for i in range(count):
            self.free.put(i)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            item = self.ready.get()
            if item is None:
                return
            idx, n = item
            try:
                if not self.failure:
                    self.sha.update(memoryview(self.buffers[idx])[:n])
            except BaseException as exc:  # raised in the calling thread by finish()
                self.failure.append(exc)
            self.free.put(idx)

    def take(self):
        return self.free.get()

    def hand_over(self, idx, n):
        self.ready.put((idx, n))

    def stop(self):
        if self.thread is not None:
            self.ready.put(None)
            self.thread.join()
            self.thread = None

    def finish(self):
        self.stop()
        if self.failure:
            raise self.failure[0]
        return self.sha.hexdigest()


cdef tuple _hash_pipelined(int fd, object path, Py_ssize_t chunk_size, object progress, object cancel):
    """Read and compute xxh3 here while a helper thread computes sha256 (_Sha256Beside)."""
    cdef unsigned char[::1] raw
    cdef ssize_t got
    cdef long long total = 0
    xxh = xxhash.xxh3_128()
    helper = _Sha256Beside(PIPELINE_BUFFERS, chunk_size, "axon-hash-sha256")
    try:
        while True:
            idx = helper.take()
            raw = helper.buffers[idx]
            got = _read_full(fd, &raw[0], chunk_size, path)
            if got == 0:
                break
            xxh.update(memoryview(raw)[:got])
            helper.hand_over(idx, got)
            total += got
            if progress is not None:
                progress(got)
            _check(cancel)
        return total, helper.finish(), xxh.hexdigest()
    finally:
        helper.stop()


def hash_file(object path, *, object progress=None, Py_ssize_t chunk_size=HASH_CHUNK_BYTES,
              object pipeline=None, object cancel=None, bint sha256=True):
    """Return ``(size, sha256_hex, xxh3_128_hex)`` of *path* in one streaming read pass.

    *pipeline*: None decides by size; True/False forces the two-thread pipeline on or off.
    *cancel*: a ``fastio.Cancel``, checked between chunks.
    *sha256*: False computes xxh3-128 alone (sha256 is then None).
    """
    cdef bytes bpath = os.fsencode(path)
    cdef int fd = _open(bpath, path, O_RDONLY, 0)
    cdef struct_stat st
    try:
        _fstat(fd, path, &st)
        if _stat.S_ISDIR(st.st_mode):
            raise _oserror(21, path)  # EISDIR, before read() says so less clearly
        with nogil:
            posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)
        if pipeline is None:
            pipeline = st.st_size >= PIPELINE_MIN_BYTES
        if pipeline and sha256:
            return _hash_pipelined(fd, path, chunk_size, progress, cancel)
        if st.st_size < chunk_size and _stat.S_ISREG(st.st_mode):
            chunk_size = max(4096, st.st_size + 1)
        return _hash_serial(fd, path, chunk_size, progress, cancel, sha256)
    finally:
        close(fd)


# --- copying ------------------------------------------------------------------------------


cdef inline bint _unsupported(int err) noexcept nogil:
    return (err == EXDEV or err == ENOSYS or err == EOPNOTSUPP or err == ENOTSUP or err == EINVAL
            or err == ENOTTY or err == EBADF or err == EPERM)


cdef int _resident_percent(int fd, off_t size) noexcept nogil:
    """Percent of the file's pages in the page cache (100 when it cannot be told)."""
    cdef size_t pages = (<size_t>size + 4095) // 4096
    cdef void *addr
    cdef unsigned char *vec
    cdef size_t i, hot = 0
    if size <= 0:
        return 100
    addr = mmap(NULL, <size_t>size, PROT_READ, MAP_SHARED, fd, 0)
    if addr == MAP_FAILED:
        return 100
    vec = <unsigned char *>malloc(pages)
    if vec == NULL:
        munmap(addr, <size_t>size)
        return 100
    if mincore(addr, <size_t>size, vec) != 0:
        hot = pages
    else:
        for i in range(pages):
            hot += vec[i] & 1
    free(vec)
    munmap(addr, <size_t>size)
    return <int>(hot * 100 // pages)


cdef list _data_segments(int fd, off_t size, bint sparse):
    """[(start, end)] byte ranges that hold data; holes in between are left as holes."""
    cdef off_t pos = 0
    cdef off_t data, hole
    cdef int err
    if not sparse:
        return [(0, size)]
    segments = []
    while pos < size:
        with nogil:
            data = lseek(fd, pos, SEEK_DATA)
            err = errno
        if data < 0:
            if err == ENXIO:
                break
            return [(0, size)]  # SEEK_DATA unsupported: treat as dense
        with nogil:
            hole = lseek(fd, data, SEEK_HOLE)
        if hole < 0:
            hole = size
        segments.append((data, min(hole, size)))
        pos = hole
    return segments


cdef class _Copier:
    """Copies one open file to another, stepping down the method chain as needed."""

    cdef int fin
    cdef int fout
    cdef object src
    cdef object dst
    cdef object progress
    cdef object cancel
    cdef public str method
    cdef object sha
    cdef object xxh
    cdef public bint start_writeback
    cdef public bint drop_behind
    cdef object behind
    cdef public bint split_hash
    cdef object helper

    def __cinit__(self, int fin, int fout, object src, object dst, object progress, object cancel, str method):
        self.fin = fin
        self.fout = fout
        self.src = src
        self.dst = dst
        self.progress = progress
        self.cancel = cancel
        self.method = method
        self.sha = None
        self.xxh = None
        self.start_writeback = False
        self.drop_behind = False
        self.behind = deque()
        self.split_hash = False
        self.helper = None

    cdef bint try_reflink(self) except -1:
        cdef int rc
        cdef int err
        with nogil:
            rc = axon_ficlone(self.fout, self.fin)
            err = errno
        if rc == 0:
            return True
        if _unsupported(err):
            return False
        raise _oserror(err, self.dst)

    cdef off_t kernel_chunk(self, off_t off, off_t length) except -2:
        """Copy up to *length* bytes at *off* in the kernel; -1 means 'method unsupported'."""
        cdef off_t off_in = off
        cdef off_t off_out = off
        cdef ssize_t n
        cdef int err
        cdef off_t most = FOLLOW_CHUNK_BYTES if self.sha is not None or self.drop_behind else KERNEL_CHUNK_BYTES
        cdef size_t count = <size_t>(length if length < most else most)
        while True:
            if self.method == "copy_file_range":
                with nogil:
                    n = copy_file_range(self.fin, &off_in, self.fout, &off_out, count, 0)
                    err = errno
            else:
                with nogil:
                    n = -1
                    err = 0
                    if lseek(self.fout, off, SEEK_SET) < 0:
                        err = errno
                    else:
                        n = sendfile(self.fout, self.fin, &off_in, count)
                        err = errno
            if n >= 0:
                if n == 0:
                    raise OSError(EINVAL, "source shrank during the copy", self.src)
                return n
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            if _unsupported(err):
                return -1
            raise _oserror(err, self.dst)

    cdef off_t rw_chunk(self, off_t off, off_t length, unsigned char *buf, object mv) except -1:
        cdef size_t count = <size_t>(length if length < RW_CHUNK_BYTES else RW_CHUNK_BYTES)
        cdef ssize_t n, w
        cdef size_t done = 0
        cdef int err
        while True:
            with nogil:
                n = pread(self.fin, buf, count, off)
                err = errno
            if n >= 0:
                break
            if err != EINTR:
                raise _oserror(err, self.src)
            PyErr_CheckSignals()
        if n == 0:
            raise OSError(EINVAL, "source shrank during the copy", self.src)
        if self.sha is not None:
            chunk = mv[:n]
            self.sha.update(chunk)
            self.xxh.update(chunk)
        while done < <size_t>n:
            with nogil:
                w = pwrite(self.fout, buf + done, <size_t>n - done, off + <off_t>done)
                err = errno
            if w < 0:
                if err != EINTR:
                    raise _oserror(err, self.dst)
                PyErr_CheckSignals()
                continue
            done += w
        return n

    cdef int hash_copied(self, off_t off, off_t length, unsigned char *buf, object mv) except -1:
        """Hash what the kernel just wrote at [off, off+length) of the destination.

        The pages were written a moment ago, so this reads them from the page cache (often
        from the CPU cache): verification costs the hashing, not a second pass over the disk.
        With *split_hash*, this thread computes xxh3 and a helper thread sha256 of the same
        buffers, so one large file is copied, read back and hashed on two cores at once.
        """
        cdef ssize_t n
        cdef off_t end = off + length
        cdef unsigned char[::1] raw
        while off < end:
            if self.helper is not None:
                idx = self.helper.take()
                raw = self.helper.buffers[idx]
                n = _read_full(self.fout, &raw[0], <size_t>min(<off_t>RW_CHUNK_BYTES, end - off), self.dst, off)
                if n == 0:
                    raise OSError(EINVAL, "destination shrank during the copy", self.dst)
                self.xxh.update(memoryview(raw)[:n])
                self.helper.hand_over(idx, n)
            else:
                n = _read_full(self.fout, buf, <size_t>min(<off_t>RW_CHUNK_BYTES, end - off), self.dst, off)
                if n == 0:
                    raise OSError(EINVAL, "destination shrank during the copy", self.dst)
                chunk = mv[:n]
                self.sha.update(chunk)
                self.xxh.update(chunk)
            off += n
        return 0

    def _end_helper(self):
        """Wait for the sha256 helper (if any) to catch up; self.sha is then complete so far."""
        if self.helper is not None:
            helper, self.helper = self.helper, None
            helper.finish()

    cdef int retire(self, off_t off, off_t n) except -1:
        """Wait for the chunks more than a window behind *off* to reach the disk, then drop them.

        Freed pages are reused for the next chunks instead of new memory being taken (and the
        serving machine's hot pages evicted): on a VM, first touches of fresh pages cost more
        than the copy itself. The window keeps the disk busy while we copy ahead.
        """
        cdef off_t o, length
        cdef int rc, err
        self.behind.append((off, n))
        while self.behind and off + n - self.behind[0][0] > WRITEBACK_WINDOW_BYTES:
            o, length = self.behind.popleft()
            with nogil:
                rc = sync_file_range(self.fout, o, length,
                                     SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER)
                err = errno
            if rc != 0:
                if _unsupported(err):
                    # A file system without sync_file_range: its final fsync does the work.
                    self.drop_behind = False
                    self.behind.clear()
                    return 0
                # This consumed the file's writeback error: report it here, fsync will not.
                raise _oserror(err, self.dst)
            with nogil:
                posix_fadvise(self.fout, o, length, POSIX_FADV_DONTNEED)
        return 0

    def copy(self, list segments, bint inline_hash):
        """Copy every segment; with *inline_hash* (one dense segment) hash as the bytes go.

        Bytes that pass through user space are hashed from the buffer; bytes the kernel moved
        are hashed from the destination right after each chunk, while still cached, so copy
        and verification overlap instead of running one after the other.
        """
        if inline_hash:
            self.sha = hashlib.sha256()
            self.xxh = xxhash.xxh3_128()
            if self.split_hash and self.method in ("copy_file_range", "sendfile"):
                self.helper = _Sha256Beside(SPLIT_HASH_BUFFERS, RW_CHUNK_BYTES, "axon-copy-sha256")
                self.sha = self.helper.sha
        try:
            self._copy_segments(segments, inline_hash)
            self._end_helper()
        finally:
            if self.helper is not None:
                self.helper.stop()
                self.helper = None

    def _copy_segments(self, list segments, bint inline_hash):
        cdef bytearray buffer = None
        cdef unsigned char[::1] view
        cdef unsigned char *buf = NULL
        cdef off_t off, end, n
        mv = None
        for start, stop in segments:
            off = start
            end = stop
            while off < end:
                if buffer is None and (inline_hash or self.method not in ("copy_file_range", "sendfile")):
                    buffer = bytearray(RW_CHUNK_BYTES)
                    view = buffer
                    buf = &view[0]
                    mv = memoryview(buffer)
                if self.method in ("copy_file_range", "sendfile"):
                    n = self.kernel_chunk(off, end - off)
                    if n < 0:
                        self.method = "sendfile" if self.method == "copy_file_range" else "readwrite"
                        if self.method == "readwrite":
                            self._end_helper()  # bytes hashed so far, in order, before rw hashes inline
                        continue
                    if inline_hash:
                        self.hash_copied(off, n, buf, mv)
                else:
                    n = self.rw_chunk(off, end - off, buf, mv)
                if self.start_writeback or self.drop_behind:
                    # Start writing this chunk to disk now rather than when fsync asks: the
                    # disk works while we copy and hash the rest.
                    with nogil:
                        sync_file_range(self.fout, off, n, SYNC_FILE_RANGE_WRITE)
                if self.drop_behind:
                    self.retire(off, n)
                off += n
                if self.progress is not None:
                    self.progress(n)
                _check(self.cancel)

    def digest(self):
        if self.sha is None:
            return None
        return self.sha.hexdigest(), self.xxh.hexdigest()


cdef int _fsync(int fd, object path) except -1:
    cdef int rc
    cdef int err
    while True:
        with nogil:
            rc = fsync(fd)
            err = errno
        if rc == 0:
            return 0
        if err != EINTR:
            raise _oserror(err, path)


def copy_file_ex(object src, object dst, *, bint verify=False, bint durable=False, bint drop_cache=False,
                 object progress=None, object cancel=None, bint exclusive=True, str method="reflink",
                 object hash_pipeline=None, bint hash_after=True, bint start_writeback=False):
    """Copy one regular file; returns ``(size, method, sha256, xxh3_128)`` (digests None unless verify).

    *method* is where the chain FICLONE -> copy_file_range -> sendfile -> pread/pwrite starts.
    The destination is created (``O_EXCL`` unless *exclusive* is false), written, optionally
    hashed (inline when the bytes pass through user space, else by one read of the
    destination), fsynced (*durable*), given the source's mode, and removed again on any
    failure. *drop_cache*: the copy's pages are dropped once on disk, and the source's when
    they were not cached before. *cancel* (a ``fastio.Cancel``) is checked between chunks.
    *hash_pipeline* (None: decide by size and cores; a bool, or a callable returning one) says
    whether verifying may use a second thread (sha256 beside the copy, or the two-thread hash
    pipeline afterwards); it pays only while fewer copies run than there are cores.
    With *hash_after* false, only an inline digest is returned (the caller hashes later);
    *start_writeback* starts each chunk's writeback as soon as it is copied.
    """
    cdef bytes bsrc = os.fsencode(src)
    cdef bytes bdst = os.fsencode(dst)
    cdef int fin = _open(bsrc, src, O_RDONLY, 0)
    cdef int fout = -1
    cdef int rfd = -1
    cdef struct_stat st
    cdef bint cold = False
    cdef bint sparse
    cdef off_t size
    cdef int mode
    if method not in METHODS:
        close(fin)
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    try:
        _fstat(fin, src, &st)
        if not _stat.S_ISREG(st.st_mode):
            raise OSError(EINVAL, "not a regular file", src)
        size = st.st_size
        mode = st.st_mode & 0o7777
        sparse = st.st_blocks * 512 < size
        if drop_cache and size >= PIPELINE_MIN_BYTES:
            with nogil:
                cold = _resident_percent(fin, size) < COLD_PAGE_PERCENT
        fout = _open(bdst, dst, (O_RDWR if verify else O_WRONLY) | O_CREAT | (O_EXCL if exclusive else O_TRUNC),
                     0o600)
        try:
            copier = _Copier(fin, fout, src, dst, progress, cancel, "copy_file_range" if method == "reflink" else method)
            copier.start_writeback = durable or start_writeback
            copier.drop_behind = (durable or start_writeback) and drop_cache and size >= PIPELINE_MIN_BYTES
            if verify and size >= PIPELINE_MIN_BYTES:
                pipeline = hash_pipeline() if callable(hash_pipeline) else hash_pipeline
                copier.split_hash = (os.cpu_count() or 1) > 1 if pipeline is None else bool(pipeline)
            if size == 0:
                copier.method = "empty"
            elif method == "reflink" and copier.try_reflink():
                copier.method = "reflink"
                if progress is not None:
                    progress(size)
            else:
                with nogil:
                    posix_fadvise(fin, 0, 0, POSIX_FADV_SEQUENTIAL)
                copier.copy(_data_segments(fin, size, sparse), verify and not sparse)
                if sparse:
                    with nogil:
                        ftruncate(fout, size)
            digests = copier.digest() if verify else None
            if verify and digests is None and hash_after:
                # The kernel moved the bytes: hash what landed, one read (from the page cache
                # unless it was a reflink), before fsync so hashing overlaps the writeback.
                pipeline = hash_pipeline() if callable(hash_pipeline) else hash_pipeline
                _, sha, xxh = hash_file(dst, pipeline=pipeline, cancel=cancel)
                digests = (sha, xxh)
            if durable:
                _fsync(fout, dst)
                if drop_cache:
                    with nogil:
                        posix_fadvise(fout, 0, 0, POSIX_FADV_DONTNEED)
            if cold:
                with nogil:
                    posix_fadvise(fin, 0, 0, POSIX_FADV_DONTNEED)
            os.fchmod(fout, mode)
        except BaseException:
            close(fout)
            fout = -1
            try:
                os.unlink(dst)
            except OSError:
                pass
            raise
    finally:
        close(fin)
        if fout >= 0:
            close(fout)
    if digests is None:
        return size, copier.method, None, None
    return size, copier.method, digests[0], digests[1]


def copy_file(object src, object dst, *, object progress=None):
    """Copy *src* to a new or truncated *dst* (same mode); returns ``(bytes, method)``."""
    size, method, _, _ = copy_file_ex(src, dst, progress=progress, exclusive=False, method="copy_file_range")
    return size, method


def syncfs_path(object path):
    """syncfs() on the file system holding *path*: every dirty page and metadata there hits disk."""
    cdef int fd = _open(os.fsencode(path), path, O_RDONLY, 0)
    cdef int rc
    cdef int err
    try:
        with nogil:
            rc = syncfs(fd)
            err = errno
        if rc != 0:
            raise _oserror(err, path)
    finally:
        close(fd)


# --- containment --------------------------------------------------------------------------


def is_within(object root, object path):
    """True when realpath(path) is realpath(root) or lies below it on a component boundary.

    Symlinks are followed; a path (or root) that does not exist is never within.
    """
    cdef bytes broot = os.fsencode(root)
    cdef bytes bpath = os.fsencode(path)
    cdef const char *croot = broot
    cdef const char *cpath = bpath
    cdef char *rroot = NULL
    cdef char *rpath = NULL
    cdef size_t rlen
    cdef bint inside = False
    with nogil:
        rroot = realpath(croot, NULL)
        if rroot != NULL:
            rpath = realpath(cpath, NULL)
        if rroot != NULL and rpath != NULL:
            rlen = strlen(rroot)
            if strcmp(rroot, "/") == 0:
                inside = True
            elif strncmp(rpath, rroot, rlen) == 0 and (rpath[rlen] == 0 or rpath[rlen] == 47):  # '/'
                inside = True
        free(rroot)
        free(rpath)
    return inside


cdef int _open_beneath_walk(int rootfd, list parts, int flags, int mode, object relpath) except -1:
    """Fallback without openat2: one openat per component, refusing every symlink (O_NOFOLLOW)."""
    cdef int cur = rootfd
    cdef int nxt
    cdef int err
    cdef bytes comp
    cdef const char *ccomp
    cdef int last = len(parts) - 1
    cdef int i
    try:
        for i in range(len(parts)):
            comp = os.fsencode(parts[i])
            ccomp = comp
            while True:
                with nogil:
                    if i < last:
                        nxt = openat(cur, ccomp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    else:
                        nxt = openat(cur, ccomp, flags | O_NOFOLLOW | O_CLOEXEC, mode)
                    err = errno
                if nxt >= 0 or err != EINTR:
                    break
            if cur != rootfd:
                close(cur)
            cur = rootfd
            if nxt < 0:
                raise _oserror(err, relpath)
            cur = nxt
        return cur
    except BaseException:
        if cur != rootfd:
            close(cur)
        raise


def open_beneath(object root, object relpath, int flags=O_RDONLY, int mode=0o644, bint use_openat2=True,
                 bint follow_symlinks=True):
    """Open *relpath* under *root* (a path or a directory fd) without ever leaving it.

    Uses ``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)``: symlinks that stay inside are
    followed, anything resolving outside fails with EXDEV, even if swapped in after a check.
    With *follow_symlinks* false, ``RESOLVE_NO_SYMLINKS`` too: any symlink fails with ELOOP.
    Without openat2 (ENOSYS, or *use_openat2* false) every component is opened with
    ``O_NOFOLLOW``, so symlinks fail with ELOOP. Returns a new fd the caller must close.
    """
    cdef int rootfd
    cdef bint own_root = False
    cdef long fd
    cdef int err
    cdef bytes brel
    cdef const char *crel
    rel = os.fsdecode(relpath)
    if rel.startswith("/") or rel == "":
        raise OSError(EXDEV, "path is absolute or empty, not below the root", relpath)
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OSError(EXDEV, "path has a '..' segment", relpath)
    if not parts:
        raise OSError(EXDEV, "path names the root itself", relpath)
    if isinstance(root, int):
        rootfd = root
    else:
        rootfd = _open(os.fsencode(root), root, O_PATH | O_DIRECTORY, 0)
        own_root = True
    try:
        if use_openat2:
            brel = os.fsencode("/".join(parts))
            crel = brel
            while True:
                with nogil:
                    fd = axon_openat2(rootfd, crel, flags | O_CLOEXEC, mode,
                                      AXON_RESOLVE_BENEATH | AXON_RESOLVE_NO_MAGICLINKS
                                      | (0 if follow_symlinks else AXON_RESOLVE_NO_SYMLINKS))
                    err = errno
                if fd >= 0:
                    return <int>fd
                if err == EINTR or err == EAGAIN:
                    continue
                if err in (ENOSYS, EPERM, E2BIG):  # no openat2 here (old kernel, seccomp)
                    break
                if err == EXDEV:
                    raise OSError(EXDEV, "path resolves outside the root", relpath)
                raise _oserror(err, relpath)
        return _open_beneath_walk(rootfd, parts, flags, mode, relpath)
    finally:
        if own_root:
            close(rootfd)


def rename_exchange(object a, object b):
    """Atomically swap two existing paths (renameat2 RENAME_EXCHANGE)."""
    cdef bytes ba = os.fsencode(a)
    cdef bytes bb = os.fsencode(b)
    cdef const char *ca = ba
    cdef const char *cb = bb
    cdef int rc
    cdef int err
    with nogil:
        rc = renameat2(AT_FDCWD, ca, AT_FDCWD, cb, RENAME_EXCHANGE)
        err = errno
    if rc != 0:
        raise OSError(err, os.strerror(err), a, None, b)
