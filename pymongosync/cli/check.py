"""``mongosync check``: the pre-flight checks of ``/start`` as a dry run, every finding printed.

It takes the process's own connection options (``--cluster0``/``--cluster1`` or ``--config``)
and a ``/start`` body, reads both clusters and writes nothing. Exit status: 0 when ``/start``
would pass pre-flight (warnings may be printed), 1 when a finding blocks it, 2 when the options
or the body are refused, 3 when a cluster cannot be read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from pymongo.errors import PyMongoError

from pymongosync.api import ApiError, parse_body
from pymongosync.cli.clusters import cluster_uris, connect
from pymongosync.clusters import Cluster, redact
from pymongosync.errors import InvalidInput, InvalidStartRequest
from pymongosync.preflight import Finding, run_checks
from pymongosync.request import StartRequest

DEFAULT_BODY = '{"source": "cluster0", "destination": "cluster1"}'
EXIT_BLOCKED, EXIT_UNREADABLE = 1, 3


def _request(body: str) -> StartRequest:
    text = body
    if body.startswith("@"):
        try:
            text = Path(body[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.UsageError(f"Invalid value for '--body': cannot read {body[1:]} "
                                   f"({exc.strerror})") from None
    try:
        return StartRequest.from_document(parse_body(text.encode("utf-8")))
    except ApiError as exc:
        raise click.UsageError(f"Invalid value for '--body': {exc.description}") from None
    except InvalidStartRequest as exc:
        raise click.UsageError(f"Invalid value for '--body': {exc}") from None


def render(findings: list[Finding], direction: str) -> str:
    lines = [f"mongosync check: {direction}"]
    for finding in sorted(findings, key=lambda f: not f.blocking):
        lines.append(f"{finding.severity.value.upper():9s} [{finding.check}] {finding.subject}: "
                     f"{finding.message}")
        lines.append(f"{'':9s} fix: {finding.fix}")
    blocking = sum(finding.blocking for finding in findings)
    warnings = len(findings) - blocking
    if not findings:
        lines.append("no findings: /start would pass the pre-flight checks")
    elif blocking:
        lines.append(f"{blocking} blocking, {warnings} warning{'s' * (warnings != 1)}: /start "
                     f"would be refused; fix the blocking findings first")
    else:
        lines.append(f"{warnings} warning{'s' * (warnings != 1)}, nothing blocking: /start "
                     f"would pass the pre-flight checks")
    return "\n".join(lines)


@click.command("check")
@click.option("--cluster0", metavar="URI", help="Connection string of the first cluster.")
@click.option("--cluster1", metavar="URI", help="Connection string of the second cluster.")
@click.option("--config", metavar="FILE", help="The process's YAML config file (cluster0, "
              "cluster1); options given on the command line win.")
@click.option("--body", metavar="JSON|@FILE", default=DEFAULT_BODY, show_default=True,
              help="The /start body to check, inline or @path/to/body.json.")
@click.option("--disableChangeBuffering", "disable_change_buffering", is_flag=True,
              help="Check as for a process started with --disableChangeBuffering: the oplog "
                   "must then hold every change made during the copy.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per finding instead of text.")
def check_command(cluster0: str | None, cluster1: str | None, config: str | None, body: str,
                  disable_change_buffering: bool, as_json: bool) -> None:
    """Run /start's pre-flight checks without starting anything: versions and feature
    compatibility, topology, an empty destination, privileges (spec §19), users, destination
    disk, balancer windows and zones, index limits and conflicts, $-prefixed or duplicate field
    names (sampled), persistent query settings and the oplog window. Prints every finding with
    its fix; exits 1 when one blocks the start (0 otherwise, 2 for bad options, 3 when a
    cluster cannot be read). Nothing is written."""
    uris = cluster_uris(config, cluster0, cluster1)
    request = _request(body)
    clusters: dict[str, Cluster] = {}
    try:
        clusters = connect(uris)
        source, destination = clusters[request.source], clusters[request.destination]
        findings = run_checks(request, source, destination,
                              change_buffering=not disable_change_buffering)
        direction = f"{source.display} (source) -> {destination.display} (destination)"
    except (PyMongoError, InvalidInput) as exc:
        click.echo(f"mongosync check: cannot read the clusters: {redact(str(exc))}", err=True)
        raise SystemExit(EXIT_UNREADABLE) from None
    finally:
        for cluster in clusters.values():
            cluster.close()
    if as_json:
        for finding in findings:
            document: dict[str, Any] = {**finding.to_document(), "blocking": finding.blocking}
            click.echo(json.dumps(document))
    else:
        click.echo(render(findings, direction))
    if any(finding.blocking for finding in findings):
        raise SystemExit(EXIT_BLOCKED)
