"""``axon version``."""

from __future__ import annotations

import platform

import click

from axon import __version__
from axon.cli._options import json_option
from axon.cli._output import Output


@click.command("version")
@json_option
def version_cmd(as_json: bool) -> None:
    """Print axon's version, the native extension's state and key library versions.

    \b
    Examples:
      axon version --json
    """
    from importlib.metadata import PackageNotFoundError, version

    from axon.store.fastio import native_available

    libs = {}
    for dist in ("onnxruntime-gpu", "onnxruntime", "onnx", "huggingface_hub", "tokenizers", "numpy"):
        try:
            libs[dist] = version(dist)
        except PackageNotFoundError:
            continue
    data = {"axon": __version__, "python": platform.python_version(), "native_fastio": native_available(),
            "libraries": libs}
    Output(json_mode=as_json).result(
        data,
        lambda: "\n".join([f"axon {__version__} (python {data['python']}, native fastio: "
                           f"{'yes' if data['native_fastio'] else 'no, pure-Python fallback'})",
                           *(f"  {k} {v}" for k, v in libs.items())]),
    )
