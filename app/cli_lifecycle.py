"""`internvl-search eval` and `collections migrate | migration | rollback | purge-previous`: evaluation and
switching a collection to another encoder, as thin calls into `indexer` (registered on import by `app.cli`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from .cli import CliError, _engine, _engine_call, cli, collections_cli
from .settings import load_settings


def _eval_data(classification: Path | None, retrieval: Path | None, languages: list[str] | None):  # noqa: ANN202
    """The engine's EvalData, plus the folders it reads (an operator's command may read where it points)."""
    from indexer.evaluation import EvalData

    if classification is None and retrieval is None:
        return None, []
    paths = [p.expanduser().resolve() for p in (classification, retrieval) if p is not None]
    for path in paths:
        if not path.exists():
            raise CliError(f"no such file or folder: {path}")
    folder = str(paths[0]) if classification is not None else None
    manifest = str(paths[-1]) if retrieval is not None else None
    roots = [paths[0]] if classification is not None else []
    roots += [paths[-1].parent] if retrieval is not None else []
    return EvalData(folder, manifest, tuple(languages) if languages else None), roots


def _progress_bar(quiet: bool):  # noqa: ANN202 - (tqdm bar, callback)
    from tqdm import tqdm

    bar = tqdm(total=None, unit="img", disable=quiet, file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar.total != total or done < bar.n:  # a new phase (another task or encoder)
            bar.reset(total=total)
        bar.update(done - bar.n)

    return bar, progress


@cli.command("eval")
def evaluate(
    classification: Path | None = typer.Option(None, help="Labelled folder: class_name/*.jpg (+ classes.json)."),
    retrieval: Path | None = typer.Option(None, help="Caption manifest (JSONL: image, captions, language)."),
    encoder: str | None = typer.Option(None, help="Encoder to evaluate (default: INTERNVL_SEARCH_ENCODER)."),
    checkpoint: str | None = typer.Option(None, help="Its checkpoint (default: the configured one)."),
    collection: str | None = typer.Option(None, help="Evaluate the encoder this collection uses instead."),
    compare_encoder: str | None = typer.Option(None, help="A second encoder, compared side by side."),
    compare_checkpoint: str | None = typer.Option(None, help="The second encoder's checkpoint."),
    compare_collection: str | None = typer.Option(None, help="Compare with the encoder of this collection."),
    language: list[str] = typer.Option(None, "--language", "-l", help="Languages to score (default: all given)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the JSON report to this file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Zero-shot classification and image<->text retrieval metrics of one encoder, or two side by side."""
    from indexer.model_switch import EncoderChoice

    data, roots = _eval_data(classification, retrieval, language)
    if data is None:
        raise CliError("give --classification FOLDER and/or --retrieval MANIFEST")
    choices = [EncoderChoice(encoder, checkpoint, collection)]
    if compare_encoder or compare_checkpoint or compare_collection:
        choices.append(EncoderChoice(compare_encoder, compare_checkpoint, compare_collection))
    bar, progress = _progress_bar(quiet)
    try:
        with _engine(load_settings()) as engine:
            result = _engine_call(lambda: engine.evaluate_encoders(data, choices, extra_roots=roots, progress=progress))
    finally:
        bar.close()
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    _print_summary(result)


def _print_summary(result: dict) -> None:
    from indexer.evaluation import headline

    names = [f"{r['encoder']} {r.get('collection') or r.get('checkpoint') or ''}".strip() for r in result["reports"]]
    rows = [headline(report) for report in result["reports"]]
    width = max(len(metric) for metric in rows[0]) if rows[0] else 10
    typer.echo(f"{'metric':<{width}}  " + "  ".join(f"{name[:28]:>28}" for name in names))
    for metric in rows[0]:
        values = "  ".join(f"{row.get(metric, float('nan')):>28.4f}" for row in rows)
        delta = f"  {rows[1][metric] - rows[0][metric]:+.4f}" if len(rows) == 2 and metric in rows[1] else ""
        typer.echo(f"{metric:<{width}}  {values}{delta}")


@collections_cli.command("migrate")
def migrate(
    name: str = typer.Argument(..., help="Collection to switch to another encoder."),
    encoder: str | None = typer.Option(None, help="The new encoder (registry name; default: the configured one)."),
    checkpoint: str | None = typer.Option(None, help="The new encoder's checkpoint (hub id or local dir)."),
    eval_classification: Path | None = typer.Option(None, help="Gate: a labelled folder to evaluate both on."),
    eval_retrieval: Path | None = typer.Option(None, help="Gate: a caption manifest to evaluate both on."),
    language: list[str] = typer.Option(None, "--language", "-l", help="Gate languages (default: all given)."),
    max_regression: float | None = typer.Option(None, help="Gate margin (default: the configured one)."),
    resume: int | None = typer.Option(None, "--resume", help="Resume an interrupted migration job by id instead."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Re-embed every image with another encoder (searches keep the old index meanwhile), then switch atomically."""
    data, roots = _eval_data(eval_classification, eval_retrieval, language)
    settings = load_settings()
    with _engine(settings) as engine:
        if resume is None:
            job_id = _engine_call(
                lambda: engine.migrate(
                    name, encoder or settings.encoder, checkpoint, evaluation=data, max_regression=max_regression,
                    extra_roots=roots, start=False,
                )
            )  # fmt: skip
        else:
            job_id = resume
        info = _run_job(engine, job_id, quiet, name)
    typer.echo(f"job {info.id} {info.state}: re-embedded {info.done} of {info.total}, failed {info.failed}")
    for failure in info.failures:
        typer.echo(f"  failed: {failure.source}: {failure.reason}")
    if info.state != "done":
        raise CliError(f"migration job {info.id} {info.state}: {info.error or 'not finished'}")
    typer.echo(f"collection {name!r} now uses {encoder or settings.encoder} (rollback: collections rollback {name})")


def _run_job(engine, job_id: int, quiet: bool, name: str):  # noqa: ANN001, ANN202 - Engine -> JobInfo
    from tqdm import tqdm

    bar = tqdm(total=None, unit="img", disable=quiet, file=sys.stderr, dynamic_ncols=True)

    def progress(info) -> None:  # noqa: ANN001 - JobInfo
        bar.total = info.total
        bar.update(info.done - bar.n)

    try:
        return _engine_call(lambda: engine.run_job(job_id, progress=progress))
    except KeyboardInterrupt:
        hint = f"internvl-search collections migrate {name} --resume {job_id}"
        raise CliError(f"interrupted; continue with: {hint}") from None
    finally:
        bar.close()


@collections_cli.command("migration")
def migration(
    name: str = typer.Argument(..., help="Collection."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the serving encoder, a migration in progress, and the previous encoder kept for a rollback."""
    from dataclasses import asdict

    with _engine(load_settings()) as engine:
        state = _engine_call(lambda: engine.migration_state(name))
    if as_json:
        typer.echo(json.dumps(asdict(state), indent=2, default=str))
        return
    for role in ("serving", "shadow", "previous"):
        space = getattr(state, role)
        text = "none" if space is None else f"{space.encoder} {space.checkpoint or '(default weights)'} dim {space.dim}"
        typer.echo(f"{role:<9} {text}")
    if state.job is not None:
        job = state.job
        typer.echo(f"job {job.id}: {job.state}, {job.done}/{job.total} re-embedded, {job.failed} failed")
        if job.error:
            typer.echo(f"  {job.error}")


@collections_cli.command("rollback")
def rollback(name: str = typer.Argument(..., help="Collection.")) -> None:
    """Serve the encoder used before the last switch again (the current one is kept for the way back)."""
    with _engine(load_settings()) as engine:
        info = _engine_call(lambda: engine.rollback(name))
    typer.echo(f"collection {name!r} uses {info.encoder} {info.checkpoint or '(default weights)'} again")


@collections_cli.command("purge-previous")
def purge_previous(
    name: str = typer.Argument(..., help="Collection."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete the index and embeddings kept for a rollback."""
    if not yes and not typer.confirm(f"delete the previous encoder's index of {name!r}? (no rollback afterwards)"):
        raise CliError("not deleted")
    with _engine(load_settings()) as engine:
        _engine_call(lambda: engine.purge_previous(name))
    typer.echo(f"purged the previous encoder's index of {name!r}")
