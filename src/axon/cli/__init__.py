"""``axon`` command line: a lazy click group and the one place that maps errors to exit codes.

Subcommands are resolved from a name -> "module:function" table so ``axon --help`` imports
nothing heavy (no onnx, numpy or huggingface_hub).
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

import click

from axon import __version__
from axon.errors import FAILED, OK, PERMISSION, USAGE, AxonError

COMMANDS: dict[str, tuple[str, str]] = {
    "install": ("axon.cli.install", "install_cmd"),
    "update": ("axon.cli.install", "update_cmd"),
    "list": ("axon.cli.cache", "list_cmd"),
    "info": ("axon.cli.cache", "info_cmd"),
    "verify": ("axon.cli.cache", "verify_cmd"),
    "remove": ("axon.cli.cache", "remove_cmd"),
    "cache": ("axon.cli.cache", "cache_group"),
    "config": ("axon.cli.config", "config_group"),
    "version": ("axon.cli.version", "version_cmd"),
    "demo": ("axon.cli.demo", "demo_cmd"),
    "publish": ("axon.cli.publish", "publish_cmd"),
    "unpublish": ("axon.cli.publish", "unpublish_cmd"),
    "rollback": ("axon.cli.publish", "rollback_cmd"),
    "published": ("axon.cli.publish", "published_cmd"),
    "audit": ("axon.cli.publish", "audit_cmd"),
    "setup-production": ("axon.cli.publish", "setup_production_cmd"),
    "register": ("axon.cli.core", "register_cmd"),
    "deploy": ("axon.cli.deploy", "deploy_cmd"),
    "undeploy": ("axon.cli.deploy", "undeploy_cmd"),
    "deployments": ("axon.cli.deploy", "deployments_cmd"),
    "test": ("axon.cli.check", "smoke_test_cmd"),
    "validate": ("axon.cli.check", "validate_cmd"),
    "run": ("axon.cli.check", "run_cmd"),
    "test-integration": ("axon.cli.check", "integration_check_cmd"),
    "doctor": ("axon.cli.doctor", "doctor_cmd"),
    "unregister": ("axon.cli.core", "unregister_cmd"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module = importlib.import_module(target[0])
        cmd: click.Command = getattr(module, target[1])
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="axon")
@click.option("--debug", is_flag=True, envvar="AXON_DEBUG", help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """axon: install models into your dev cache, test them, and promote them to production.

    \b
    Examples:
      axon install hf/sentence-transformers/all-MiniLM-L6-v2
      axon install acme/ranker@2.1.0 --from ./ranker-onnx/
      axon list
      axon verify acme/ranker@2.1.0
    """
    ctx.obj = {"debug": debug}


def _print_error(message: str, hint: str | None) -> None:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``axon`` console script: exit codes are set here and only here."""
    debug = os.environ.get("AXON_DEBUG") == "1" or "--debug" in (argv if argv is not None else sys.argv[1:])
    code = OK
    try:
        rv = cli.main(args=argv, prog_name="axon", standalone_mode=False)
        if isinstance(rv, int):
            code = rv
    except click.exceptions.Abort:
        # click turns Ctrl-C (and EOF at a prompt) into Abort.
        print("Interrupted; nothing partial was left in place (partial downloads resume next time).",
              file=sys.stderr)
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except AxonError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        _print_error(exc.message, exc.hint)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("\nInterrupted; nothing partial was left in place (partial downloads resume next time).",
              file=sys.stderr)
        code = 130
    except BrokenPipeError:
        # stdout closed early (e.g. `axon list | head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = OK
    except PermissionError as exc:
        _print_error(f"Permission denied: {exc.filename or exc}.", "Check the ownership and modes of that path.")
        code = PERMISSION
    except OSError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        what = f" ({exc.filename!r})" if exc.filename else ""
        hint = "Free some space and run the command again." if exc.errno in (errno.ENOSPC, errno.EDQUOT) else None
        _print_error(f"{exc.strerror or exc}{what}.", hint)
        code = FAILED
    except Exception as exc:  # last resort: one line, not a traceback
        if debug:
            import traceback

            traceback.print_exc()
        _print_error(f"Unexpected {type(exc).__name__}: {exc}", "Run again with --debug (or AXON_DEBUG=1) for details.")
        code = FAILED
    sys.exit(code)


