"""`attnent cache`: the folder where the tables of run files read before are kept."""

from __future__ import annotations

import typer

from attn_entropy_cli.cli import app

cache_app = typer.Typer(
    help="The cache of run files read before (logs and event files), kept outside the runs.",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")


@cache_app.command("clear")
def clear() -> None:
    """Remove every cached table; the next read of each run file reads it again.

    Example: attnent cache clear
    """
    from attn_entropy_cli.runs import cache

    removed = cache.clear()
    typer.echo(
        f"removed {removed.entries} cached tables ({removed.bytes / 1e6:.1f} MB) "
        f"from {removed.folder}"
    )


@cache_app.command("info")
def info() -> None:
    """Print the cache folder, its number of cached tables and their size.

    The folder is $ATTNENT_CACHE_DIR, else $XDG_CACHE_HOME/attnent, else ~/.cache/attnent.

    Example: attnent cache info
    """
    from attn_entropy_cli.runs import cache

    found = cache.info()
    typer.echo(f"{found.folder}: {found.entries} cached tables, {found.bytes / 1e6:.1f} MB")
