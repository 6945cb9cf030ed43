"""The process around a migration: secrets kept out of everything it says, fatal errors
(spec §2.6), a restart against other clusters (spec §15.1), and /metrics moving with the work."""

from __future__ import annotations

import signal
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mongoemu.testing import EmulatorProcess, start_emulator
from pymongosync.store import MetadataStore

from .processkit import (
    START,
    Mongosync,
    MongosyncFactory,
    admin_client,
    seed,
    slow_down,
    speed_up,
    start_cluster,
    user_client,
)

SECRET = "s3cret-Passw0rd"


def everything_said(process: Mongosync) -> str:
    return "".join(process.stdout) + "".join(process.stderr)


def test_passwords_never_appear_and_bad_credentials_are_fatal(
        destination: EmulatorProcess, mongosync: MongosyncFactory) -> None:
    with start_emulator("replset", extra_args=["--auth", "--user", "root", "--password", SECRET,
                                               "--noop-interval", "1"]) as secured:
        good = secured.uri.replace("mongodb://", f"mongodb://root:{SECRET}@")
        process = mongosync("--cluster0", good, "--cluster1", destination.uri, "--port", "0",
                            "--acceptDisclaimer").wait_listening().wait_ready()
        progress = process.request("GET", "/api/v1/progress").text
        assert process.progress()["state"] == "IDLE" and SECRET not in progress
        options = process.wait_for_log("Mongosync Options")
        assert options["cluster0"].startswith("mongodb://<credentials>@")
        process.signal(signal.SIGTERM)
        assert process.wait_exit(10) == 0
        assert SECRET not in everything_said(process)

        wrong = secured.uri.replace("mongodb://", f"mongodb://root:{SECRET}-wrong@")
        refused = mongosync("--cluster0", wrong, "--cluster1", destination.uri, "--port", "0",
                            "--acceptDisclaimer")
        assert refused.wait_exit(30) == 1
        fatal = refused.log()[-1]
        assert fatal["level"] == "fatal", refused.output()
        assert fatal["message"] == "Got a fatal error running Mongosync"
        assert "cluster" in fatal["error"] and "Authentication failed" in fatal["error"]
        assert SECRET not in everything_said(refused)


def test_secrets_with_spaces_and_secret_options_never_appear(
        destination: EmulatorProcess, mongosync: MongosyncFactory) -> None:
    """A password containing a raw space, and secret-bearing URI options such as
    tlsCertificateKeyFilePassword, reached the logs in clear."""
    spaced = "open sesame 42"
    with start_emulator("replset", extra_args=["--auth", "--user", "root", "--password",
                                               spaced, "--noop-interval", "1"]) as secured:
        good = secured.uri.replace("mongodb://", f"mongodb://root:{spaced}@")
        process = mongosync("--cluster0", good, "--cluster1", destination.uri, "--port", "0",
                            "--acceptDisclaimer").wait_listening().wait_ready()
        assert process.progress()["state"] == "IDLE"
        process.signal(signal.SIGTERM)
        assert process.wait_exit(10) == 0
        assert spaced not in everything_said(process), everything_said(process)
        # TLS options cannot reach an emulator without TLS: the process fails, and says why
        # without the key file's password or the AWS session token.
        key_password, token = "KeyFile-Secret-77", "Session-Token-99"
        tls = (good + f"&tls=true&tlsCertificateKeyFile=/nonexistent.pem"
               f"&tlsCertificateKeyFilePassword={key_password}")
        failed = mongosync("--cluster0", tls, "--cluster1", destination.uri + "&authMechanism="
                           f"MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:{token}",
                           "--port", "0", "--acceptDisclaimer")
        assert failed.wait_exit(30) != 0
        said = everything_said(failed)
        assert key_password not in said and token not in said and spaced not in said, said


def test_restart_against_other_clusters_is_refused(source: EmulatorProcess,
                                                   destination: EmulatorProcess,
                                                   mongosync: MongosyncFactory) -> None:
    seed(source, items=500)
    process = mongosync.clusters(source, destination)
    assert process.post("start", START) == (200, {"success": True})
    process.wait_for(lambda p: p["info"] == "change event application", timeout=60)
    process.signal(signal.SIGTERM)
    assert process.wait_exit(10) == 0
    with start_cluster() as stranger:
        refused = mongosync("--cluster0", stranger.uri, "--cluster1", destination.uri,
                            "--port", "0", "--acceptDisclaimer")
        assert refused.wait_exit(30) == 1, refused.output()
        fatal = refused.log()[-1]
        assert fatal["level"] == "fatal" and "ClusterMismatch" in fatal["error"]
        assert "same --cluster0/--cluster1" in fatal["error"]
    again = mongosync.clusters(source, destination)  # the right clusters: it goes on
    assert again.progress()["state"] == "RUNNING"


def test_fatal_migration_error_exits_and_stays_recorded(source: EmulatorProcess,
                                                        destination: EmulatorProcess,
                                                        mongosync: MongosyncFactory) -> None:
    seed(source, items=3000)
    slow_down(destination, "insert", 300, namespace="bulk.items")
    # Without the change buffer, the changes made during the copy live only in the oplog.
    process = mongosync.clusters(source, destination, "--disableChangeBuffering")
    assert process.post("start", START) == (200, {"success": True})
    process.wait_for(lambda p: p["info"] == "collection copy"
                     and p["collectionCopy"]["estimatedCopiedBytes"] > 0, timeout=60)
    with user_client(source) as client:
        client.bulk.items.insert_many([{"late": n} for n in range(10)])
    with admin_client(source) as client:
        client.admin.command("emulatorTruncateOplog")  # the history to apply is gone
    speed_up(destination)
    assert process.wait_exit(60) == 1, process.output()
    fatal = process.log()[-1]
    assert fatal["level"] == "fatal" and fatal["name"] == "ChangeStreamHistoryLost", fatal
    with admin_client(destination) as client:
        stored = MetadataStore(client).load()
    assert stored is not None and stored.global_state.error is not None
    assert stored.global_state.error.name == "ChangeStreamHistoryLost"
    restarted = mongosync("--cluster0", source.uri, "--cluster1", destination.uri, "--port",
                          "0", "--acceptDisclaimer")
    assert restarted.wait_exit(30) == 1
    assert "mongosync reset" in restarted.log()[-1]["error"]


def metrics(process: Mongosync) -> dict[str, Any]:
    """Each family's value (API errors summed); state sets as {state: 0 or 1}."""
    response = process.request("GET", "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    figures: dict[str, Any] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name in ("mongosync_state", "mongosync_phase"):
            figures[family.name] = {sample.labels[family.name]: sample.value
                                    for sample in family.samples}
        elif family.name == "mongosync_api_errors":
            figures[family.name] = sum(sample.value for sample in family.samples)
        elif family.samples:
            figures[family.name] = family.samples[0].value
    return figures


def active(state_set: object) -> str:
    assert isinstance(state_set, dict)
    (name,) = [key for key, value in state_set.items() if value == 1]
    return name


def test_metrics_move_with_the_migration(source: EmulatorProcess, destination: EmulatorProcess,
                                         mongosync: MongosyncFactory) -> None:
    seed(source, items=6000)
    slow_down(destination, "insert", 150, namespace="bulk.items")
    process = mongosync.clusters(source, destination, "--loadLevel", "1")
    idle = metrics(process)
    assert active(idle["mongosync_state"]) == "IDLE"
    assert "mongosync_collection_copy_copied_bytes_count" not in idle
    assert process.post("start", START) == (200, {"success": True})
    process.wait_for(lambda p: p["info"] == "collection copy"
                     and p["collectionCopy"]["estimatedCopiedBytes"] > 0, timeout=60)
    copying = metrics(process)
    assert active(copying["mongosync_state"]) == "RUNNING"
    assert active(copying["mongosync_phase"]) == "CollectionCopy"
    assert 0 < copying["mongosync_collection_copy_copied_bytes_count"] < \
        copying["mongosync_collection_copy_estimated_total_bytes"]
    speed_up(destination)
    process.wait_for(lambda p: p["info"] == "change event application", timeout=60)
    with user_client(source) as client:
        client.app.users.insert_many([{"name": f"late {n}"} for n in range(50)])
    process.wait_for(lambda p: p["totalEventsApplied"] >= 50, timeout=60)
    applying = metrics(process)
    assert active(applying["mongosync_phase"]) == "ChangeEventApplication"
    assert applying["mongosync_collection_copy_copied_docs_count"] > \
        copying["mongosync_collection_copy_copied_docs_count"]
    assert applying["mongosync_collection_copy_partitions_completed_count"] == \
        applying["mongosync_collection_copy_partitions_total"] >= 1
    assert applying["mongosync_cea_total_events_applied"] >= 50
    assert applying["mongosync_lag_time"] >= 0 and applying["mongosync_fatal_error"] == 0
    process.post("resume")  # refused: counted as an API error
    assert metrics(process)["mongosync_api_errors"] == 1
