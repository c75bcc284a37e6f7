# C declarations for axon._fastio (kept apart from the logic, as uvloop does in includes/).
from posix.types cimport off_t


cdef extern from "errno.h":
    const int EOPNOTSUPP
    const int ENOTSUP
    const int ENOTTY
    const int ELOOP
    const int EXDEV
    const int ENOSYS
    const int EINVAL
    const int EINTR
    const int EAGAIN
    const int E2BIG
    const int EPERM
    const int EBADF

cdef extern from "stdlib.h" nogil:
    char *realpath(const char *path, char *resolved_path)

cdef extern from "fcntl.h" nogil:
    int posix_fadvise(int fd, off_t offset, off_t length, int advice)
    int openat(int dirfd, const char *pathname, int flags, ...)
    int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags)
    const unsigned int SYNC_FILE_RANGE_WRITE
    const unsigned int SYNC_FILE_RANGE_WAIT_BEFORE
    const unsigned int SYNC_FILE_RANGE_WAIT_AFTER
    const int POSIX_FADV_SEQUENTIAL
    const int POSIX_FADV_DONTNEED
    const int AT_FDCWD
    const int O_NOFOLLOW
    const int O_DIRECTORY
    const int O_PATH
    const int O_EXCL

cdef extern from "unistd.h" nogil:
    ssize_t copy_file_range(int fd_in, off_t *off_in, int fd_out, off_t *off_out,
                            size_t length, unsigned int flags)
    ssize_t pread(int fd, void *buf, size_t count, off_t offset)
    ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
    off_t lseek(int fd, off_t offset, int whence)
    int ftruncate(int fd, off_t length)
    int fsync(int fd)
    int syncfs(int fd)
    const int SEEK_SET
    const int SEEK_DATA
    const int SEEK_HOLE

cdef extern from "sys/sendfile.h" nogil:
    ssize_t sendfile(int out_fd, int in_fd, off_t *offset, size_t count)

cdef extern from "sys/mman.h" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
    int munmap(void *addr, size_t length)
    int mincore(void *addr, size_t length, unsigned char *vec)
    const int PROT_READ
    const int MAP_SHARED
    void *MAP_FAILED

cdef extern from "stdio.h" nogil:
    int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                  unsigned int flags)
    const unsigned int RENAME_EXCHANGE

# Constants and syscalls that older C headers may lack, defined here so the build works on any
# Linux userland; the kernel answers ENOSYS/EOPNOTSUPP where a feature is missing.
cdef extern from *:
    """
    #include <fcntl.h>
    #include <sys/ioctl.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #ifndef FICLONE
    #define FICLONE 0x40049409
    #endif
    #ifndef SYS_openat2
    #define SYS_openat2 437
    #endif
    #define AXON_RESOLVE_NO_MAGICLINKS 0x02ULL
    #define AXON_RESOLVE_NO_SYMLINKS 0x04ULL
    #define AXON_RESOLVE_BENEATH 0x08ULL
    struct axon_open_how { unsigned long long flags, mode, resolve; };
    static long axon_openat2(int dirfd, const char *path, int flags, int mode, unsigned long long resolve) {
        struct axon_open_how how;
        how.flags = (unsigned long long)(unsigned int)flags;
        /* openat2 rejects a mode unless the call can create a file. */
        /* O_TMPFILE includes O_DIRECTORY's bit: test all of it, or every O_DIRECTORY open fails. */
        how.mode = ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) ? (unsigned long long)mode : 0;
        how.resolve = resolve;
        return syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
    }
    static int axon_ficlone(int dst, int src) { return ioctl(dst, FICLONE, src); }
    """
    long axon_openat2(int dirfd, const char *path, int flags, int mode, unsigned long long resolve) nogil
    int axon_ficlone(int dst, int src) nogil
    const unsigned long long AXON_RESOLVE_NO_MAGICLINKS
    const unsigned long long AXON_RESOLVE_NO_SYMLINKS
    const unsigned long long AXON_RESOLVE_BENEATH


cdef enum:
    HASH_CHUNK_BYTES = 1 << 20          # 1 MiB: hashlib/xxhash are fastest here
    KERNEL_CHUNK_BYTES = 32 << 20       # per copy_file_range/sendfile call, then check for Ctrl-C
    FOLLOW_CHUNK_BYTES = 8 << 20        # per kernel copy when its bytes are hashed or dropped behind
    WRITEBACK_WINDOW_BYTES = 64 << 20   # durable copies keep at most this much per file unwritten
    RW_CHUNK_BYTES = 1 << 20            # read/write fallback buffer
    PIPELINE_BUFFERS = 4                # hash pipeline: buffers in flight between reader and hasher
    SPLIT_HASH_BUFFERS = 8              # verified copy: RW_CHUNK_BYTES buffers in flight to the sha256 thread
    PIPELINE_MIN_BYTES = 8 << 20        # smaller files are hashed in the calling thread alone
    COLD_PAGE_PERCENT = 5               # a source with fewer pages cached than this is "cold"
