"""``axon config list|get|set``."""

from __future__ import annotations

import click

from axon.cli._context import load_settings
from axon.cli._options import json_option
from axon.cli._output import Output
from axon.errors import ConfigError
from axon.settings import CONFIG_KEYS, set_config_value


@click.group("config")
def config_group() -> None:
    """Show and change ~/.axon/config.yaml (AXON_HOME moves it).

    Environment variables win over the file: AXON_CACHE_DIR, AXON_PUBLISH_DIR, MLOS_CORE_ENDPOINT.
    """


@config_group.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """Print every key with its effective value.

    \b
    Examples:
      axon config list
    """
    settings = load_settings()
    values = settings.as_config()
    Output(json_mode=as_json).result(
        {"config_file": str(settings.config_file), "values": values},
        lambda: "\n".join([f"# {settings.config_file}", *(f"{k}: {v}" for k, v in values.items())]),
    )


@config_group.command("get")
@click.argument("key")
@json_option
def get_cmd(key: str, as_json: bool) -> None:
    """Print one key's effective value.

    \b
    Examples:
      axon config get publish_dir
    """
    if key not in CONFIG_KEYS:
        raise ConfigError(f"Unknown config key {key!r}.", hint=f"Known keys: {', '.join(CONFIG_KEYS)}")
    value = load_settings().as_config()[key]
    Output(json_mode=as_json).result({key: value}, str(value).lower() if isinstance(value, bool) else str(value))


@config_group.command("set")
@click.argument("key")
@click.argument("value")
@json_option
def set_cmd(key: str, value: str, as_json: bool) -> None:
    """Store a key in config.yaml (validated, written atomically).

    \b
    Examples:
      axon config set publish_dir /srv/mlos/models
      axon config set auto_publish_on_validation false
    """
    settings = load_settings()
    stored = set_config_value(settings.config_file, key, value)
    Output(json_mode=as_json).result({key: stored}, f"{key} = {stored}  ({settings.config_file})")
