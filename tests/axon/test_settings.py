from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from axon.errors import ConfigError
from axon.settings import Settings, set_config_value


def test_defaults_and_config_created_on_first_use(tmp_path: Path) -> None:
    home = tmp_path / "h"
    s = Settings.from_env({"HOME": str(home)})
    assert s.home == home / ".axon"
    assert s.cache_dir == home / ".axon" / "cache"
    assert str(s.publish_dir) == "/var/lib/mlos/models"
    assert s.publish_group == "mlos"
    assert s.core_endpoint == "http://127.0.0.1:8080"
    assert s.auto_publish_on_validation is False
    data = yaml.safe_load((home / ".axon" / "config.yaml").read_text())
    assert data["publish_group"] == "mlos"
    assert (home / ".axon" / "config.yaml").stat().st_mode & 0o777 == 0o600


def test_file_then_environment_override(tmp_path: Path) -> None:
    home = tmp_path / "axhome"
    home.mkdir()
    (home / "config.yaml").write_text("cache_dir: /srv/cache\npublish_dir: /srv/prod\ncore_endpoint: http://h:1\n")
    s = Settings.from_env({"AXON_HOME": str(home)})
    assert (str(s.cache_dir), str(s.publish_dir), s.core_endpoint) == ("/srv/cache", "/srv/prod", "http://h:1")
    s = Settings.from_env({"AXON_HOME": str(home), "AXON_CACHE_DIR": "/c", "AXON_PUBLISH_DIR": "/p",
                           "MLOS_CORE_ENDPOINT": "http://core:9/", "HF_TOKEN": "t", "HF_ENDPOINT": "http://hub"})
    assert (str(s.cache_dir), str(s.publish_dir), s.core_endpoint) == ("/c", "/p", "http://core:9")
    assert (s.hf_token, s.hf_endpoint) == ("t", "http://hub")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("cache_dirr: /x\n", "Unknown config key 'cache_dirr'"),
        ("- a\n- b\n", "must hold a mapping"),
        ("cache_dir: [unclosed\n", "not valid YAML"),
        ("auto_publish_on_validation: maybe\n", "must be true or false"),
        ("device: tpu\n", "must be one of auto, cpu, cuda"),
        ("core_endpoint: ftp://x\n", "http(s) URL"),
        ("publish_group: ''\n", "non-empty string"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, content: str, fragment: str) -> None:
    (tmp_path / "config.yaml").write_text(content)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"AXON_HOME": str(tmp_path)})
    assert fragment in str(info.value)


def test_set_config_value_validates_and_persists(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    assert set_config_value(cfg, "auto_publish_on_validation", "yes") is True
    assert set_config_value(cfg, "publish_dir", "/srv/models") == "/srv/models"
    s = Settings.from_env({"AXON_HOME": str(tmp_path)})
    assert s.auto_publish_on_validation is True
    assert str(s.publish_dir) == "/srv/models"
    with pytest.raises(ConfigError, match="Unknown config key 'nope'"):
        set_config_value(cfg, "nope", "1")
    with pytest.raises(ConfigError):
        set_config_value(cfg, "device", "tpu")
    assert yaml.safe_load(cfg.read_text())["publish_dir"] == "/srv/models"
