"""`internvl-search keys`: make API keys and the hashed entries that configure them.

The server only needs `scope:sha256:<hex>` entries (in INTERNVL_SEARCH_API_KEYS or the API_KEYS_FILE), so the key
itself is shown once, to whoever runs `keys new`, and is stored nowhere on the server.
"""

from __future__ import annotations

import getpass
import secrets
import sys

import typer

from .settings import API_KEY_SCOPES, key_digest

keys_cli = typer.Typer(help="Make API keys and their hashed configuration entries.", no_args_is_help=True)


def _check_scope(scope: str) -> str:
    if scope not in API_KEY_SCOPES:
        raise typer.BadParameter(f"scope must be one of {list(API_KEY_SCOPES)}")
    return scope


@keys_cli.command("new")
def keys_new(scope: str = typer.Option("read", callback=_check_scope, help="read, write or admin.")) -> None:
    """Print a new random key (give it to the client) and its entry for the server's keys file."""
    key = secrets.token_urlsafe(32)
    typer.echo(f"key:   {key}")
    typer.echo(f"entry: {scope}:sha256:{key_digest(key).hex()}")


@keys_cli.command("hash")
def keys_hash(
    scope: str = typer.Option("read", callback=_check_scope, help="read, write or admin."),
) -> None:
    """Read a key from standard input (not the command line, which other users may see) and print its entry."""
    key = (getpass.getpass("key: ") if sys.stdin.isatty() else sys.stdin.readline()).strip()
    if len(key) < 16:
        raise typer.BadParameter("keys must be at least 16 characters long")
    typer.echo(f"{scope}:sha256:{key_digest(key).hex()}")
