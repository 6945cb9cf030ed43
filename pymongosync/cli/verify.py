"""``mongosync verify``: compare two clusters after the fact, or list what the embedded verifier
of a migration found."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pymongosync.cli.clusters import cluster_options, cluster_uris, connect
from pymongosync.clusters import Cluster, redact
from pymongosync.errors import PymongosyncError
from pymongosync.leftovers import LABELS
from pymongosync.verifier.compare import describe
from pymongosync.verifier.standalone import LocalVerifierStore, verify

EXIT_EQUAL, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2
DEFAULT_STATE = "mongosync-verify.sqlite"


@click.command("verify", help="""Compare two clusters document by document (BSON bytes per
_id), and their collections, indexes and views. Read-only: nothing is written to either
cluster. Progress is kept in a local file (--state), so an interrupted check goes on where it
stopped. Exit status 0 when the clusters are equal, 1 when they differ, 2 on an error.

With --report, list instead every mismatch the embedded verifier of the migration stored on
these clusters found.""")
@cluster_options
@click.option("--source", type=click.Choice(LABELS), default="cluster0", show_default=True,
              help="Which cluster is the source (the other is the destination).")
@click.option("--state", "state_path", type=click.Path(dir_okay=False), default=DEFAULT_STATE,
              show_default=True, help="Local file holding the check's progress.")
@click.option("--fresh", is_flag=True, help="Start over, forgetting the progress in --state.")
@click.option("--report", is_flag=True,
              help="List the mismatches the embedded verifier of the migration found.")
def verify_command(cluster0: str | None, cluster1: str | None, config: str | None,
                   source: str, state_path: str, fresh: bool, report: bool) -> None:
    clusters = connect(cluster_uris(config, cluster0, cluster1))
    try:
        if report:
            sys.exit(_report(clusters))
        sys.exit(_compare(clusters, source, Path(state_path), fresh))
    except PymongosyncError as exc:
        click.echo(f"mongosync verify: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except Exception as exc:  # noqa: BLE001 - a clear line and the error status, not a trace
        click.echo(f"mongosync verify: {type(exc).__name__}: {redact(str(exc))}", err=True)
        sys.exit(EXIT_ERROR)
    finally:
        for cluster in clusters.values():
            cluster.close()


def _compare(clusters: dict[str, Cluster], source_label: str, path: Path, fresh: bool) -> int:
    source = clusters[source_label]
    destination = clusters["cluster1" if source_label == "cluster0" else "cluster0"]
    store = LocalVerifierStore(path)
    try:
        if fresh:
            store.clear()
        resuming = store.load_state() is not None
        click.echo(f"Comparing {source.display} (source) with {destination.display} "
                   f"(destination){'; resuming from ' + str(path) if resuming else ''}")
        estimate = sum(count for count, _ in (
            source.collection_size(info_db, info["name"])
            for info_db in source.database_names() if info_db not in ("admin", "config", "local")
            for info in source.collection_infos(info_db) if info.get("type") != "view"))
        with click.progressbar(length=max(estimate, 1), label="documents", file=sys.stderr,
                               show_pos=True) as bar:
            outcome = verify(source, destination, store, on_progress=bar.update)
        if outcome.equal:
            click.echo(f"equal: {outcome.collections} collections, {outcome.documents} "
                       f"documents, the same collections, indexes and views")
            return EXIT_EQUAL
        click.echo(f"DIFFERENT: {outcome.mismatches} mismatches; the first:")
        for mismatch in outcome.first:
            click.echo(f"  {describe(mismatch)}")
        click.echo(f"(all of them stay in {path} until the next --fresh run)")
        return EXIT_DIFFERENT
    finally:
        store.close()


def _report(clusters: dict[str, Cluster]) -> int:
    for label in ("cluster1", "cluster0"):
        stored = clusters[label].metadata_store().load()
        if stored is None or stored.global_state.superseded_by:
            continue
        verifier = clusters[label].verifier_store()
        state = verifier.load_state()
        mismatches = verifier.mismatches()
        click.echo(f"The migration stored on {label}: verification "
                   f"{state.phase.value if state else 'not started'}, {len(mismatches)} "
                   f"mismatches")
        for mismatch in mismatches:
            click.echo(f"  {describe(mismatch)}")
        return EXIT_DIFFERENT if mismatches else EXIT_EQUAL
    click.echo("no migration is stored on these clusters", err=True)
    return EXIT_ERROR
