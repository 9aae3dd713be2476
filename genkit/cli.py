"""The ``genkit`` command line. Every user error ends as one line on stderr and exit code 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from genkit import registry
from genkit.errors import GenkitError

KINDS = {"models": registry.models, "priors": registry.priors, "losses": registry.losses, "noise": registry.noise}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks (for developers).")
@click.version_option(package_name="genkit")
def cli(debug: bool) -> None:
    """genkit: train, sample and benchmark autoencoders and VAEs."""


@cli.command("list")
@click.argument("pattern", required=False)
@click.option("--kind", type=click.Choice(sorted(KINDS)), default="models", show_default=True, help="Which plugins.")
def list_cmd(pattern: str | None, kind: str) -> None:
    """List registered plugins (optionally matching a PATTERN such as '*vae*'); broken ones are flagged."""
    reg = KINDS[kind]
    rows = [(info, obj) for info, obj in reg.status() if pattern is None or _match(info.name, pattern)]
    if not rows:
        click.echo(f"no {kind} plugins" + (f" match {pattern!r}" if pattern else ""))
        return
    width = max(len(info.name) for info, _ in rows)
    for info, obj in rows:
        if isinstance(obj, registry.FailedPlugin):
            click.echo(f"{info.name:<{width}}  BROKEN  {obj}")
        else:
            click.echo(f"{info.name:<{width}}  {_first_line(obj)}  [{info.distribution}]")


def _match(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(name, pattern)


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


@cli.command()
@click.argument("name")
def info(name: str) -> None:
    """Describe model NAME: what it is, who provides it, its options with defaults."""
    cls = registry.get_model_class(name)
    click.echo(f"{name}: {cls.describe()}")
    click.echo(f"provided by: {registry.models.info(name).distribution}")
    click.echo("options (genkit run NAME --OPTION VALUE):")
    for field, kind, default, help_text in cls.config_class.describe_fields():
        click.echo(f"  --{field.replace('_', '-'):<16} {kind:<6} default {default!s:<8} {help_text}")


def _echo_error(message: str) -> None:
    click.echo(f"genkit: error: {message}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code; errors become one line on stderr (``--debug`` re-raises)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("GENKIT_DEBUG", "") not in ("", "0")
    try:
        result = cli.main(args=args, prog_name="genkit", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.ClickException as exc:
        _echo_error(exc.format_message().replace("\n", " "))
        return exc.exit_code
    except click.Abort:
        _echo_error("aborted")
        return 130
    except GenkitError as exc:
        if debug:
            raise
        _echo_error(str(exc).replace("\n", " "))
        return 2
    except KeyboardInterrupt:
        _echo_error("interrupted; a run can be continued with --resume RUN_DIR")
        return 130
    except Exception as exc:  # a bug, not a user error: still one line, with the way to see more
        if debug:
            raise
        _echo_error(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return 1
