"""The two clusters of a command-line tool (``check``, ``reset``, ``repair``, ``verify``):
--cluster0 and --cluster1 or the same keys in mongosync's YAML configuration file, read and
checked by the process's own option table, and connected with a short timeout; and the
confirmation a command that changes them asks for."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from pymongosync import reset as reset_logic
from pymongosync.clusters import Cluster
from pymongosync.cli.options import BY_NAME, convert, read_config
from pymongosync.errors import InvalidConnectionString


Command = TypeVar("Command", bound=Callable[..., Any])


def cluster_options(command: Command) -> Command:
    """--cluster0, --cluster1 and --config, as every command around the process takes them."""
    for option in reversed((
            click.option("--cluster0", metavar="URI",
                         help="First cluster, as given to mongosync."),
            click.option("--cluster1", metavar="URI",
                         help="Second cluster, as given to mongosync."),
            click.option("--config", type=click.Path(dir_okay=False), metavar="FILE",
                         help="mongosync's YAML configuration file (its cluster0/cluster1 keys "
                              "are used; --cluster0/--cluster1 win)."))):
        command = option(command)
    return command


def cluster_uris(config: str | None, cluster0: str | None, cluster1: str | None
                 ) -> dict[str, str]:
    """--cluster0/--cluster1, falling back to the flat YAML file the process also reads; the
    command line wins, and a refusal names the option or the file key."""
    settings = read_config(config) if config else {}
    uris: dict[str, str] = {}
    for label, given in (("cluster0", cluster0), ("cluster1", cluster1)):
        raw = given if given is not None else settings.get(label)
        if raw is None:
            raise click.UsageError(f"Missing option '--{label}' (or '{label}' in the config "
                                   f"file): give the connection string of both clusters")
        where = f"'--{label}'" if given is not None else f"'{label}' in {config}"
        try:
            uris[label] = convert(BY_NAME[label], raw, from_text=given is not None)
        except (TypeError, ValueError) as exc:  # InvalidConnectionString included
            raise click.UsageError(f"Invalid value for {where}: {exc}") from None
    return uris


def connect(uris: dict[str, str]) -> dict[str, Cluster]:
    clusters: dict[str, Cluster] = {}
    try:
        for label, uri in uris.items():
            clusters[label] = Cluster.connect(label, uri, timeout_ms=reset_logic.CONNECT_TIMEOUT_MS)
    except InvalidConnectionString as exc:
        for cluster in clusters.values():
            cluster.close()
        raise click.UsageError(f"--{label}: {exc}") from None
    return clusters


def confirm_plan(yes: bool) -> None:
    """Go on with a plan just shown: ``--yes``, or an operator at a terminal who says so;
    refused otherwise (a script without --yes changes nothing)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.ClickException(
            "not applying the plan: standard input is not a terminal, so there is no one to "
            "confirm it. Review the plan above and run again with --yes to apply it. Nothing "
            "was changed")
    if not click.confirm("Apply this plan?", default=False):
        raise click.ClickException("not confirmed. Nothing was changed")


@contextmanager
def clusters_of_a_command(config: str | None, cluster0: str | None, cluster1: str | None,
                          refusal: type[Exception]) -> Iterator[dict[str, Cluster]]:
    """Both clusters connected for a command, closed after it; its ``refusal`` (which says
    what was changed and what to do) becomes the command's error message."""
    clusters = connect(cluster_uris(config, cluster0, cluster1))
    try:
        yield clusters
    except refusal as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        for cluster in clusters.values():
            cluster.close()
