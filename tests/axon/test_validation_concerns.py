"""``axon.validation``'s concerns one by one (functional, performance, accuracy, resources,
compatibility, the report), on real packages and a real onnxruntime session."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from axon.cache import CachedModel, get_installed
from axon.example_model import build_example_package
from axon.install import install
from axon.model.inference import LocalModel
from axon.settings import Settings
from axon.store.manifest import TensorSpec
from axon.store.spec import parse_spec
from axon.validation import SmokeTestResult, run_tests, validate
from axon.validation.accuracy import accuracy_ok, check_accuracy
from axon.validation.compatibility import check_compatibility, is_compatible
from axon.validation.performance import measure_performance
from axon.validation.report import load_report, passing_report, summary, write_report
from axon.validation.resources import measure_resources, peak_resident_bytes, resident_bytes
from axon.validation.samples import SAMPLE_TEXT, package_reference, sample_inputs
from tests.support.onnx_models import mlp_outputs, write_mlp

ENC, MLP = parse_spec("demo/enc@1"), parse_spec("demo/mlp@1")
REPORT_KEYS = ["spec", "digest", "created", "device", "checks", "onnxruntime", "provider", "performance",
               "accuracy", "resources", "compatibility", "passed"]


@pytest.fixture
def encoder(settings: Settings, tmp_path: Path) -> CachedModel:
    install(ENC, settings, from_=str(build_example_package(tmp_path / "enc")))
    return get_installed(settings.cache_dir, ENC)


@pytest.fixture
def mlp(settings: Settings, tmp_path: Path) -> CachedModel:
    install(MLP, settings, from_=str(write_mlp(tmp_path / "mlp" / "model.onnx").parent))
    return get_installed(settings.cache_dir, MLP)


def _load(cached: CachedModel) -> LocalModel:
    return LocalModel(cached.path, cached.manifest, device="cpu")


# --- samples and functional checks ---------------------------------------------------------------


def test_sample_inputs_are_the_packages_texts_else_synthesised(encoder: CachedModel, mlp: CachedModel) -> None:
    texts = package_reference(encoder.path)["inputs"]["texts"]  # type: ignore[index]
    enc = _load(encoder)
    assert sample_inputs(encoder.path, encoder.manifest, enc, 3) == {"texts": (texts * 3)[:3]}
    assert sample_inputs(mlp.path, encoder.manifest, enc, 2) == {"texts": [SAMPLE_TEXT] * 2}  # a dir without samples
    feeds = sample_inputs(mlp.path, mlp.manifest, _load(mlp), 5)["tensors"]
    assert list(feeds) == ["x"] and feeds["x"].shape == (5, 4) and feeds["x"].dtype == np.float32
    assert package_reference(mlp.path) is None


def test_run_tests_returns_its_checks_and_the_loaded_model(encoder: CachedModel, settings: Settings) -> None:
    run = run_tests(ENC, settings, device="cpu")
    assert isinstance(run, SmokeTestResult) and run.ok
    assert [c.name for c in run.checks] == ["integrity", "onnx.checker", "load", "inference"]
    assert run.model.provider == "CPUExecutionProvider" and run.refused is None
    assert "embeddings [1, 64] float32" in run.checks[-1].detail


# --- performance ----------------------------------------------------------------------------------


def test_measure_performance(mlp: CachedModel) -> None:
    perf = measure_performance(mlp.path, mlp.manifest, _load(mlp), batch_size=4, seconds=0.05)
    assert list(perf) == ["batch1", "batch_size", "throughput_per_s"] and perf["batch_size"] == 4
    b1 = perf["batch1"]
    assert list(b1) == ["p50_ms", "p95_ms", "p99_ms", "samples"]
    assert 20 <= b1["samples"] <= 2000 and 0 < b1["p50_ms"] <= b1["p95_ms"] <= b1["p99_ms"]
    assert perf["throughput_per_s"] > 0


# --- accuracy -------------------------------------------------------------------------------------


def test_accuracy_against_the_package_samples(encoder: CachedModel) -> None:
    acc = check_accuracy(encoder.path, _load(encoder), None)
    assert acc["passed"] is True and acc["source"] == "package samples" and acc["failures"] == []
    assert acc["max_abs_error"] < 1e-4 and (acc["atol"], acc["rtol"]) == (1e-4, 1e-3) and accuracy_ok(acc)


def test_accuracy_against_a_reference_file(mlp: CachedModel, tmp_path: Path) -> None:
    model = _load(mlp)
    x = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"inputs": {"tensors": {"x": x}}, "outputs": {"y": mlp_outputs(np.asarray(x)).tolist()}}))
    acc = check_accuracy(mlp.path, model, ref)
    assert acc["passed"] is True and acc["source"] == str(ref) and acc["max_abs_error"] < 1e-5

    wrong = mlp_outputs(np.asarray(x)).tolist()
    wrong[0][0] += 0.5
    ref.write_text(json.dumps({"inputs": {"tensors": {"x": x}}, "outputs": {"y": wrong, "z": [1.0]},
                               "atol": 0.1, "rtol": 0.0}))
    acc = check_accuracy(mlp.path, model, ref)
    assert acc["passed"] is False and not accuracy_ok(acc) and (acc["atol"], acc["rtol"]) == (0.1, 0.0)
    assert acc["failures"] == ["y: max abs error 0.5", "z: missing"] and acc["max_abs_error"] == pytest.approx(0.5)

    ref.write_text(json.dumps({"inputs": {"tensors": {"x": x}}, "outputs": {"y": [[0.0]]}}))
    assert check_accuracy(mlp.path, model, ref)["failures"] == ["y: shape [2, 3] != [1, 1]"]

    ref.write_text("{broken")
    acc = check_accuracy(mlp.path, model, ref)
    assert acc["passed"] is False and acc["detail"].startswith(f"cannot read reference {str(ref)!r}")


def test_no_reference_is_a_skip_not_a_failure(mlp: CachedModel) -> None:
    acc = check_accuracy(mlp.path, _load(mlp), None)
    assert acc == {"passed": None, "detail": "no reference data (give --reference FILE)"} and accuracy_ok(acc)


# --- resources ------------------------------------------------------------------------------------


def test_measure_resources(mlp: CachedModel) -> None:
    assert 0 < resident_bytes() <= peak_resident_bytes()
    res = measure_resources(mlp.manifest, "CPUExecutionProvider", resident_bytes())
    assert list(res) == ["model_bytes", "rss_before_bytes", "peak_rss_bytes", "requirements_memory_bytes",
                         "within_requirements", "gpu_memory_bytes"]
    assert res["model_bytes"] == mlp.manifest.total_size and res["peak_rss_bytes"] >= res["rss_before_bytes"]
    assert res["gpu_memory_bytes"] is None  # asked of nvidia-smi only on CUDA
    stated = dataclasses.replace(mlp.manifest, requirements={"memory_bytes": 1 << 40})
    assert measure_resources(stated, "CPUExecutionProvider", 0)["within_requirements"] is True
    tiny = dataclasses.replace(mlp.manifest, requirements={"memory_bytes": 1})
    assert measure_resources(tiny, "CPUExecutionProvider", 0)["within_requirements"] is False
    none = dataclasses.replace(mlp.manifest, requirements=None)
    assert measure_resources(none, "CPUExecutionProvider", 0)["within_requirements"] is None


# --- compatibility --------------------------------------------------------------------------------


def test_check_compatibility(encoder: CachedModel) -> None:
    import onnxruntime as ort

    comp = check_compatibility(encoder.manifest, "CPUExecutionProvider")
    assert comp == {"opset": 17, "onnx_max_opset": onnx.defs.onnx_opset_version(), "opset_supported": True,
                    "available_providers": ort.get_available_providers(), "provider": "CPUExecutionProvider",
                    "input_dtypes": ["int64"], "input_dtypes_supported": True}
    assert is_compatible(comp)
    future = dataclasses.replace(encoder.manifest, opset=onnx.defs.onnx_opset_version() + 1)
    assert not check_compatibility(future, "CPUExecutionProvider")["opset_supported"]
    strings = dataclasses.replace(encoder.manifest, inputs=[TensorSpec("text", "string", [-1])])
    comp = check_compatibility(strings, "CPUExecutionProvider")
    assert comp["input_dtypes"] == ["string"] and comp["input_dtypes_supported"] is False and not is_compatible(comp)


# --- the report -----------------------------------------------------------------------------------


def test_report_round_trip(tmp_path: Path) -> None:
    vdir = tmp_path / "v"
    vdir.mkdir()
    assert load_report(vdir) is None
    report = {"spec": "demo/x@1", "digest": "d" * 32, "device": "cpu", "provider": "CPUExecutionProvider",
              "onnxruntime": "1", "checks": [{"name": "integrity", "ok": True, "detail": "3 files"}], "passed": True}
    write_report(vdir, report)
    assert load_report(vdir) == report
    assert (vdir / ".axon" / "validation.txt").read_text() == summary(report) + "\n"
    assert summary(report).splitlines() == [f"validation of demo/x@1 ({'d' * 32}): PASSED",
                                            "device cpu -> CPUExecutionProvider; onnxruntime 1",
                                            "  PASS  integrity      3 files"]
    assert passing_report(vdir, "d" * 32) == report and passing_report(vdir, "e" * 32) is None
    write_report(vdir, {**report, "passed": False})
    assert passing_report(vdir, "d" * 32) is None
    (vdir / ".axon" / "validation.json").write_text("{torn")
    assert load_report(vdir) is None


def test_validate_composes_the_concerns_in_the_reports_order(encoder: CachedModel, settings: Settings) -> None:
    report = validate(ENC, settings, device="cpu", batch_size=2, seconds=0.05)
    assert list(report) == REPORT_KEYS and report["passed"] is True
    assert report["performance"]["batch_size"] == 2 and report["accuracy"]["source"] == "package samples"
    assert json.loads((encoder.path / ".axon" / "validation.json").read_text()) == report


def test_a_failed_functional_check_stops_the_report_there(encoder: CachedModel, settings: Settings) -> None:
    model = encoder.path / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF
    model.chmod(0o644)
    model.write_bytes(bytes(data))
    report = validate(ENC, settings, device="cpu", seconds=0.05)
    assert list(report) == ["spec", "digest", "created", "device", "checks", "onnxruntime", "passed", "provider"]
    assert report["passed"] is False and report["checks"][0]["name"] == "integrity" and not report["checks"][0]["ok"]
