"""The `internvl-search` command line: one typer app, each command a thin call into the layers below."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from . import __version__
from .cli_keys import keys_cli
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
collections_cli = typer.Typer(help="Create, list and delete collections; switch their encoder.", no_args_is_help=True)
cli.add_typer(collections_cli, name="collections")
cli.add_typer(keys_cli, name="keys")


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
    _catalog_call(lambda: migrate.upgrade(settings.resolved_database_url(), revision, data_dir=settings.data_dir))


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
            compile_images=settings.compile_images,
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
def demo(
    scenes: int = typer.Option(300, min=1, max=100_000, help="Shapes-world scenes in the demo corpus."),
    photos: Path | None = typer.Option(None, help="A folder of photos to index as well."),
) -> None:
    """Index a shapes-world demo corpus with the default encoder, show searches, run the service (`make run`)."""
    from .demo import example_searches, prepare_demo

    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with _engine(settings) as engine:
        if _engine_call(lambda: prepare_demo(engine, settings.data_dir, scenes, photos, typer.echo)):
            _engine_call(lambda: example_searches(engine, typer.echo))
    base = f"http://{settings.host}:{settings.port}"
    typer.echo(
        f"\ninternvl-search {__version__}: data in {settings.data_dir.resolve()}\n"
        f"  open   {base}/          (search page)\n"
        f"         {base}/docs      (API documentation)\n"
        f"  try    curl {base}/healthz\n"
        f"         internvl-search search 'ein roter Kreis' -c demo\n"
        "Stop with Ctrl-C."
    )
    _serve(settings)


def _serve(settings) -> None:  # noqa: ANN001 - Settings, imported lazily with the app
    import uvicorn

    from .logs import configure_logging
    from .main import create_app

    configure_logging(settings.log_level, settings.log_format)
    # On SIGTERM uvicorn stops accepting, lets requests in flight finish (each is bounded by the request timeout),
    # then the lifespan closes the engine: running jobs stop at a batch boundary and go back to `queued`.
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_config=None,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 1,
    )  # fmt: skip


# --- engine commands: index, collections, search ------------------------------------------------------------------

MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv")


def _engine(settings, *, load_collections: bool = False):  # noqa: ANN001, ANN202 - Settings -> indexer.Engine
    """An open `Engine` built from `settings`: the one place where CLI settings become an `EngineConfig`.

    The embedded SQLite catalog is created or migrated on the way (it belongs to this data dir); a configured
    database must be migrated explicitly with `db upgrade`, and the engine says so if it is not.
    """
    from indexer import Engine, EngineConfig

    if settings.database_url is None:
        _upgrade_catalog(settings)
    config = EngineConfig(
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        encoder=settings.encoder,
        encoder_checkpoint=settings.encoder_checkpoint,
        device=settings.device,
        dtype=settings.dtype,
        image_batch_size=settings.image_batch_size,
        text_batch_size=settings.text_batch_size,
        compile_images=settings.compile_images,
        query_cache_entries=settings.query_cache_entries,
        allowed_roots=tuple(settings.allowed_root_paths()),
        allow_private_urls=settings.allow_private_urls,
        url_connect_timeout_s=settings.url_connect_timeout_s,
        url_read_timeout_s=settings.url_read_timeout_s,
        url_total_timeout_s=settings.url_total_timeout_s,
        url_max_redirects=settings.url_max_redirects,
        url_allowed_networks=tuple(settings.url_allowed_network_list()),
        decode_timeout_s=settings.decode_timeout_s,
        decode_workers=settings.decode_workers,
        reduce_jpeg_decode=settings.reduce_jpeg_decode,
        max_image_pixels=settings.max_image_pixels,
        max_source_bytes=settings.max_upload_bytes,
        migrate_max_regression=settings.migrate_max_regression,
        index_shards=settings.index_shards,
        index_on_disk=settings.index_on_disk,
        index_mmap=settings.index_mmap,
    )
    # Jobs interrupted earlier are left to the service (or `index --resume`): a short CLI call must not start them.
    return _engine_call(lambda: Engine(config).open(resume_jobs=False, load_collections=load_collections))


def _engine_call(fn):  # noqa: ANN001, ANN202
    """Run an engine operation; refusals of the engine and of the model library become one-line CLI errors."""
    from indexer import IndexerError
    from internvl_models import ModelError

    try:
        return _catalog_call(fn)
    except (IndexerError, ModelError) as exc:
        raise CliError(str(exc)) from None


def _json_object(text: str | None, option: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError(f"{option} must be a JSON object, got {type(value).__name__}")
    return value


def _ingest_items(sources: list[str]) -> tuple[list, list[Path]]:
    """CLI arguments -> IngestItems, plus the folders this operator's job may read (each path given, resolved)."""
    from indexer import IngestItem

    items, roots = [], []
    for source in sources:
        if source.startswith(("http://", "https://")):
            items.append(IngestItem.url(source))
            continue
        path = Path(source).expanduser()
        if not path.exists():
            raise CliError(f"no such file or folder: {source}")
        path = path.resolve()
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            items.append(IngestItem.manifest(path))
            roots.append(path.parent)  # relative paths in a manifest are relative to its folder
        else:
            items.append(IngestItem.path(path))
            roots.append(path)
    return items, roots


@cli.command()
def index(
    sources: list[str] = typer.Argument(None, help="Image files, folders, http(s) URLs or manifests (.jsonl/.csv)."),
    collection: str = typer.Option(..., "--collection", "-c", help="Collection to add the images to."),
    create: bool = typer.Option(False, "--create", help="Create the collection first if it does not exist."),
    encoder: str | None = typer.Option(None, help="Encoder of a collection made by --create (default: settings)."),
    checkpoint: str | None = typer.Option(None, help="Checkpoint of a collection made by --create."),
    metadata: str | None = typer.Option(None, "--metadata", help="JSON object merged into every image's metadata."),
    resume: int | None = typer.Option(None, "--resume", help="Resume an interrupted job by id instead."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ray: str | None = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS",
        help="Run on a Ray cluster: 'local' (start one here), 'auto' (this node's) or ray://HOST:PORT. Needs the "
        "[scale] extra.",
    ),
) -> None:
    """Ingest images into a collection, with a progress bar and a summary (added / duplicates / failed)."""
    meta = _json_object(metadata, "--metadata")
    if bool(sources) == (resume is not None):
        raise CliError("give the images to index, or --resume JOB_ID, not both and not neither")
    if ray is not None:
        from indexer import ray_ingest

        _engine_call(lambda: ray_ingest.connect(ray))  # before the engine opens: a missing Ray is one line
    items, roots = _ingest_items(sources) if sources else ([], [])
    with _engine(load_settings()) as engine:
        if resume is None:
            _ensure_collection(engine, collection, create, encoder, checkpoint)
            job_id = _engine_call(
                lambda: engine.submit(collection, items, metadata=meta, extra_roots=roots, start=False)
            )
        else:
            job_id = resume
            job = _engine_call(lambda: engine.get_job(job_id))
            if job.collection != collection:
                raise CliError(f"job {job_id} belongs to collection {job.collection!r}, not {collection!r}")
        info = _run_with_progress(engine, job_id, quiet, ray)
        _print_job_summary(info)
    if info.state == "failed":
        raise CliError(f"job {info.id} failed: {info.error}")


def _ensure_collection(engine, name: str, create: bool, encoder: str | None, checkpoint: str | None) -> None:  # noqa: ANN001
    from indexer import IndexerError, NotFound

    try:
        _catalog_call(lambda: engine.get_collection(name))
        return
    except NotFound as exc:
        if not create:
            raise CliError(f"{exc}; add --create to create it") from None
    except IndexerError as exc:
        raise CliError(str(exc)) from None
    _engine_call(lambda: engine.create_collection(name, encoder=encoder, checkpoint=checkpoint))


def _run_with_progress(engine, job_id: int, quiet: bool, ray: str | None = None):  # noqa: ANN001, ANN202 - Engine -> JobInfo
    """Run the job here, or on the Ray cluster this process joined (`ray` is its address) when given."""
    from tqdm import tqdm

    bar = tqdm(total=None, unit="img", disable=quiet, file=sys.stderr, dynamic_ncols=True)

    def progress(info) -> None:  # noqa: ANN001 - JobInfo
        bar.total = info.total
        bar.update(info.processed - bar.n)
        bar.set_postfix(added=info.done, duplicates=info.skipped, failed=info.failed, refresh=False)

    try:
        if ray is not None:
            from indexer import ray_ingest

            return _engine_call(lambda: ray_ingest.run_job(engine, job_id, address=ray, progress=progress))
        return _engine_call(lambda: engine.run_job(job_id, progress=progress))
    except KeyboardInterrupt:
        again = f" --ray {ray}" if ray is not None else ""
        raise CliError(
            f"interrupted; continue with: internvl-search index --resume {job_id} -c <collection>{again}"
        ) from None
    finally:
        bar.close()


def _print_job_summary(info) -> None:  # noqa: ANN001 - JobInfo
    typer.echo(
        f"job {info.id} {info.state}: added {info.done}, duplicates {info.skipped}, failed {info.failed} "
        f"(of {info.total}) into collection {info.collection!r}"
    )
    for failure in info.failures:
        typer.echo(f"  failed: {failure.source}: {failure.reason}")
    if info.failed > len(info.failures):
        typer.echo(f"  ... and {info.failed - len(info.failures)} more failures")


@collections_cli.command("list")
def collections_list(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List collections with their encoder, size and index kind."""
    with _engine(load_settings()) as engine:
        infos = _engine_call(engine.list_collections)
    rows = [
        {
            "name": c.name,
            "encoder": c.encoder,
            "dim": c.dim,
            "images": c.images.get("indexed", 0),
            "index": c.store_kind if c.index_kind == c.store_kind else f"{c.index_kind}:{c.store_kind}",
            "storage": c.storage,
            "fingerprint": c.fingerprint[:12],
        }
        for c in infos
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif not rows:
        typer.echo("no collections (create one with: internvl-search collections create NAME)")
    else:
        widths = {key: max(len(key), *(len(str(row[key])) for row in rows)) for key in rows[0]}
        typer.echo("  ".join(f"{key:<{w}}" for key, w in widths.items()))
        for row in rows:
            typer.echo("  ".join(f"{row[key]!s:<{w}}" for key, w in widths.items()))


@collections_cli.command("create")
def collections_create(
    name: str = typer.Argument(..., help="Collection name (letters, digits, '_', '.', '-')."),
    encoder: str | None = typer.Option(None, help="Encoder name (default: INTERNVL_SEARCH_ENCODER)."),
    checkpoint: str | None = typer.Option(None, help="Checkpoint (default: INTERNVL_SEARCH_ENCODER_CHECKPOINT)."),
    index_kind: str = typer.Option("auto", "--index-kind", help="auto, flat, hnsw, ivf_flat or ivf_pq."),
    storage: str | None = typer.Option(None, help="Keep of each image: originals (default), thumbnails or none."),
) -> None:
    """Create an empty collection bound to an encoder."""
    with _engine(load_settings()) as engine:
        info = _engine_call(
            lambda: engine.create_collection(
                name, encoder=encoder, checkpoint=checkpoint, index_kind=index_kind, storage=storage
            )
        )
    typer.echo(
        f"created collection {info.name!r}: {info.encoder}, dim {info.dim}, index {info.index_kind}, "
        f"storage {info.storage}"
    )


@collections_cli.command("delete")
def collections_delete(
    name: str = typer.Argument(..., help="Collection to delete."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a collection with its images, index, embeddings and stored originals."""
    if not yes and not typer.confirm(f"delete collection {name!r} and all its images?"):
        raise CliError("not deleted")
    with _engine(load_settings()) as engine:
        _engine_call(lambda: engine.delete_collection(name))
    typer.echo(f"deleted collection {name!r}")


@cli.command()
def search(
    query: str | None = typer.Argument(None, help="Text query, in any language."),
    collection: str = typer.Option(..., "--collection", "-c", help="Collection to search."),
    k: int = typer.Option(10, "-k", help="Number of results."),
    filter_: str | None = typer.Option(None, "--filter", help='Metadata filter, e.g. \'{"year": {"gte": 2020}}\'.'),
    image: Path | None = typer.Option(None, "--image", help="Search with this image file instead of a text."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Search a collection by text or by image; prints rank, score, id, source and metadata."""
    if (query is None) == (image is None):
        raise CliError("give a text query or --image FILE, not both and not neither")
    conditions = _json_object(filter_, "--filter")
    data = None
    if image is not None:
        try:
            data = image.read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read image {image}: {exc.strerror}") from None
    with _engine(load_settings()) as engine:
        hits = _engine_call(lambda: engine.search(collection, text=query, image=data, k=k, filter=conditions))
    if as_json:
        typer.echo(json.dumps([{**hit.__dict__} for hit in hits], indent=2, ensure_ascii=False))
        return
    if not hits:
        typer.echo("no results")
    for rank, hit in enumerate(hits, 1):
        meta = json.dumps(hit.metadata, ensure_ascii=False) if hit.metadata else ""
        typer.echo(f"{rank:>3}  {hit.score:.4f}  id={hit.id}  {hit.source}  {meta}".rstrip())


@cli.command()
def ask(
    question: str = typer.Argument(..., help="The question, in any language."),
    collection: str = typer.Option(..., "--collection", "-c", help="Collection to answer from."),
    k: int = typer.Option(8, "-k", help="Images retrieved and reranked."),
    filter_: str | None = typer.Option(None, "--filter", help="Metadata filter of the retrieval (JSON object)."),
    image_id: list[int] = typer.Option(None, "--image-id", help="Ask about this image (repeat; no retrieval)."),
    threshold: float | None = typer.Option(None, help="Least P(yes) of a relevant image (default: settings)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
) -> None:
    """Answer a question from a collection with the chat model: retrieve, rerank, answer, cite the images."""
    from dataclasses import asdict

    from indexer.chat import ChatService

    from .chat_api import build_backend, chat_options

    settings = load_settings()
    conditions = _json_object(filter_, "--filter")
    with _engine(settings) as engine:
        service = ChatService(engine, _engine_call(lambda: build_backend(settings)), chat_options(settings))
        try:
            if image_id:
                result = _engine_call(lambda: service.ask_images(question, collection, image_id))
            else:
                result = _engine_call(
                    lambda: service.ask(question, collection, k=k, filter=conditions, threshold=threshold)
                )
        finally:
            service.backend.close()
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=2, ensure_ascii=False))
        return
    typer.echo(result.answer)
    for citation in result.citations:
        typer.echo(f"  cites {citation.label}: image {citation.image_id}")
    for box in result.boxes:
        where = "unknown image" if box.image_id is None else f"image {box.image_id}"
        pixels = "" if box.box is None else " = pixels " + ", ".join(f"{v:.1f}" for v in box.box)
        typer.echo(f"  box {box.ref or ''} on {where}: {list(box.box_1000)}{pixels}")
    for r in result.retrieved:
        chat = "" if r.yes_probability is None else f"  P(yes) {r.yes_probability:.3f}  combined {r.score:.4f}"
        typer.echo(f"  retrieved image {r.id}  score {r.retrieval_score:.4f}{chat}")


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def bench(ctx: typer.Context) -> None:
    """Run the benchmarks (python -m bench; `bench --help` lists its options)."""
    from bench.__main__ import main as bench_main

    raise typer.Exit(bench_main(ctx.args))


def main() -> None:
    """Entry point: user mistakes become one clear line and exit status 2, never a traceback."""
    try:
        cli()
    except (SettingsError, CliError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


from . import cli_lifecycle  # noqa: E402, F401 - registers `eval` and `collections migrate|rollback|...`

if __name__ == "__main__":
    main()
