"""A production repository the test's own user may publish to (root, or the caller's group)."""

from __future__ import annotations

import grp
import os

from axon.settings import Settings, set_config_value


def publishable(settings: Settings) -> Settings:
    """*settings* with its production root created and publish_group the caller's own group."""
    settings.publish_dir.mkdir(parents=True, exist_ok=True)
    set_config_value(settings.config_file, "publish_group", grp.getgrgid(os.getegid()).gr_name)
    return Settings.from_env(dict(os.environ))
