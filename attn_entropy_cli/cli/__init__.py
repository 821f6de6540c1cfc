"""The `attnent` command line: parse options, call the library, render results.

Heavy modules (torch, matplotlib) are imported inside the commands that need them, so
`attnent --help`, `export` and `compare` start quickly.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer

from attn_entropy_cli.errors import AttnentError, AttnentWarning

app = typer.Typer(
    name="attnent",
    help="Attention entropy for transformer training runs: per layer and head, "
    "from checkpoints, training logs and TensorBoard files.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def print_version(value: bool) -> None:
    """Print the version and stop, before any command runs."""
    if value:
        from attn_entropy_cli import __version__

        print(f"attnent {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        is_eager=True,
        callback=print_version,
    ),
) -> None:
    """Attention entropy for transformer training runs."""


# the commands register themselves on `app`
from attn_entropy_cli.cli import cache as _cache  # noqa: E402, F401
from attn_entropy_cli.cli import compute as _compute  # noqa: E402, F401
from attn_entropy_cli.cli import runs as _runs  # noqa: E402, F401


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"Warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; library errors become one `Error:` line on stderr and an exit code."""
    warnings.showwarning = _show_warning
    # only attnent's own warnings reach the user; libraries' deprecations are noise here
    warnings.simplefilter("ignore")
    warnings.simplefilter("always", AttnentWarning)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="attnent", standalone_mode=False)
    except AttnentError as error:
        if os.environ.get("ATTNENT_DEBUG"):
            raise
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.TyperException as error:
        sys.exit(usage_error(error))
    except (KeyboardInterrupt, typer.Abort):
        print("Error: interrupted.", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
    sys.exit(code if isinstance(code, int) else 0)


def usage_error(error: typer.TyperException) -> int:
    """Print a command-line parsing error as one line; return its exit code."""
    context = getattr(error, "ctx", None)
    if type(error).__name__ == "NoArgsIsHelpError" and context is not None:
        print(context.get_help(), file=sys.stderr)
        return 2
    message = error.format_message().rstrip(".")
    if context is not None:
        hint = f"Run '{context.command_path} --help' for the options"
    else:
        hint = "Run 'attnent --help' for the commands"
    print(f"Error: {message}. {hint}.", file=sys.stderr)
    return getattr(error, "exit_code", 2)
    sys.exit(0)
