"""The `internvl-search` command line: one typer app, each command a thin call into the layers below."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from . import __version__
from .settings import SettingsError, load_settings

cli = typer.Typer(
    name="internvl-search",
    help="Vision embedding and retrieval with InternVL-C/G and open_clip encoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_cli = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
cli.add_typer(config_cli, name="config")
db_cli = typer.Typer(help="Manage the catalog database schema.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")


class CliError(Exception):
    """A user mistake reported as one line on stderr with exit status 2."""


@cli.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


@config_cli.command("show")
def config_show(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Print every setting (env prefix INTERNVL_SEARCH_) with secrets masked."""
    values = load_settings().public_dict()
    if as_json:
        typer.echo(json.dumps(values, indent=2))
        return
    width = max(len(k) for k in values)
    for key, value in values.items():
        typer.echo(f"{key:<{width}}  {value}")


@db_cli.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision (default: the newest).")) -> None:
    """Create or migrate the catalog schema (INTERNVL_SEARCH_DATABASE_URL) to `revision`."""
    settings = load_settings()
    _upgrade_catalog(settings, revision)
    typer.echo(f"catalog at revision {revision}: {settings.public_dict()['database_url']}")


@db_cli.command("current")
def db_current() -> None:
    """Print the catalog's schema revision and the one this code expects."""
    from indexer.catalog import migrate

    settings = load_settings()
    current = _catalog_call(lambda: migrate.current_revision(settings.resolved_database_url()))
    typer.echo(f"current: {current or 'none (empty database)'}\nexpected: {', '.join(migrate.head_revisions())}")


def _upgrade_catalog(settings, revision: str = "head") -> None:  # noqa: ANN001 - Settings
    from indexer.catalog import migrate

    if settings.database_url is None:  # the default SQLite file lives in the data dir, which may not exist yet
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    _catalog_call(lambda: migrate.upgrade(settings.resolved_database_url(), revision))


def _catalog_call(fn):  # noqa: ANN001, ANN202
    """Run a catalog operation; database and migration failures become one-line CLI errors."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return fn()
    except CommandError as exc:
        raise CliError(f"migration failed: {exc}") from None
    except SQLAlchemyError as exc:
        raise CliError(f"catalog database error: {str(exc).splitlines()[0]}") from None


@cli.command()
def embed(
    images: list[Path] = typer.Argument(None, help="Image files to embed (one row each, in order)."),
    text: list[str] = typer.Option(None, "--text", "-t", help="A text to embed; repeat for several."),
    texts_file: Path | None = typer.Option(None, help="A UTF-8 file with one text per line."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the float32 (n, dim) .npy array."),
    encoder: str | None = typer.Option(None, help="Encoder name (default: INTERNVL_SEARCH_ENCODER)."),
    checkpoint: str | None = typer.Option(
        None, help="Hub id or local dir (default: INTERNVL_SEARCH_ENCODER_CHECKPOINT)."
    ),
) -> None:
    """Embed texts (any language) or image files into L2-normalised vectors saved as .npy."""
    texts = list(text or [])
    if texts_file is not None:
        texts += _read_lines(texts_file)
    if bool(texts) == bool(images):
        raise CliError("give either image files or texts (--text/--texts-file), not both and not neither")
    settings = load_settings()
    model = _create_encoder(settings, encoder, checkpoint)
    vectors = model.encode_texts(texts) if texts else model.encode_images([_open_image(p) for p in images])
    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, vectors)
    typer.echo(f"wrote {vectors.shape[0]} x {vectors.shape[1]} vectors ({model.name}) to {out}")


def _read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read texts file {path}: {exc}") from None


def _open_image(path: Path):  # noqa: ANN202 - PIL.Image.Image, imported lazily
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise CliError(f"cannot read image {path}: {exc}") from None


def _create_encoder(settings, name: str | None, checkpoint: str | None):  # noqa: ANN001, ANN202
    from internvl_models import ModelError, create_encoder

    try:
        return create_encoder(
            name or settings.encoder,
            checkpoint or settings.encoder_checkpoint,
            device=settings.device,
            dtype=settings.dtype,
            image_batch_size=settings.image_batch_size,
            text_batch_size=settings.text_batch_size,
        )
    except ModelError as exc:
        raise CliError(str(exc)) from None


@cli.command()
def serve(
    host: str | None = typer.Option(None, help="Bind address (default: INTERNVL_SEARCH_HOST or 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default: INTERNVL_SEARCH_PORT or 8000)."),
) -> None:
    """Run the HTTP service."""
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = load_settings(**overrides)
    _serve(settings)


@cli.command()
def demo() -> None:
    """Prepare the embedded defaults (data dir, catalog) and run the service: what `make run` does."""
    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _upgrade_catalog(settings)
    base = f"http://{settings.host}:{settings.port}"
    typer.echo(
        f"internvl-search {__version__}: data in {settings.data_dir.resolve()}\n"
        f"  open   {base}/docs      (API documentation)\n"
        f"  try    curl {base}/healthz\n"
        f"         curl {base}/readyz\n"
        "Stop with Ctrl-C."
    )
    _serve(settings)


def _serve(settings) -> None:  # noqa: ANN001 - Settings, imported lazily with the app
    import uvicorn

    from .logs import configure_logging
    from .main import create_app

    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


def main() -> None:
    """Entry point: user mistakes become one clear line and exit status 2, never a traceback."""
    try:
        cli()
    except (SettingsError, CliError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
