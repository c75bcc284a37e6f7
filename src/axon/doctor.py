"""``axon doctor``'s checks: onnxruntime and CUDA, native fastio, the cache and production paths,
publish-group membership and MLOS Core. Each check is ``{name, ok, detail[, hint]}``."""

from __future__ import annotations

import os
import stat
from typing import Any

from axon.settings import Settings

__all__ = ["run_checks"]


def _path_check(name: str, path: Any, *, want_write: bool, hint: str) -> dict[str, Any]:
    p = path
    exists = p.exists()
    info: dict[str, Any] = {"name": name, "path": str(p), "exists": exists}
    if exists:
        st = p.stat()
        info.update(mode=oct(stat.S_IMODE(st.st_mode)), owner_uid=st.st_uid, group_gid=st.st_gid,
                    writable=os.access(p, os.W_OK))
        info["ok"] = info["writable"] or not want_write
    else:
        info["ok"] = False
    if not info["ok"]:
        info["hint"] = hint
    return info


def run_checks(settings: Settings) -> list[dict[str, Any]]:
    """Every check, in the order ``axon doctor`` prints them (a failing one never stops the rest)."""
    import onnxruntime as ort

    from axon.errors import AxonError
    from axon.permissions import caller, group_id
    from axon.production import read_repository_group
    from axon.store.fastio import native_available

    checks: list[dict[str, Any]] = []
    providers = ort.get_available_providers()
    checks.append({"name": "onnxruntime", "ok": True, "detail": f"{ort.__version__}, providers {', '.join(providers)}"})
    cuda = {"name": "cuda", "ok": True, "detail": "no NVIDIA driver: models run on CPU"}
    if os.path.exists("/proc/driver/nvidia/version"):
        try:
            from axon.example_model import EncoderConfig, build_encoder_onnx
            from axon.model.inference import providers_for

            model = build_encoder_onnx(EncoderConfig(layers=1), 200).SerializeToString()
            sess = ort.InferenceSession(model, providers=providers_for("cuda"))
            active = sess.get_providers()[0]
            cuda = {"name": "cuda", "ok": active == "CUDAExecutionProvider", "detail": f"session runs on {active}"}
            if not cuda["ok"]:
                cuda["hint"] = ("Install onnxruntime-gpu with its CUDA and cuDNN libraries: "
                                "pip install 'onnxruntime-gpu[cuda,cudnn]'")
        except Exception as exc:
            cuda = {"name": "cuda", "ok": False, "detail": f"{type(exc).__name__}: {exc}".splitlines()[0],
                    "hint": "Check the driver (nvidia-smi) and the CUDA libraries"}
    checks.append(cuda)
    checks.append({"name": "native fastio", "ok": native_available(),
                   "detail": "axon.store._fastio built" if native_available() else "pure-Python fallback (slower)",
                   **({} if native_available() else {"hint": "Reinstall with a C compiler: pip install -e ."})})
    cache = _path_check("dev cache", settings.cache_dir, want_write=True,
                        hint=f"It is created on first install; check permissions of {settings.cache_dir.parent}")
    cache["ok"] = cache["ok"] or not settings.cache_dir.exists()
    checks.append({**cache, "detail": cache["path"]})
    prod = _path_check("production repository", settings.publish_dir, want_write=True,
                       hint="Create it once with: sudo axon setup-production")
    checks.append({**prod, "detail": prod["path"] + (f" (mode {prod.get('mode')})" if prod["exists"] else
                                                       " (missing)")})
    who = caller()
    try:
        group = read_repository_group(settings.publish_dir) or settings.publish_group
    except AxonError:
        group = settings.publish_group
    gid = group_id(group)
    member = who.is_root or (gid is not None and gid in who.groups)
    checks.append({"name": "publish group", "ok": member,
                   "detail": f"{who.name} {'is' if member else 'is not'} allowed to publish (group "
                             f"{group!r}{'' if gid is not None else ', missing'})",
                   **({} if member else {"hint": f"sudo usermod -aG {group} {who.name}"})})
    try:
        from axon.core_client import CoreClient

        health = CoreClient(settings).health()
        checks.append({"name": "MLOS Core", "ok": True,
                       "detail": f"{settings.core_endpoint}: {health.get('status')}, {health.get('models')} model(s)"})
    except Exception as exc:
        checks.append({"name": "MLOS Core", "ok": False, "detail": str(exc).splitlines()[0],
                       "hint": "Start it with: mlos-core serve (or set core_endpoint)"})

    return checks
