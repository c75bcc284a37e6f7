# cython: language_level=3
"""Native hot paths of axon: streaming hashes, kernel-side copies, containment checks.

Private: ``axon.fastio`` is the only importer. It owns argument checking, types and the
pure-Python fallback that serves as the test oracle.

Rules kept throughout (see docs/architecture.md):
* ``nogil`` covers only syscalls on C values; paths become C strings before, Python
  results are built after.
* A failed syscall: retry on EINTR, copy errno at once, close fds, raise
  ``OSError(errno, strerror, path)`` so Python picks the right subclass.
* Between chunks the GIL is taken back to run signal handlers (Ctrl-C mid-file) and
  report progress.
"""

import hashlib
import os

import xxhash

from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EINTR, EINVAL, ENOSYS, EXDEV, errno
from libc.stdlib cimport free
from libc.string cimport strcmp, strlen, strncmp
from posix.fcntl cimport O_CLOEXEC, O_CREAT, O_RDONLY, O_TRUNC, O_WRONLY, open as c_open
from posix.stat cimport fstat, struct_stat
from posix.types cimport off_t
from posix.unistd cimport close, read, write


cdef inline object _oserror(int err, object path):
    return OSError(err, os.strerror(err), path)


cdef int _open_read(bytes bpath, object path) except -1:
    cdef const char *cpath = bpath
    cdef int fd
    cdef int err
    while True:
        with nogil:
            fd = c_open(cpath, O_RDONLY | O_CLOEXEC)
            err = errno
        if fd >= 0:
            return fd
        if err != EINTR:
            raise _oserror(err, path)


cdef int _fstat_size(int fd, object path, off_t *size, int *mode) except -1:
    cdef struct_stat st
    cdef int rc
    cdef int err
    with nogil:
        rc = fstat(fd, &st)
        err = errno
    if rc != 0:
        raise _oserror(err, path)
    size[0] = st.st_size
    mode[0] = st.st_mode & 0o7777
    return 0


def hash_file(object path, object progress=None, Py_ssize_t chunk_size=HASH_CHUNK_BYTES):
    """Return ``(size, sha256_hex, xxh3_128_hex)`` of *path* in one streaming read pass."""
    cdef bytes bpath = os.fsencode(path)
    cdef int fd = _open_read(bpath, path)
    cdef bytearray buffer = bytearray(chunk_size)
    cdef unsigned char[::1] view = buffer
    cdef unsigned char *buf = &view[0]
    cdef ssize_t n
    cdef int err
    cdef long long total = 0
    mv = memoryview(buffer)
    sha = hashlib.sha256()
    xxh = xxhash.xxh3_128()
    try:
        with nogil:
            posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)
        while True:
            with nogil:
                n = read(fd, buf, <size_t>chunk_size)
                err = errno
            if n < 0:
                if err == EINTR:
                    PyErr_CheckSignals()
                    continue
                raise _oserror(err, path)
            if n == 0:
                break
            chunk = mv[:n]
            sha.update(chunk)
            xxh.update(chunk)
            total += n
            if progress is not None:
                progress(n)
            PyErr_CheckSignals()
    finally:
        close(fd)
    return total, sha.hexdigest(), xxh.hexdigest()


cdef inline bint _unsupported(int err) noexcept nogil:
    return err == EXDEV or err == ENOSYS or err == EOPNOTSUPP or err == ENOTSUP or err == EINVAL


cdef long long _copy_rw(int src, int dst, object src_path, object dst_path,
                        object progress) except -1:
    """Plain read/write loop from the current offsets; handles short writes."""
    cdef bytearray buffer = bytearray(RW_CHUNK_BYTES)
    cdef unsigned char[::1] view = buffer
    cdef unsigned char *buf = &view[0]
    cdef ssize_t n, w, done
    cdef int err
    cdef long long total = 0
    while True:
        with nogil:
            n = read(src, buf, RW_CHUNK_BYTES)
            err = errno
        if n < 0:
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            raise _oserror(err, src_path)
        if n == 0:
            return total
        done = 0
        while done < n:
            with nogil:
                w = write(dst, buf + done, <size_t>(n - done))
                err = errno
            if w < 0:
                if err == EINTR:
                    PyErr_CheckSignals()
                    continue
                raise _oserror(err, dst_path)
            done += w
        total += n
        if progress is not None:
            progress(n)
        PyErr_CheckSignals()


def copy_file(object src, object dst, object progress=None):
    """Copy *src* to a new/truncated *dst* with copy_file_range, else read/write.

    Returns ``(bytes_copied, method)`` where method is ``"copy_file_range"`` or ``"readwrite"``.
    The destination gets the source's permission bits.
    """
    cdef bytes bsrc = os.fsencode(src)
    cdef bytes bdst = os.fsencode(dst)
    cdef const char *cdst = bdst
    cdef int fin = _open_read(bsrc, src)
    cdef int fout = -1
    cdef off_t size = 0
    cdef int mode = 0
    cdef ssize_t n
    cdef int err
    cdef long long total = 0
    cdef bint kernel = True
    try:
        _fstat_size(fin, src, &size, &mode)
        while True:
            with nogil:
                fout = c_open(cdst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
                err = errno
            if fout >= 0:
                break
            if err != EINTR:
                raise _oserror(err, dst)
        os.fchmod(fout, mode)
        while True:
            with nogil:
                n = copy_file_range(fin, NULL, fout, NULL, CFR_CHUNK_BYTES, 0)
                err = errno
            if n < 0:
                if err == EINTR:
                    PyErr_CheckSignals()
                    continue
                if _unsupported(err):
                    kernel = False
                    break
                raise _oserror(err, dst)
            if n == 0:
                break
            total += n
            if progress is not None:
                progress(n)
            PyErr_CheckSignals()
        if not kernel:
            # copy_file_range advanced both offsets by what it did copy; carry on from there.
            total += _copy_rw(fin, fout, src, dst, progress)
        if total != size:
            # The source changed size while we copied it: the copy is not a snapshot of anything.
            raise OSError(EINVAL, f"source changed size during copy ({size} -> {total} bytes)", src)
    finally:
        close(fin)
        if fout >= 0:
            close(fout)
    return total, ("copy_file_range" if kernel else "readwrite")


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
