"""The one output sink: results on stdout (human or one JSON document), the rest on stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Output", "TerminalReporter", "human_bytes"]


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class TerminalReporter:
    """Progress on stderr: a live bar on a TTY, one summary line per large task otherwise."""

    REDRAW_S = 0.1
    SUMMARY_MIN_BYTES = 8 << 20

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self._label = ""
        self._total: int | None = None
        self._done = 0
        self._t0 = 0.0
        self._last = 0.0
        self._active = False

    def stage(self, message: str) -> None:
        if not self.quiet:
            self._clear()
            print(f"→ {message}", file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        self._clear()
        print(f"warning: {message}", file=self.stream, flush=True)

    def start(self, label: str, total: int | None) -> None:
        self._label, self._total, self._done = label, total, 0
        self._t0 = self._last = time.monotonic()
        self._active = True

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        if self.quiet or not self.tty:
            return
        now = time.monotonic()
        if now - self._last >= self.REDRAW_S:
            self._last = now
            self._draw(now)

    def _rate(self, now: float) -> float:
        return self._done / max(now - self._t0, 1e-6)

    def _draw(self, now: float) -> None:
        rate = self._rate(now)
        if self._total:
            pct = min(100.0, 100.0 * self._done / self._total)
            width = 24
            fill = int(width * pct / 100)
            eta = (self._total - self._done) / rate if rate > 0 else 0
            line = (f"  {self._label[:32]:<32} [{'#' * fill}{'.' * (width - fill)}] {pct:5.1f}% "
                    f"{human_bytes(self._done)}/{human_bytes(self._total)} {human_bytes(rate)}/s ETA {eta:4.0f}s")
        else:
            line = f"  {self._label[:32]:<32} {human_bytes(self._done)} {human_bytes(rate)}/s"
        self.stream.write("\r" + line[:150] + "\x1b[K")
        self.stream.flush()

    def _clear(self) -> None:
        if self.tty and self._active:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def finish(self) -> None:
        if not self._active:
            return
        self._active = False
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[K")
        if self._done >= self.SUMMARY_MIN_BYTES or self.tty:
            print(f"  {self._label}: {human_bytes(self._done)} in {now - self._t0:.1f}s "
                  f"({human_bytes(self._rate(now))}/s)", file=self.stream, flush=True)


class Output:
    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.reporter = TerminalReporter(quiet=quiet or json_mode)

    def result(self, data: Any, human: Callable[[], str] | str | None = None) -> None:
        """Print the command's result: exactly one JSON document in --json mode."""
        if self.json_mode:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        elif human is not None and not self.quiet:
            text = human() if callable(human) else human
            if text:
                sys.stdout.write(text.rstrip("\n") + "\n")
        sys.stdout.flush()

    def info(self, message: str) -> None:
        if not self.json_mode and not self.quiet:
            print(message, file=sys.stderr, flush=True)


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
