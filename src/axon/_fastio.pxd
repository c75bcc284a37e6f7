# C declarations for axon._fastio (kept apart from the logic, as uvloop does in includes/).
from posix.types cimport off_t


cdef extern from "errno.h":
    const int EOPNOTSUPP
    const int ENOTSUP

cdef extern from "stdlib.h" nogil:
    char *realpath(const char *path, char *resolved_path)

cdef extern from "fcntl.h" nogil:
    int posix_fadvise(int fd, off_t offset, off_t length, int advice)
    const int POSIX_FADV_SEQUENTIAL
    const int AT_FDCWD

cdef extern from "unistd.h" nogil:
    ssize_t copy_file_range(int fd_in, off_t *off_in, int fd_out, off_t *off_out,
                            size_t length, unsigned int flags)

cdef extern from "stdio.h" nogil:
    int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                  unsigned int flags)
    const unsigned int RENAME_EXCHANGE


cdef enum:
    HASH_CHUNK_BYTES = 1 << 20          # 1 MiB: hashlib/xxhash are fastest here
    CFR_CHUNK_BYTES = 64 << 20          # 64 MiB per copy_file_range call, then check signals
    RW_CHUNK_BYTES = 1 << 20            # read/write fallback buffer
