"""``mlos-core`` command line."""

from __future__ import annotations

import sys

import click

from mlos_core import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="mlos-core")
def cli() -> None:
    """MLOS Core: serve ONNX models from the production repository over HTTP."""


@cli.command("serve")
def serve() -> None:
    """Start the inference server (not built yet: tracked in issue #5)."""
    click.echo("error: `mlos-core serve` is not implemented yet (issue #5).", err=True)
    sys.exit(1)


def main() -> None:
    cli(prog_name="mlos-core")
