"""Arguments and options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from axon.store.spec import ModelSpec, parse_spec

F = TypeVar("F", bound=Callable[..., Any])


class SpecType(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click; we support 8.1
    name = "SPEC"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> ModelSpec:
        if isinstance(value, ModelSpec):
            return value
        return parse_spec(str(value))  # InvalidSpecError -> exit 2 with our message


SPEC = SpecType()


def spec_argument(f: F) -> F:
    return click.argument("spec", type=SPEC, metavar="NS/NAME[@VERSION]")(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")(f)


def quiet_option(f: F) -> F:
    return click.option("-q", "--quiet", is_flag=True, help="Print only errors.")(f)
