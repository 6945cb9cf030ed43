"""``mongosync reset``: the documented restart-from-scratch procedure as one checked command.

MongoDB documents (spec §15.3, §9.3, §24) what an operator does after a failed or abandoned
migration: stop mongosync, unblock writes on the destination (and on the source when a crash
during commit left it blocked), drop every database mongosync created and its metadata
database, optionally turn the balancers back on, and start again. Done by hand, each step can
drop the wrong database, forget the metadata, or leave a cluster write-blocked. This module
does the same steps from what the migration recorded about itself:

- :func:`plan_reset` reads both clusters and the stored migration and decides, changing
  nothing; it refuses (:class:`ResetError`) while a process still works on the migration, or
  when the clusters given do not match the stored migration;
- :func:`apply_reset` carries a plan out, checking first that nothing moved in between;
- :func:`describe_leftovers` explains to ``/start`` what a non-empty destination holds;
- :data:`reset_command` is the ``mongosync reset`` click command, a thin layer over them.
"""

from __future__ import annotations

import datetime
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import click
import yaml
from pymongo.errors import OperationFailure, PyMongoError, ServerSelectionTimeoutError

from pymongosync.clusters import Cluster, InvalidConnectionString, redact
from pymongosync.metadata import METADATA_DATABASE, MetadataStore, is_metadata_database
from pymongosync.namespaces import SYSTEM_DATABASES

LABELS = ("cluster0", "cluster1")
# A migration whose heartbeat or last update is younger than this has a live process: the
# engine beats every 2 s, so 10 s leaves room for a slow beat without waiting long after a stop.
LIVE_HEARTBEAT_SECONDS = 10.0
# Short, so a wrong host fails in seconds rather than after the engine's 30 s.
CONNECT_TIMEOUT_MS = 5_000
UNBLOCK_COMMAND = "db.adminCommand({setUserWriteBlockMode: 1, global: false})"
AUTH_FAILED = 18


ActionKind = Literal["unblock", "drop-collection", "drop-database", "start-balancer"]


class ResetError(Exception):
    """Reset refused or failed; the message says what was (not) changed and what to do."""


# -- what the clusters hold ----------------------------------------------------------------------
@dataclass
class ClusterState:
    """What one cluster looks like right now (read once, while planning)."""

    cluster: Cluster
    sharded: bool
    databases: list[str]  # every name listDatabases returns, system databases included
    write_blocked: bool | None  # None: the server does not report it
    balancer_running: bool | None  # None: not a sharded cluster
    record: dict[str, Any] | None  # the migration document of its reserved database

    @property
    def label(self) -> str:
        return self.cluster.label

    @property
    def user_databases(self) -> list[str]:
        # admin, config and local are never dropped, whatever the options.
        return [name for name in self.databases if name not in SYSTEM_DATABASES]

    @property
    def summary(self) -> str:
        kind = "sharded cluster" if self.sharded else "replica set"
        return f"{self.label} = {', '.join(self.cluster.hosts)} ({kind})"


@dataclass(frozen=True)
class Action:
    """One change a reset makes, in the order it makes them."""

    kind: ActionKind
    cluster: str  # the label of the cluster changed
    target: str = ""  # a database or "db.collection" for drops
    reason: str = ""

    def describe(self) -> str:
        if self.kind == "unblock":
            text = f"disable write blocking on {self.cluster} ({UNBLOCK_COMMAND})"
        elif self.kind == "drop-database":
            text = f"drop database {self.target} on {self.cluster}"
        elif self.kind == "drop-collection":
            text = f"drop collection {self.target} on {self.cluster}"
        else:
            text = f"start the balancer on {self.cluster} (db.adminCommand({{balancerStart: 1}}))"
        return f"{text}: {self.reason}" if self.reason else text


@dataclass
class ResetPlan:
    """Everything a reset will do and keep, decided before anything changes."""

    states: dict[str, ClusterState]
    destination: str
    source: str
    record: dict[str, Any] | None  # the stored migration that identified the destination
    record_ids: dict[str, str | None]  # label -> migrationId seen, to detect changes
    actions: list[Action] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # destination user databases left alone
    notes: list[str] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        return not self.actions

    def describe(self) -> str:
        lines = [f"Clusters: {self.states['cluster0'].summary}, "
                 + self.states["cluster1"].summary]
        record = self.record
        if record is not None:
            superseded = " (superseded by a reverse migration)" if record.get(
                "supersededBy") else ""
            lines.append(
                f"Migration {record.get('migrationId')}{superseded}: {record.get('sourceLabel')} → "
                f"{record.get('destinationLabel')}, state {record.get('state')}, phase "
                f"{record.get('phase')!r}, stored on {self.destination}")
        destination = self.states[self.destination]
        lines.append(f"Destination {self.destination}: writes "
                     f"{_blocked_word(destination.write_blocked)}; databases: "
                     f"{', '.join(destination.user_databases) or 'no user database'}")
        lines.append(f"Source {self.source}: writes "
                     f"{_blocked_word(self.states[self.source].write_blocked)}")
        if self.actions:
            lines.append("Plan:")
            lines += [f"  {number}. {action.describe()}"
                      for number, action in enumerate(self.actions, 1)]
        if self.kept:
            lines.append(f"Kept on {self.destination}: {', '.join(sorted(self.kept))}")
        if self.notes:
            lines.append("Notes:")
            lines += [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class ResetReport:
    done: list[str]
    remaining: list[str]  # the destination's databases afterwards
    destination: str

    def describe(self) -> str:
        lines = ["Done:"] + [f"  - {line}" for line in self.done]
        lines.append(f"Databases remaining on {self.destination}: {', '.join(self.remaining)}")
        return "\n".join(lines)


# -- planning ------------------------------------------------------------------------------------
def plan_reset(cluster0: Cluster, cluster1: Cluster, *, all_user_databases: bool = False,
               enable_balancer: bool = False, force_balancer: bool = False,
               destination: str | None = None,
               live_heartbeat_seconds: float | None = None) -> ResetPlan:
    """Decide what a reset does, changing nothing.

    ``destination`` ("cluster0"/"cluster1") only matters when no metadata says which cluster
    is the destination; when given, it must agree with the metadata. ``force_balancer``
    implies ``enable_balancer``.
    """
    clusters = {"cluster0": cluster0, "cluster1": cluster1}
    if cluster0.hosts == cluster1.hosts:
        raise ResetError(f"--cluster0 and --cluster1 are the same cluster "
                         f"({', '.join(cluster0.hosts)}); give the source and the destination")
    states = {label: _inspect(cluster) for label, cluster in clusters.items()}
    _refuse_if_live({label: state.record for label, state in states.items()},
                    live_heartbeat_seconds)
    destination_label, record = _find_destination(states, destination)
    source_label = "cluster1" if destination_label == "cluster0" else "cluster0"
    plan = ResetPlan(states=states, destination=destination_label, source=source_label,
                     record=record,
                     record_ids={label: (state.record or {}).get("migrationId")
                                 for label, state in states.items()})
    records = [state.record for state in states.values() if state.record is not None]
    _plan_write_blocks(plan, records)
    _plan_user_drops(plan, all_user_databases)
    _plan_balancers(plan, records, enable_balancer or force_balancer, force_balancer)
    # Metadata last: a reset stopped half-way can still read what the migration created.
    _plan_metadata_drops(plan)
    return plan


def _inspect(cluster: Cluster) -> ClusterState:
    with _talking_to(cluster):
        return ClusterState(cluster=cluster, sharded=cluster.is_sharded,
                            databases=sorted(cluster.client.list_database_names()),
                            write_blocked=_write_blocked(cluster),
                            balancer_running=cluster.balancer_running(),
                            record=MetadataStore(cluster.client).load())


@contextmanager
def _talking_to(cluster: Cluster, outcome: str = "Nothing was changed") -> Iterator[None]:
    """Turn driver errors into one clear sentence naming the cluster (never a password),
    ending with ``outcome``: what the reset had changed by then."""
    where = f"{cluster.label} ({', '.join(cluster.hosts)})"
    try:
        yield
    except ServerSelectionTimeoutError as exc:
        # The driver's text ends in timeouts and a topology dump; the first cause is enough.
        cause = re.split(r" \(configured timeouts|, Timeout:", redact(str(exc)))[0]
        raise ResetError(f"cannot reach {where}: no server answered within "
                         f"{CONNECT_TIMEOUT_MS / 1000:g} s ({cause}); check the host, the port "
                         f"and that the cluster is up. {outcome}") from None
    except OperationFailure as exc:
        if exc.code == AUTH_FAILED:
            raise ResetError(f"{where} refused the credentials of the connection string "
                             f"(authentication failed); check the user name, password and "
                             f"authSource. {outcome}") from None
        raise ResetError(f"{where} refused a command: {redact(str(exc))}. {outcome}") from None
    except PyMongoError as exc:
        raise ResetError(f"{where}: {redact(str(exc))}. {outcome}") from None


def _write_blocked(cluster: Cluster) -> bool | None:
    try:
        return cluster.write_blocked()
    except OperationFailure:
        return None  # serverStatus not allowed for this user: the state is unknown


def _blocked_word(blocked: bool | None) -> str:
    return {True: "blocked", False: "not blocked", None: "in an unknown state"}[blocked]


def _last_activity(record: dict[str, Any]) -> datetime.datetime | None:
    times = [t for t in ((record.get("heartbeat") or {}).get("at"), record.get("updatedAt"))
             if isinstance(t, datetime.datetime)]
    if not times:
        return None
    # Stored through a tz_aware client, but be safe with naive values (they are UTC).
    return max(t if t.tzinfo else t.replace(tzinfo=datetime.UTC) for t in times)


def _refuse_if_live(records: dict[str, dict[str, Any] | None],
                    live_heartbeat_seconds: float | None) -> None:
    limit = LIVE_HEARTBEAT_SECONDS if live_heartbeat_seconds is None else live_heartbeat_seconds
    now = datetime.datetime.now(datetime.UTC)
    for label, record in records.items():
        if record is None:
            continue
        last = _last_activity(record)
        if last is None:
            continue
        age = (now - last).total_seconds()
        if age < limit:
            owner = (record.get("heartbeat") or {}).get("owner", "a mongosync process")
            raise ResetError(
                f"a mongosync process ({owner}) is still working on the migration stored on "
                f"{label}: it reported {max(age, 0):.0f} s ago. Stop it first: press Ctrl-C "
                f"where it runs (or POST /api/v1/pause, e.g. `curl -X POST "
                f"localhost:27182/api/v1/pause -d '{{}}'`, then stop the process), wait "
                f"{limit:.0f} seconds and run reset again. Nothing was changed")


def _find_destination(states: dict[str, ClusterState], named: str | None
                      ) -> tuple[str, dict[str, Any] | None]:
    """Which cluster is the destination, and the stored migration that says so (if any)."""
    records = {label: state.record for label, state in states.items() if state.record}
    live = [label for label, record in records.items() if not record.get("supersededBy")]
    if len(live) > 1:
        raise ResetError("both clusters hold the metadata of a running migration (each the "
                         "destination of its own); reset one pair of clusters at a time, by "
                         "hand if needed. Nothing was changed")
    # A reversed migration's old record still identifies its clusters when the new one is gone.
    candidates = live or sorted(records, reverse=True)
    if candidates:
        label = candidates[0]
        record = records[label]
        _check_record_matches(label, record, states)
        if named is not None and named != label:
            raise ResetError(
                f"{named} is not the destination: the migration is stored on {label}, its "
                f"destination, and {named} is its source. Run reset without --destination or "
                f"with --destination {label}. Nothing was changed")
        return label, record
    holding = [label for label, state in states.items()
               if any(is_metadata_database(name) for name in state.databases)]
    if len(holding) == 1:
        if named is not None and named != holding[0]:
            raise ResetError(f"{named} holds no migration metadata but {holding[0]} does, so "
                             f"{holding[0]} is the destination, not {named}. Nothing was "
                             f"changed")
        return holding[0], None
    if named is not None:
        return named, None
    # Nothing recorded: mongosync's usual direction, unless that cluster is clearly a source.
    assumed, other = states["cluster1"], states["cluster0"]
    if assumed.user_databases and not other.user_databases:
        raise ResetError(
            "neither cluster holds migration metadata, and cluster1 holds user databases while "
            "cluster0 holds none: cluster1 looks like a source. If cluster1 really is the "
            "destination, say so with --destination cluster1 (or --destination cluster0 for the "
            "other one). Nothing was changed")
    return "cluster1", None


def _check_record_matches(label: str, record: dict[str, Any],
                          states: dict[str, ClusterState]) -> None:
    stored_destination = record.get("destinationLabel")
    if stored_destination != label:
        raise ResetError(
            f"the migration metadata found on {label} belongs to a migration whose destination "
            f"was {stored_destination}: the connection strings look swapped (a source given as "
            f"the destination). Give --cluster0 and --cluster1 as when the migration was "
            f"started. Nothing was changed")
    mismatch = _hosts_mismatch(record, states)
    if mismatch:
        raise ResetError(f"the migration stored on {label} was started with {mismatch}; give "
                         f"--cluster0 and --cluster1 as when it was started. Nothing was "
                         f"changed")


def _hosts_mismatch(record: dict[str, Any], states: dict[str, ClusterState]) -> str | None:
    """How the stored cluster hosts differ from the clusters given (None when they agree)."""
    for stored_label, hosts in (record.get("clusterHosts") or {}).items():
        given = states[stored_label].cluster.hosts if stored_label in states else None
        if hosts and given is not None and sorted(hosts) != given:
            return f"{stored_label} = {', '.join(hosts)}, not {', '.join(given)}"
    return None


def _labels_flagged(records: list[dict[str, Any]], source_flag: str,
                    destination_flag: str) -> set[str]:
    """The cluster labels any stored migration flagged (e.g. blocked-by-us) in either role."""
    flagged = set()
    for record in records:
        if record.get(source_flag):
            flagged.add(record.get("sourceLabel"))
        if record.get(destination_flag):
            flagged.add(record.get("destinationLabel"))
    return flagged


def _plan_write_blocks(plan: ResetPlan, records: list[dict[str, Any]]) -> None:
    destination = plan.states[plan.destination]
    # The documented procedure always unblocks the destination; when the server cannot say
    # whether it is blocked, do it whenever a migration was there to block it.
    if destination.write_blocked or (destination.write_blocked is None and records):
        plan.actions.append(Action("unblock", plan.destination,
                                   reason="the destination of the migration"))
    source = plan.states[plan.source]
    blocked_by_us = plan.source in _labels_flagged(records, "sourceWriteBlockedByUs",
                                                   "destinationWriteBlockedByUs")
    if blocked_by_us and source.write_blocked is not False:
        plan.actions.append(Action("unblock", plan.source,
                                   reason="the source, blocked by this migration at commit"))
    elif source.write_blocked:
        plan.notes.append(
            f"writes are blocked on the source {plan.source}, and not by this migration (or no "
            f"metadata says so): reset leaves that block. Lift it when the source should take "
            f"writes again: mongosh connected to {plan.source}, {UNBLOCK_COMMAND}")


def _plan_user_drops(plan: ResetPlan, all_user_databases: bool) -> None:
    destination = plan.states[plan.destination]
    record = plan.record
    user = [name for name in destination.user_databases if not is_metadata_database(name)]
    if record is not None and record.get("canWrite") and not all_user_databases:
        raise ResetError(
            f"the migration stored on {plan.destination} has committed (canWrite: true): "
            f"{plan.destination} may already take your application's writes, and a reset "
            f"drops what it holds. To restart from scratch anyway, run reset with "
            f"--all-user-databases (every user database on {plan.destination} is dropped, as "
            f"the documented procedure does); to drop only the metadata, in mongosh: "
            f"use {METADATA_DATABASE}; db.dropDatabase(). Nothing was changed")
    if all_user_databases:
        for name in user:
            plan.actions.append(Action("drop-database", plan.destination, name,
                                       "--all-user-databases"))
    elif record is None:
        if user:
            plan.kept += user
            plan.notes.append(
                f"no migration metadata records what a migration created on "
                f"{plan.destination}, so its user databases ({', '.join(user)}) are kept. If "
                f"they are leftovers of a migration, run reset again with --all-user-databases "
                f"to drop every user database on {plan.destination} (the documented procedure)")
    else:
        _plan_created_drops(plan, user)


def _plan_created_drops(plan: ResetPlan, user: list[str]) -> None:
    destination = plan.states[plan.destination]
    store = MetadataStore(destination.cluster.client)
    with _talking_to(destination.cluster):
        created_databases = set(store.created_databases())
        created_collections = {document["_id"] for document in
                               store.created.find({"kind": "collection"}, {"_id": 1})}
    # Without preExistingDestinationData /start refused any user database, so whatever a
    # created database holds came through this migration; with it, a database the migration
    # wrote into may have existed before, and only the collections it created go.
    pre_existing_allowed = bool((plan.record.get("request") or {}).get(
        "preExistingDestinationData"))
    not_created = [name for name in user if name not in created_databases]
    plan.kept += not_created
    for name in user:
        if name not in created_databases:
            continue
        if not pre_existing_allowed:
            plan.actions.append(Action("drop-database", plan.destination, name,
                                       "created by this migration"))
            continue
        with _talking_to(destination.cluster):
            collections = [c for c in destination.cluster.client[name].list_collection_names()
                           if not c.startswith("system.")]
        foreign = [c for c in collections if f"{name}.{c}" not in created_collections]
        if not foreign:
            plan.actions.append(Action("drop-database", plan.destination, name,
                                       "created by this migration"))
            continue
        plan.kept.append(name)
        plan.notes.append(f"database {name} also holds collections this migration did not "
                          f"create ({', '.join(sorted(foreign))}): only the ones it created "
                          f"are dropped")
        for collection in sorted(collections):
            if f"{name}.{collection}" in created_collections:
                plan.actions.append(Action("drop-collection", plan.destination,
                                           f"{name}.{collection}", "created by this migration"))
    if not_created:
        plan.notes.append(f"kept on {plan.destination} because this migration did not create "
                          f"them: {', '.join(not_created)} (--all-user-databases drops every "
                          f"user database)")


def _plan_metadata_drops(plan: ResetPlan) -> None:
    destination = plan.states[plan.destination]
    metadata = [name for name in destination.user_databases if is_metadata_database(name)]
    # The reserved database last of all: it is what identifies the migration on a rerun.
    for name in sorted(metadata, key=lambda n: n == METADATA_DATABASE):
        plan.actions.append(Action("drop-database", plan.destination, name,
                                   "migration metadata"))
    # A reversed migration left its old record on what is now the source: it goes too. Any
    # other metadata there belongs to some other migration, which this reset does not touch.
    source = plan.states[plan.source]
    record = source.record
    ours = (record is not None and record.get("supersededBy")
            and _hosts_mismatch(record, plan.states) is None)
    if ours:
        plan.actions.append(Action("drop-database", plan.source, METADATA_DATABASE,
                                   "the metadata this migration superseded when reversed"))
    others = [name for name in source.user_databases
              if is_metadata_database(name) and not (ours and name == METADATA_DATABASE)]
    if others:
        plan.notes.append(f"the source {plan.source} holds metadata databases of another "
                          f"migration ({', '.join(others)}): kept")


def _plan_balancers(plan: ResetPlan, records: list[dict[str, Any]], enable: bool,
                    force: bool) -> None:
    stopped_by_us = set()
    for record in records:
        stopped = record.get("balancersStoppedByUs") or {}
        for role in ("source", "destination"):
            if stopped.get(role):
                stopped_by_us.add(record.get(f"{role}Label"))
    for label in (plan.source, plan.destination):
        state = plan.states[label]
        if state.balancer_running is not False:
            continue  # not sharded, or already running
        ours = label in stopped_by_us
        if enable and (ours or force):
            plan.actions.append(Action(
                "start-balancer", label,
                reason="it was running before this migration stopped it" if ours
                else "--force-balancer"))
        elif ours:
            plan.notes.append(f"the balancer on {label} was stopped by this migration and "
                              f"stays off; to abandon the migration, add --enable-balancer")
        elif enable:
            plan.notes.append(f"the balancer on {label} is off, and no metadata says this "
                              f"migration stopped it: left off (--force-balancer starts it)")


# -- applying ------------------------------------------------------------------------------------
def apply_reset(plan: ResetPlan, live_heartbeat_seconds: float | None = None) -> ResetReport:
    """Carry the plan out, after checking no process started and the metadata did not change."""
    clusters = {label: state.cluster for label, state in plan.states.items()}
    records: dict[str, dict[str, Any] | None] = {}
    for label, cluster in clusters.items():
        with _talking_to(cluster):
            records[label] = MetadataStore(cluster.client).load()
    _refuse_if_live(records, live_heartbeat_seconds)
    now_ids = {label: (record or {}).get("migrationId") for label, record in records.items()}
    if now_ids != plan.record_ids:
        raise ResetError("the migration metadata changed since the plan was made (a mongosync "
                         "process started?); run reset again to see the new plan. Nothing was "
                         "changed")
    done: list[str] = []
    for action in plan.actions:
        cluster = clusters[action.cluster]
        try:
            _apply(cluster, action)
        except PyMongoError as exc:
            so_far = "; ".join(done) or "nothing"
            raise ResetError(f"failed to {action.describe()}: {redact(str(exc))}. Done before "
                             f"that: {so_far}. Reset is safe to run again") from None
        done.append(action.describe())
    destination = clusters[plan.destination]
    with _talking_to(destination, outcome="Every step of the plan was done"):
        remaining = sorted(destination.client.list_database_names())
    return ResetReport(done=done, remaining=remaining, destination=plan.destination)


def _apply(cluster: Cluster, action: Action) -> None:
    if action.kind == "unblock":
        cluster.set_write_block(False)
    elif action.kind == "drop-database":
        if action.target in SYSTEM_DATABASES:  # a plan is data: check the one hard rule
            raise ResetError(f"refusing to drop {action.target}")
        cluster.client.drop_database(action.target)
    elif action.kind == "drop-collection":
        database, collection = action.target.split(".", 1)
        cluster.client[database].drop_collection(collection)
    else:  # "start-balancer"
        cluster.set_balancer(True)


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
    states = [(destination, "the destination", _write_blocked(destination)),
              (source, "the source", _write_blocked(source))]
    if all(blocked is False for _, _, blocked in states):
        return "writes are not blocked on either cluster"
    parts = [f"{_blocked_word(blocked)} on {cluster.label} ({role})"
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


# -- the command ---------------------------------------------------------------------------------
def _cluster_uris(config: str | None, cluster0: str | None, cluster1: str | None
                  ) -> dict[str, str]:
    """--cluster0/--cluster1, falling back to the flat YAML file the process also reads."""
    settings: dict[str, Any] = {}
    if config is not None:
        try:
            with open(config, encoding="utf-8") as handle:
                loaded = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as exc:
            raise click.UsageError(f"cannot read --config {config}: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise click.UsageError(f"--config {config} must be a YAML mapping "
                                   f"(cluster0: ..., cluster1: ...)")
        settings = loaded or {}
    uris = {}
    for label, given in (("cluster0", cluster0), ("cluster1", cluster1)):
        value = given if given is not None else settings.get(label)
        if not value:
            raise click.UsageError(f"--{label} is required (or a {label} key in --config)")
        if not isinstance(value, str):
            raise click.UsageError(f"{label} in --config must be a connection string")
        uris[label] = value
    return uris


def _connect(uris: dict[str, str]) -> dict[str, Cluster]:
    clusters: dict[str, Cluster] = {}
    try:
        for label, uri in uris.items():
            clusters[label] = Cluster.connect(label, uri, timeout_ms=CONNECT_TIMEOUT_MS)
    except InvalidConnectionString as exc:
        for cluster in clusters.values():
            cluster.close()
        raise click.UsageError(f"--{label}: {exc}") from None
    return clusters


def _stdin_is_interactive() -> bool:
    return sys.stdin.isatty()


@click.command("reset", help="""Remove what a failed or abandoned migration left, so a new one
can start (the documented restart-from-scratch procedure, checked).

Finds the migration on the clusters, refuses while a mongosync process still works on it, and
then: disables write blocking on the destination (and on the source when the migration blocked
it), drops the databases the migration created and its metadata database (never admin, local or
config), and optionally turns the balancers back on. Shows the plan and asks before changing
anything.""")
@click.option("--cluster0", metavar="URI", help="First cluster, as given to mongosync.")
@click.option("--cluster1", metavar="URI", help="Second cluster, as given to mongosync.")
@click.option("--config", type=click.Path(dir_okay=False), metavar="FILE",
              help="mongosync's YAML configuration file (its cluster0/cluster1 keys are used; "
                   "--cluster0/--cluster1 win).")
@click.option("--all-user-databases", is_flag=True,
              help="Drop every user database on the destination, not only those the "
                   "migration created (the documented procedure).")
@click.option("--enable-balancer", is_flag=True,
              help="Start the balancers this migration stopped (to abandon the migration).")
@click.option("--force-balancer", is_flag=True,
              help="With --enable-balancer (implied): start the balancers even where no "
                   "metadata says this migration stopped them.")
@click.option("--destination", type=click.Choice(LABELS),
              help="Which cluster is the destination when no metadata says so "
                   "(default cluster1); must agree with the metadata otherwise.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Apply the plan without asking.")
def reset_command(cluster0: str | None, cluster1: str | None, config: str | None,
                  all_user_databases: bool, enable_balancer: bool, force_balancer: bool,
                  destination: str | None, dry_run: bool, yes: bool) -> None:
    clusters = _connect(_cluster_uris(config, cluster0, cluster1))
    try:
        plan = plan_reset(clusters["cluster0"], clusters["cluster1"],
                          all_user_databases=all_user_databases,
                          enable_balancer=enable_balancer, force_balancer=force_balancer,
                          destination=destination)
        click.echo(plan.describe())
        databases = ", ".join(plan.states[plan.destination].databases)
        if plan.nothing_to_do:
            click.echo(f"Nothing to reset. Databases on {plan.destination}: {databases}")
            return
        if dry_run:
            click.echo(f"Dry run: nothing was changed. Databases on {plan.destination}: "
                       f"{databases}")
            return
        if not yes:
            if not _stdin_is_interactive():
                raise click.ClickException(
                    "not applying the plan: standard input is not a terminal, so there is no "
                    "one to confirm it. Review the plan above and run again with --yes to "
                    "apply it. Nothing was changed")
            if not click.confirm("Apply this plan?", default=False):
                raise click.ClickException("not confirmed. Nothing was changed")
        report = apply_reset(plan)
        click.echo(report.describe())
        click.echo("Start mongosync again and call /api/v1/start for a new migration.")
    except ResetError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        for cluster in clusters.values():
            cluster.close()


if __name__ == "__main__":
    reset_command(prog_name="mongosync reset")  # pylint: disable=no-value-for-parameter
