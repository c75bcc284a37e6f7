"""Helpers every command uses: settings and the output sink."""

from __future__ import annotations

from axon.settings import Settings


def load_settings() -> Settings:
    return Settings.from_env()
