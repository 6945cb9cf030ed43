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
- :data:`pymongosync.cli.reset.reset_command` is the ``mongosync reset`` command, a thin
  layer over them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from pymongo.errors import OperationFailure, PyMongoError, ServerSelectionTimeoutError

from pymongosync.clusters import Cluster, redact
from pymongosync.errors import PymongosyncError, ResetError
from pymongosync.instances import InstanceLayout
from pymongosync.lease import LEASE_SECONDS, Lease
from pymongosync.leftovers import blocked_word, write_blocked
from pymongosync.namespaces import SYSTEM_DATABASES
from pymongosync.store import METADATA_DATABASE, StoredMigration, is_metadata_database

# Short, so a wrong host fails in seconds rather than after the engine's 30 s.
CONNECT_TIMEOUT_MS = 5_000
UNBLOCK_COMMAND = "db.adminCommand({setUserWriteBlockMode: 1, global: false})"
AUTH_FAILED = 18


ActionKind = Literal["unblock", "drop-collection", "drop-database", "start-balancer"]


# -- what the clusters hold ----------------------------------------------------------------------
@dataclass
class ClusterState:
    """What one cluster looks like right now (read once, while planning)."""

    cluster: Cluster
    sharded: bool
    databases: list[str]  # every name listDatabases returns, system databases included
    write_blocked: bool | None  # None: the server does not report it
    balancer_running: bool | None  # None: not a sharded cluster
    record: StoredMigration | None  # the migration stored in its reserved database

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
    record: StoredMigration | None  # the stored migration that identified the destination
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
            stored = record.global_state
            superseded = " (superseded by a reverse migration)" if stored.superseded_by else ""
            lines.append(
                f"Migration {stored.migration_id}{superseded}: {stored.source_label} → "
                f"{stored.destination_label}, state {record.resume.state.value}, phase "
                f"{record.resume.phase.label!r}, stored on {self.destination}")
        destination = self.states[self.destination]
        lines.append(f"Destination {self.destination}: writes "
                     f"{blocked_word(destination.write_blocked)}; databases: "
                     f"{', '.join(destination.user_databases) or 'no user database'}")
        lines.append(f"Source {self.source}: writes "
                     f"{blocked_word(self.states[self.source].write_blocked)}")
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
               destination: str | None = None) -> ResetPlan:
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
    refuse_if_live(clusters, {label: state.record for label, state in states.items()})
    destination_label, record = _find_destination(states, destination)
    source_label = "cluster1" if destination_label == "cluster0" else "cluster0"
    plan = ResetPlan(states=states, destination=destination_label, source=source_label,
                     record=record,
                     record_ids={label: _migration_id(state.record)
                                 for label, state in states.items()})
    records = [state.record for state in states.values() if state.record is not None]
    _plan_write_blocks(plan, records)
    _plan_user_drops(plan, all_user_databases)
    _plan_balancers(plan, records, enable_balancer or force_balancer, force_balancer)
    # Metadata last: a reset stopped half-way can still read what the migration created.
    _plan_metadata_drops(plan)
    return plan


def _inspect(cluster: Cluster) -> ClusterState:
    with talking_to(cluster):
        return ClusterState(cluster=cluster, sharded=cluster.is_sharded,
                            databases=sorted(cluster.client.list_database_names()),
                            write_blocked=write_blocked(cluster),
                            balancer_running=cluster.balancer_running(),
                            record=cluster.metadata_store().load())


@contextmanager
def talking_to(cluster: Cluster, outcome: str = "Nothing was changed",
               error: type[PymongosyncError] = ResetError) -> Iterator[None]:
    """Turn driver errors into one clear ``error`` naming the cluster (never a password),
    ending with ``outcome``: what the command had changed by then."""
    where = f"{cluster.label} ({', '.join(cluster.hosts)})"
    try:
        yield
    except ServerSelectionTimeoutError as exc:
        # The driver's text ends in timeouts and a topology dump; the first cause is enough.
        cause = re.split(r" \(configured timeouts|, Timeout:", redact(str(exc)))[0]
        raise error(f"cannot reach {where}: no server answered within "
                         f"{CONNECT_TIMEOUT_MS / 1000:g} s ({cause}); check the host, the port "
                         f"and that the cluster is up. {outcome}") from None
    except OperationFailure as exc:
        if exc.code == AUTH_FAILED:
            raise error(f"{where} refused the credentials of the connection string "
                             f"(authentication failed); check the user name, password and "
                             f"authSource. {outcome}") from None
        raise error(f"{where} refused a command: {redact(str(exc))}. {outcome}") from None
    except PyMongoError as exc:
        raise error(f"{where}: {redact(str(exc))}. {outcome}") from None


def _migration_id(record: StoredMigration | None) -> str | None:
    return None if record is None else record.global_state.migration_id


def refuse_if_live(clusters: dict[str, Cluster], stored: dict[str, StoredMigration | None],
                   command: str = "reset",
                   error: type[PymongosyncError] = ResetError) -> None:
    """Refuse while a process owns a stored migration: its lease is live by the server's clock
    (and, for a process on this host, its PID still exists). With one instance per source
    shard, while any instance's process does."""
    for label, record in stored.items():
        if record is None:
            continue
        instances = InstanceLayout(tuple(record.global_state.instances)).resume_ids
        with talking_to(clusters[label], error=error):
            store = clusters[label].metadata_store()
            holders = [Lease(store, instance=instance).holder() for instance in instances]
        for holder in holders:
            if holder is None or not holder.live:
                continue
            raise error(
                f"a mongosync process ({holder.describe()}) is still working on the migration "
                f"stored on {label}: it holds the migration's lease. Stop it first (every "
                f"instance, with one per source shard): press Ctrl-C where it runs (or POST "
                f"/api/v1/pause, e.g. `curl -X POST localhost:27182/api/v1/pause -d '{{}}'`, "
                f"then stop the process); if it was killed on another host, wait "
                f"{LEASE_SECONDS:.0f} seconds for its lease to expire. Then run {command} "
                f"again. Nothing was changed")


def _find_destination(states: dict[str, ClusterState], named: str | None
                      ) -> tuple[str, StoredMigration | None]:
    """Which cluster is the destination, and the stored migration that says so (if any)."""
    records = {label: state.record for label, state in states.items() if state.record}
    live = [label for label, record in records.items()
            if not record.global_state.superseded_by]
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


def _check_record_matches(label: str, record: StoredMigration,
                          states: dict[str, ClusterState]) -> None:
    stored_destination = record.global_state.destination_label
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


def _hosts_mismatch(record: StoredMigration, states: dict[str, ClusterState]) -> str | None:
    """How the stored cluster hosts differ from the clusters given (None when they agree)."""
    for stored_label, hosts in record.global_state.cluster_hosts.items():
        given = states[stored_label].cluster.hosts if stored_label in states else None
        if hosts and given is not None and sorted(hosts) != given:
            return f"{stored_label} = {', '.join(hosts)}, not {', '.join(given)}"
    return None


def _labels_write_blocked_by_us(records: list[StoredMigration]) -> set[str]:
    """The cluster labels any stored migration blocked writes on, in either role."""
    flagged = set()
    for record in records:
        stored = record.global_state
        if stored.source_write_blocked_by_us:
            flagged.add(stored.source_label)
        if stored.destination_write_blocked_by_us:
            flagged.add(stored.destination_label)
    return flagged


def _plan_write_blocks(plan: ResetPlan, records: list[StoredMigration]) -> None:
    destination = plan.states[plan.destination]
    # The documented procedure always unblocks the destination; when the server cannot say
    # whether it is blocked, do it whenever a migration was there to block it.
    if destination.write_blocked or (destination.write_blocked is None and records):
        plan.actions.append(Action("unblock", plan.destination,
                                   reason="the destination of the migration"))
    source = plan.states[plan.source]
    blocked_by_us = plan.source in _labels_write_blocked_by_us(records)
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
    if record is not None and record.resume.can_write and not all_user_databases:
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
    store = destination.cluster.metadata_store()
    with talking_to(destination.cluster):
        created_databases = set(store.created_databases())
        created_collections = set(store.created_namespaces())
        unconfirmed = store.unconfirmed_namespaces()
    # Without preExistingDestinationData /start refused any user database, so whatever a
    # created database holds came through this migration; with it, a database the migration
    # wrote into may have existed before, and only the collections it created go.
    assert plan.record is not None
    pre_existing_allowed = bool(plan.record.global_state.request.get(
        "preExistingDestinationData"))
    not_created: list[str] = []
    for name in user:
        ours = name in created_databases
        created_here = sorted(c for c in created_collections if c.startswith(f"{name}."))
        if ours and not pre_existing_allowed:
            plan.actions.append(Action("drop-database", plan.destination, name,
                                       "created by this migration"))
            continue
        if not ours and not created_here:
            not_created.append(name)
            continue
        with talking_to(destination.cluster):
            collections = [c for c in destination.cluster.client[name].list_collection_names()
                           if not c.startswith("system.")]
        foreign = [c for c in collections if f"{name}.{c}" not in created_collections]
        if ours and not foreign:
            plan.actions.append(Action("drop-database", plan.destination, name,
                                       "created by this migration"))
            continue
        plan.kept.append(name)
        if foreign:
            plan.notes.append(f"database {name} also holds collections this migration did not "
                              f"create ({', '.join(sorted(foreign))}): only the ones it "
                              f"created are dropped")
        for collection in sorted(collections):
            if f"{name}.{collection}" in created_collections:
                plan.actions.append(Action("drop-collection", plan.destination,
                                           f"{name}.{collection}", "created by this migration"))
    plan.kept += not_created
    if not_created:
        plan.notes.append(f"kept on {plan.destination} because this migration did not create "
                          f"them: {', '.join(not_created)} (--all-user-databases drops every "
                          f"user database)")
    if unconfirmed and pre_existing_allowed:
        plan.notes.append(f"kept because a stop interrupted their creation and nothing says "
                          f"this migration created them rather than someone else: "
                          f"{', '.join(unconfirmed)}; drop them by hand if they are leftovers")


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
    ours = (record is not None and bool(record.global_state.superseded_by)
            and _hosts_mismatch(record, plan.states) is None)
    if ours:
        plan.actions.append(Action("drop-database", plan.source, METADATA_DATABASE,
                                   "the metadata this migration superseded when reversed"))
    others = [name for name in source.user_databases
              if is_metadata_database(name) and not (ours and name == METADATA_DATABASE)]
    if others:
        plan.notes.append(f"the source {plan.source} holds metadata databases of another "
                          f"migration ({', '.join(others)}): kept")


def _plan_balancers(plan: ResetPlan, records: list[StoredMigration], enable: bool,
                    force: bool) -> None:
    stopped_by_us = set()
    for record in records:
        stored = record.global_state
        for role, label in (("source", stored.source_label),
                            ("destination", stored.destination_label)):
            if stored.balancers_stopped_by_us.get(role):
                stopped_by_us.add(label)
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
def apply_reset(plan: ResetPlan) -> ResetReport:
    """Carry the plan out, after checking no process started and the metadata did not change."""
    clusters = {label: state.cluster for label, state in plan.states.items()}
    records: dict[str, StoredMigration | None] = {}
    for label, cluster in clusters.items():
        with talking_to(cluster):
            records[label] = cluster.metadata_store().load()
    refuse_if_live(clusters, records)
    now_ids = {label: _migration_id(record) for label, record in records.items()}
    if now_ids != plan.record_ids:
        raise ResetError("the migration metadata changed since the plan was made (a mongosync "
                         "process started?); run reset again to see the new plan. Nothing was "
                         "changed")
    # Before anything is dropped: a process started while the reset is under way, or after it
    # was interrupted, must refuse this migration rather than resume a half-dropped one.
    for label, record in records.items():
        if record is not None and plan.actions:
            with talking_to(clusters[label]):
                clusters[label].metadata_store().mark_reset_started()
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
    with talking_to(destination, outcome="Every step of the plan was done"):
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

