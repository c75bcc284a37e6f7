"""axon.store._fastio against the tools a user would otherwise use, measured in one run.

Generates a model directory (three large weight files + many small files, 4 GiB by default),
then times, best of --repeat runs each, with the destination removed and `sync` run between:

  copy_tree(durable)              vs  cp -r + sync                      target <= 1.1x time
  copy_tree(verify, durable)      vs  shutil.copytree + sync + sha256   target >= 2x faster
  copy_tree(verify, durable)      vs  copy_tree(durable)                target <= 1.15x time
  copy_tree on reflink XFS        (root + mkfs.xfs)                     target < 0.5 s; verify ~ one read
  hash_files sha256+xxh3          vs  hashlib sha256 alone              target >= 0.95x throughput
  hash_files xxh3 only            vs  xxhsum -H2                        target >= 1.0x
  hash_files 2 workers, 2 files   vs  1 worker                          target >= 1.8x
  is_within                       vs  realpath + commonpath             target >= 3x, same answers

Peak RSS (sampled) and page-cache growth are printed for the copy and hash runs.

  .venv/bin/python benchmarks/bench_fastio.py [--size-gib 4] [--small-files 1000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from axon.store import fastio

RESULTS: list[tuple[str, str, bool | None]] = []


def meminfo_cached() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Sample this process's RSS every 5 ms while a block runs."""

    def __enter__(self) -> PeakRss:
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def best_of(repeat: int, fn: Callable[[], object], before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def report(name: str, ours: float, base: float, *, kind: str, target: float) -> None:
    """kind: "time" (seconds, ratio = ours/base, lower is better), "speedup" (seconds, ratio = base/ours)
    or "throughput" (GB/s, ratio = ours/base)."""
    if kind == "time":
        ratio, ok, how, unit = ours / base, ours / base <= target, f"x time (target <= {target})", "s"
    elif kind == "speedup":
        ratio, ok, how, unit = base / ours, base / ours >= target, f"x faster (target >= {target})", "s"
    else:
        ratio, ok, how, unit = ours / base, ours / base >= target, f"x throughput (target >= {target})", " GB/s"
    RESULTS.append((name, f"{ratio:.2f}", ok))
    print(f"{'PASS' if ok else 'MISS'} {name:<52} ours {ours:7.3f}{unit}  baseline {base:7.3f}{unit}  "
          f"ratio {ratio:5.2f}{how}", flush=True)


def make_tree(root: Path, size_gib: float, small_files: int, large_files: int = 3) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    big = int((size_gib * 2**30 - small_files * 5 * 1024) / large_files)
    block = os.urandom(16 << 20)
    bigs = []
    for i in range(large_files):
        p = root / "weights" / f"model-{i:02d}.onnx_data"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            left = big
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
        bigs.append(p)
    for i in range(small_files):
        p = root / "tokenizer" / f"shard-{i // 100:02d}" / f"part-{i:04d}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(1024 + (i * 37) % 8192))
    os.sync()
    return bigs


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def hashlib_sha256(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def copytree_sync_sha256(src: Path, dst: Path) -> None:
    """The baseline a user would write: shutil.copytree, sync, then hashlib sha256 of every copied file."""
    shutil.copytree(src, dst)
    os.sync()
    for p in dst.rglob("*"):
        if p.is_file():
            hashlib_sha256(p)


def bench_copy(src: Path, work: Path, repeat: int) -> None:
    dst = work / "dst"

    def clean() -> None:
        if dst.exists():
            shutil.rmtree(dst)
        os.sync()

    total = tree_bytes(src)
    print(f"\n== copy: {total / 2**30:.2f} GiB, {sum(1 for _ in src.rglob('*') if _.is_file())} files ==", flush=True)
    t_cp = best_of(repeat, lambda: subprocess.run(f"cp -r '{src}' '{dst}' && sync", shell=True, check=True), clean)

    clean()
    cached0 = meminfo_cached()
    with PeakRss() as rss_plain:
        t0, c0 = time.perf_counter(), cpu_seconds()
        fastio.copy_tree(src, dst, durable=True)
        t_plain, cpu_plain = time.perf_counter() - t0, cpu_seconds() - c0
    cache_growth = (meminfo_cached() - cached0) / 2**30
    t_plain = min(t_plain, best_of(repeat - 1, lambda: fastio.copy_tree(src, dst, durable=True), clean)
                  if repeat > 1 else t_plain)
    report("copy_tree(durable) vs cp -r + sync", t_plain, t_cp, kind="time", target=1.1)
    print(f"     peak RSS growth {rss_plain.growth_mib:.1f} MiB; page cache grew {cache_growth:+.2f} GiB "
          f"(copy of {total / 2**30:.2f} GiB)")

    t_base = best_of(repeat, lambda: copytree_sync_sha256(src, dst), clean)
    clean()
    with PeakRss() as rss_verify:
        t0, c0 = time.perf_counter(), cpu_seconds()
        fastio.copy_tree(src, dst, durable=True, verify=True)
        t_verify, cpu_verify = time.perf_counter() - t0, cpu_seconds() - c0
    if repeat > 1:
        t_verify = min(t_verify, best_of(repeat - 1, lambda: fastio.copy_tree(src, dst, durable=True, verify=True),
                                         clean))
    report("copy_tree(verify,durable) vs copytree+sync+sha256", t_verify, t_base, kind="speedup", target=2.0)
    report("copy_tree(verify,durable) vs copy_tree(durable)", t_verify, t_plain, kind="time", target=1.15)
    print(f"     peak RSS growth {rss_verify.growth_mib:.1f} MiB")
    ncpu = os.cpu_count() or 1
    print(f"     CPU time (user+sys, this process): durable copy {cpu_plain:.2f} s, verified copy {cpu_verify:.2f} s; "
          f"on {ncpu} cores the verified copy cannot take less than {cpu_verify / ncpu:.2f} s "
          f"= {cpu_verify / ncpu / t_plain:.2f}x the durable copy (hashing is CPU work the disk cannot hide "
          "when it writes as fast as the cores hash)")
    clean()


def bench_single_file(big: Path, work: Path, repeat: int) -> None:
    """One large file (a single model.safetensors): sha256 on a helper thread beside the copy vs
    all hashing in the copying thread, and vs the durable copy without verification."""
    dst = work / "single.bin"

    def clean() -> None:
        dst.unlink(missing_ok=True)
        os.sync()

    def copy(verify: bool, split: bool) -> None:
        fastio._native.copy_file_ex(big, dst, verify=verify, durable=True, drop_cache=True,  # type: ignore[union-attr]
                                    method="reflink", hash_pipeline=split)

    size = big.stat().st_size
    print(f"\n== one large file: {size / 2**30:.2f} GiB ==", flush=True)
    t_plain = best_of(repeat, lambda: copy(False, False), clean)
    t_serial = best_of(repeat, lambda: copy(True, False), clean)
    t_split = best_of(repeat, lambda: copy(True, True), clean)
    clean()
    print(f"     durable copy {t_plain:.2f} s; verified: sha256 beside the copy {t_split:.2f} s = "
          f"{t_split / t_plain:.2f}x the durable copy, all hashing in the copying thread {t_serial:.2f} s = "
          f"{t_serial / t_plain:.2f}x ({t_serial / t_split:.2f}x slower than split)", flush=True)


def bench_hash(bigs: list[Path], repeat: int) -> None:
    f = bigs[0]
    size = f.stat().st_size
    print(f"\n== hash: {size / 2**30:.2f} GiB per file, warm page cache ==", flush=True)
    hashlib_sha256(f)  # warm
    t_sha = best_of(repeat, lambda: hashlib_sha256(f))
    with PeakRss() as rss:
        t_ours = best_of(repeat, lambda: fastio.hash_files([f], workers=1))
    report("hash_files sha256+xxh3 vs hashlib sha256 alone", size / t_ours / 1e9, size / t_sha / 1e9,
           kind="throughput", target=0.95)
    print(f"     peak RSS growth {rss.growth_mib:.1f} MiB")
    # The scheduler of fastio.hash_files driving the native per-file work, with the per-file
    # sha256/xxh3 pipeline forced on or off.
    native = fastio._NATIVE if fastio.native_available() else None

    def hash_native(paths: list[str], workers: int, pipeline: bool | None, sha256: bool = True) -> object:
        assert native is not None
        return fastio._hash_files(native, paths, workers=workers, pipeline=pipeline, sha256=sha256)

    if shutil.which("xxhsum") and native is not None:
        t_xxhsum = best_of(repeat, lambda: subprocess.run(["xxhsum", "-H2", str(f)], check=True,
                                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        t_xxh = best_of(repeat, lambda: hash_native([str(f)], 1, False, sha256=False))
        report("hash_files xxh3-only vs xxhsum -H2", size / t_xxh / 1e9, size / t_xxhsum / 1e9,
               kind="throughput", target=1.0)
    else:
        print("SKIP xxh3-only vs xxhsum -H2: xxhsum not installed (apt-get install xxhash)")
    two = [str(bigs[0]), str(bigs[1])]
    hashlib_sha256(bigs[1])
    if native is not None:
        t_one = best_of(repeat, lambda: hash_native(two, 1, False))
        t_two = best_of(repeat, lambda: hash_native(two, 2, False))
        report("hash_files 2 workers vs 1 worker, 2 files", 2 * size / t_two / 1e9, 2 * size / t_one / 1e9,
               kind="throughput", target=1.8)
        t_pipe = best_of(repeat, lambda: hash_native(two, 1, None))
        print(f"     (1 worker with the sha256/xxh3 pipeline: {2 * size / t_pipe / 1e9:.2f} GB/s)")


def bench_is_within(work: Path) -> None:
    root = work / "models"
    (root / "ns" / "org" / "repo" / "v1").mkdir(parents=True, exist_ok=True)
    (work / "models-evil" / "x").mkdir(parents=True, exist_ok=True)
    (root / "ns" / "org" / "repo" / "v1" / "model.onnx").write_bytes(b"x")
    link = root / "ns" / "link"
    if not link.is_symlink():
        link.symlink_to(work / "models-evil")
    paths = [root / "ns" / "org" / "repo" / "v1" / "model.onnx", work / "models-evil" / "x", link / "x",
             root / "ns" / ".." / "ns" / "org", root / "missing", root]

    def reference(r: Path, p: Path) -> bool:
        if not os.path.exists(p):
            return False
        rr, rp = os.path.realpath(r), os.path.realpath(p)
        return os.path.commonpath([rr, rp]) == rr

    ours = [fastio.is_within(root, p) for p in paths]
    theirs = [reference(root, p) for p in paths]
    n = 20000
    t_ours = best_of(3, lambda: [fastio.is_within(root, p) for _ in range(n // len(paths)) for p in paths])
    t_ref = best_of(3, lambda: [reference(root, p) for _ in range(n // len(paths)) for p in paths])
    print(f"\n== is_within: {n} checks, answers identical: {ours == theirs} ==")
    report("is_within vs realpath+commonpath", t_ours, t_ref, kind="speedup", target=3.0)
    if ours != theirs:
        RESULTS.append(("is_within answers", "differ", False))


def bench_xfs(work: Path, size_gib: float, small_files: int) -> None:
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        print("\nSKIP reflink on XFS: needs root and mkfs.xfs (apt-get install xfsprogs)")
        return
    image, mnt = work / "xfs.img", work / "xfs"
    mnt.mkdir(exist_ok=True)
    subprocess.run(["truncate", "-s", f"{int(size_gib * 2.6 + 2)}G", str(image)], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        src = mnt / "src"
        print(f"\n== reflink on a loop-mounted XFS: generating {size_gib} GiB there ==", flush=True)
        make_tree(src, size_gib, small_files)
        total = tree_bytes(src)

        def clean() -> None:
            if (mnt / "dst").exists():
                shutil.rmtree(mnt / "dst")
            os.sync()

        clean()
        t_copy = best_of(2, lambda: fastio.copy_tree(src, mnt / "dst", durable=True), clean)
        ok = t_copy < 0.5
        RESULTS.append(("XFS reflink copy_tree(durable) seconds", f"{t_copy:.3f}", ok))
        print(f"{'PASS' if ok else 'MISS'} copy_tree(durable) of {total / 2**30:.2f} GiB by reflink: {t_copy:.3f} s "
              "(target < 0.5 s)")
        # "One read of the data" is measured in the state verification meets it: a fresh
        # reflinked copy whose pages are not cached. (After drop_caches the loop device reads
        # the disk; right after a copy it reads its page-cached backing file, which here is
        # slower: both are printed.)
        def reflink_then_read() -> None:
            fastio.copy_tree(src, mnt / "dst", durable=True)
            fastio.hash_files([p for p in (mnt / "dst").rglob("*") if p.is_file()])

        t_base = best_of(2, reflink_then_read, clean)
        t_verify = best_of(2, lambda: fastio.copy_tree(src, mnt / "dst", durable=True, verify=True), clean)
        files = [p for p in (mnt / "dst").rglob("*") if p.is_file()]
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
        t_cold = best_of(1, lambda: fastio.hash_files(files))
        ratio = t_verify / t_base
        RESULTS.append(("XFS copy_tree(verify) / (reflink + one hashed read)", f"{ratio:.2f}", ratio <= 1.15))
        verdict = "PASS" if ratio <= 1.15 else "MISS"
        print(f"{verdict} copy_tree(verify,durable) {t_verify:.3f} s vs reflink + one hashed read of the copy "
              f"{t_base:.3f} s: ratio {ratio:.2f} (target: bounded by one read, <= 1.15)")
        print(f"     (the same read after drop_caches: {t_cold:.3f} s)")
        clean()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        image.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--small-files", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir under /var/tmp)")
    ap.add_argument("--only", default="copy,hash,is_within,xfs", help="comma-separated parts to run")
    args = ap.parse_args()
    if not fastio.native_available():
        print("axon.store._fastio is not built: run ./dev.sh test once first", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="axon-bench-", dir=args.dir or "/var/tmp"))
    print(f"work dir {work}; {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    try:
        src = work / "src"
        t0 = time.perf_counter()
        bigs = make_tree(src, args.size_gib, args.small_files)
        print(f"generated {tree_bytes(src) / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s", flush=True)
        parts = set(args.only.split(","))
        if "copy" in parts:
            bench_copy(src, work, args.repeat)
            bench_single_file(bigs[0], work, args.repeat)
        if "hash" in parts:
            bench_hash(bigs, args.repeat)
        if "is_within" in parts:
            bench_is_within(work)
        if "xfs" in parts:
            shutil.rmtree(src)
            bench_xfs(work, args.size_gib, args.small_files)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nsummary:")
    for name, value, ok in RESULTS:
        print(f"  {'PASS' if ok else 'MISS'}  {name}: {value}")
    print(f"peak RSS of this process: {psutil.Process().memory_info().rss / 2**20:.0f} MiB now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
