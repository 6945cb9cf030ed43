"""What a destination holds that keeps a new migration from starting, and how to clear it.

``/start`` refuses a destination with metadata of another (or an abandoned) migration, or with
user databases unless the request allows pre-existing data; the refusal names what was found,
whether writes are blocked on either cluster, and the ``mongosync reset`` command line that
removes it safely.
"""

from __future__ import annotations

import shlex

from pymongo.errors import OperationFailure

from pymongosync.clusters import Cluster, redact
from pymongosync.namespaces import SYSTEM_DATABASES
from pymongosync.store import is_metadata_database

LABELS = ("cluster0", "cluster1")


def blocked_word(blocked: bool | None) -> str:
    return {True: "blocked", False: "not blocked", None: "in an unknown state"}[blocked]


def write_blocked(cluster: Cluster) -> bool | None:
    try:
        return cluster.write_blocked()
    except OperationFailure:
        return None  # serverStatus not allowed for this user: the state is unknown


# -- what /start says about a non-empty destination ----------------------------------------------
def describe_leftovers(source: Cluster, destination: Cluster,
                       user_data_allowed: bool = False) -> str | None:
    """Why ``/start`` must refuse this destination (None when it may start).

    Metadata databases always block a start (another or an abandoned migration); user
    databases do unless the request allows pre-existing destination data.
    """
    databases = [name for name in destination.client.list_database_names()
                 if name not in SYSTEM_DATABASES]
    metadata = [name for name in databases if is_metadata_database(name)]
    user = [name for name in databases if not is_metadata_database(name)]
    if not metadata and (not user or user_data_allowed):
        return None
    blocking = _write_block_summary(source, destination)
    command = reset_command_line(source, destination)
    if metadata:
        found = f"the metadata databases {', '.join(metadata)}" if len(metadata) > 1 else \
            f"the metadata database {metadata[0]}"
        if user:
            found += f" and the user databases {', '.join(user)}"
        return (f"the destination {destination.label} holds leftovers of another or an "
                f"abandoned migration: {found}; {blocking}. Stop any mongosync still running "
                f"on these clusters, then remove them safely with `{command}` (it shows its "
                f"plan and asks first; --dry-run only shows it) and start again")
    return (f"the destination {destination.label} already holds user databases "
            f"({', '.join(user)}); {blocking}. Migrate into an empty cluster, drop them "
            f"(`{command} --all-user-databases` drops every user database on "
            f"{destination.label}), or use preExistingDestinationData with a namespace filter")


def _write_block_summary(source: Cluster, destination: Cluster) -> str:
    states = [(destination, "the destination", write_blocked(destination)),
              (source, "the source", write_blocked(source))]
    if all(blocked is False for _, _, blocked in states):
        return "writes are not blocked on either cluster"
    parts = [f"{blocked_word(blocked)} on {cluster.label} ({role})"
             for cluster, role, blocked in states]
    return "writes are " + " and ".join(parts)


def reset_command_line(*clusters: Cluster) -> str:
    """The ``mongosync reset`` invocation for these clusters, credentials redacted."""
    by_label = {cluster.label: cluster for cluster in clusters}
    parts = ["mongosync", "reset"]
    for label in LABELS:
        if label in by_label:
            parts += [f"--{label}", shlex.quote(redact(by_label[label].uri))]
    return " ".join(parts)
