"""One place where configuration is resolved: ``config.yaml`` + environment -> ``Settings``.

Nothing reads ``os.environ`` at import time; callers pass the environment in, so tests hand a
dict instead of patching.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from axon.errors import ConfigError
from axon.store.atomic import atomic_write_text
from axon.store.s3 import S3Location, is_s3_url

__all__ = ["CONFIG_KEYS", "Settings", "load_config_file", "set_config_value"]

DEFAULT_PUBLISH_DIR = "/var/lib/mlos/models"
DEFAULT_CORE_ENDPOINT = "http://127.0.0.1:8080"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    cache_dir: Path
    publish_dir: Path
    publish_group: str = "mlos"
    core_endpoint: str = DEFAULT_CORE_ENDPOINT
    auto_publish_on_validation: bool = False
    device: str = "auto"
    hf_endpoint: str | None = None
    hf_token: str | None = None
    publish_store: S3Location | None = None  # publish_dir: s3://BUCKET/PREFIX (publish_dir is then unused)

    @property
    def config_file(self) -> Path:
        return self.home / "config.yaml"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, create: bool = True) -> Settings:
        """Defaults, overlaid by ``$AXON_HOME/config.yaml``, overlaid by environment variables."""
        env = os.environ if environ is None else environ
        home = Path(env.get("AXON_HOME") or Path(env.get("HOME") or Path.home()) / ".axon").expanduser()
        defaults = {
            "cache_dir": str(home / "cache"),
            "publish_dir": DEFAULT_PUBLISH_DIR,
            "publish_group": "mlos",
            "core_endpoint": DEFAULT_CORE_ENDPOINT,
            "auto_publish_on_validation": False,
            "device": "auto",
        }
        config_file = home / "config.yaml"
        if create and not config_file.exists():
            _create_default_config(home, defaults)
        values: dict[str, Any] = dict(defaults)
        values.update(load_config_file(config_file))
        for var, key in (("AXON_CACHE_DIR", "cache_dir"), ("AXON_PUBLISH_DIR", "publish_dir"),
                         ("MLOS_CORE_ENDPOINT", "core_endpoint")):
            if env.get(var):
                values[key] = env[var]
        publish = str(values["publish_dir"])
        return cls(
            home=home,
            cache_dir=Path(str(values["cache_dir"])).expanduser(),
            publish_dir=Path(publish) if is_s3_url(publish) else Path(publish).expanduser(),
            publish_store=S3Location.parse(publish) if is_s3_url(publish) else None,
            publish_group=str(values["publish_group"]),
            core_endpoint=str(values["core_endpoint"]).rstrip("/"),
            auto_publish_on_validation=bool(values["auto_publish_on_validation"]),
            device=str(values["device"]),
            hf_endpoint=env.get("HF_ENDPOINT") or None,
            hf_token=env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None,
        )

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def as_config(self) -> dict[str, Any]:
        """The user-facing keys and their effective values."""
        values = {key: _display(getattr(self, key)) for key in CONFIG_KEYS}
        if self.publish_store is not None:
            values["publish_dir"] = str(self.publish_store)
        return values


CONFIG_KEYS = ("cache_dir", "publish_dir", "publish_group", "core_endpoint",
               "auto_publish_on_validation", "device")


def _display(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _create_default_config(home: Path, defaults: Mapping[str, Any]) -> None:
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = "# axon configuration; see `axon config list` and docs/cli.md\n" + yaml.safe_dump(
            dict(defaults), sort_keys=False
        )
        atomic_write_text(home / "config.yaml", text, mode=0o600)
    except OSError:
        pass  # a read-only home still gets the defaults; `axon config set` reports the real error


def _coerce(key: str, value: Any, source: str) -> Any:
    if key == "auto_publish_on_validation":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"Config key 'auto_publish_on_validation' in {source} must be true or false, "
                          f"not {value!r}.")
    if not isinstance(value, str | int | float) or isinstance(value, bool) or str(value).strip() == "":
        raise ConfigError(f"Config key {key!r} in {source} must be a non-empty string, not {value!r}.")
    value = str(value).strip()
    if key == "device" and value not in DEVICES:
        raise ConfigError(f"Config key 'device' in {source} must be one of {', '.join(DEVICES)}, not {value!r}.")
    if key == "core_endpoint" and not value.startswith(("http://", "https://")):
        raise ConfigError(f"Config key 'core_endpoint' in {source} must be an http(s) URL, not {value!r}.")
    return value


def load_config_file(path: Path) -> dict[str, Any]:
    """Read and validate config.yaml; a missing file is an empty config.

    Raises:
        ConfigError: on unreadable YAML, a non-mapping document, an unknown key or a bad value.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {exc}".splitlines()[0],
                          hint=f"Fix or delete {path}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {str(path)!r} must hold a mapping of keys to values.",
                          hint=f"Fix or delete {path}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            raise ConfigError(f"Unknown config key {key!r} in {str(path)!r}.",
                              hint=f"Known keys: {', '.join(CONFIG_KEYS)}")
        out[key] = _coerce(key, value, repr(str(path)))
    return out


def set_config_value(path: Path, key: str, value: str) -> Any:
    """Validate and store one key in config.yaml atomically; returns the stored value."""
    if key not in CONFIG_KEYS:
        raise ConfigError(f"Unknown config key {key!r}.", hint=f"Known keys: {', '.join(CONFIG_KEYS)}")
    current = load_config_file(path)
    coerced = _coerce(key, value, "the command line")
    current[key] = coerced
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# axon configuration; see `axon config list` and docs/cli.md\n" + yaml.safe_dump(
        current, sort_keys=False
    )
    atomic_write_text(path, text, mode=0o600)
    return coerced
