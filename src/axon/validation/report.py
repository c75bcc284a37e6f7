"""The validation report beside the cached version: ``.axon/validation.json`` and its text form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from axon.store.atomic import atomic_write_text

__all__ = ["load_report", "passing_report", "summary", "write_report"]


def summary(report: dict[str, Any]) -> str:
    lines = [f"validation of {report['spec']} ({report['digest']}): {'PASSED' if report['passed'] else 'FAILED'}",
             f"device {report['device']} -> {report.get('provider')}; onnxruntime {report['onnxruntime']}"]
    lines += [f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']:<14} {c['detail']}" for c in report["checks"]]
    perf = report.get("performance")
    if perf:
        b1 = perf["batch1"]
        lines.append(f"  perf   batch 1: p50 {b1['p50_ms']} ms, p95 {b1['p95_ms']} ms, p99 {b1['p99_ms']} ms; "
                     f"batch {perf['batch_size']}: {perf['throughput_per_s']}/s")
    acc = report.get("accuracy")
    if acc:
        state = {True: "PASS", False: "FAIL", None: "SKIP"}[acc.get("passed")]
        if "outputs" in acc:  # against the library: per output
            lines.append(f"  {state}  accuracy      {acc['source']}, {acc['texts']} sample texts")
            for name, st in acc["outputs"].items():
                cos = f", min cosine {st['min_cosine']:.6f}" if st["min_cosine"] is not None else ""
                lines.append(f"        {name}: max abs diff {st['max_abs_diff']:.3g}{cos}")
        else:
            lines.append(f"  {state}  accuracy      " + (
                f"max abs {acc.get('max_abs_error', 0):.3g}, max rel {acc.get('max_rel_error', 0):.3g} "
                f"({acc.get('source')})" if acc.get("passed") is not None else acc.get("detail", "")))
        lines += [f"        {f}" for f in acc.get("failures", [])]
    res = report.get("resources")
    if res:
        lines.append(f"  mem    peak RSS {res['peak_rss_bytes'] / 2**20:.0f} MiB "
                     f"(model {res['model_bytes'] / 2**20:.1f} MiB)")
    comp = report.get("compatibility")
    if comp:
        lines.append(f"  compat opset {comp['opset']} (onnx supports <= {comp['onnx_max_opset']}), providers "
                     f"{', '.join(comp['available_providers'])}")
    return "\n".join(lines)


def write_report(vdir: Path, report: dict[str, Any]) -> None:
    """Beside the package, outside its file list: writing it never changes the integrity digest."""
    d = vdir / ".axon"
    d.mkdir(exist_ok=True)
    atomic_write_text(d / "validation.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(d / "validation.txt", summary(report) + "\n")


def load_report(vdir: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((vdir / ".axon" / "validation.json").read_text()))
    except (OSError, ValueError):
        return None


def passing_report(vdir: Path, digest: str) -> dict[str, Any] | None:
    """The stored report when it passed for exactly *digest* (the content now installed)."""
    report = load_report(vdir)
    if report and report.get("passed") and report.get("digest") == digest:
        return report
    return None
