"""The destination is unreachable for pymongosync for longer than the lease (10 s), as during an
election, then comes back: the migration never moves again.

For 15 s the destination answers pymongosync's writes with a write concern error
PrimarySteppedDown (PyMongo then marks the server unknown until its next heartbeat). The
monitor's lease renewals fail for longer than the lease: it stops the worker, and reading the
lease holder fails too, so `standby` stays None; when the destination is back the renewal
succeeds, and nothing starts the worker again. RUNNING forever, no error.
"""

import time

import pymongo

from tests.campaign.repro.kit import application, clusters, migration, verdict


def main() -> None:
    with clusters() as (source, destination):
        app = application(source)
        app.app.items.insert_many([{"n": i} for i in range(100)])
        with migration(source, destination) as running:
            running.wait_for(lambda p: p["info"] == "change event application", timeout=120)
            with pymongo.MongoClient(destination.uri, appname="admin") as admin:
                admin.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
                    "failCommands": ["update", "insert", "delete", "findAndModify"],
                    "writeConcernError": {"code": 189, "errmsg": "primary stepped down"},
                    "errorLabels": ["RetryableWriteError"], "appName": "pymongosync"})
                time.sleep(15)
                admin.admin.command("configureFailPoint", "failCommand", mode="off")
            app.app.items.insert_one({"after": True})
            before = running.progress()["totalEventsApplied"]
            try:
                running.wait_for(lambda p: p["totalEventsApplied"] > before, timeout=60)
                stuck = False
            except TimeoutError:
                stuck = True
            worker = running._worker is not None and running._worker.is_alive()  # noqa: SLF001 - shown for the diagnosis
            print(f"state {running.state}, worker alive: {worker}, standby: {running.standby}")
        verdict(stuck, "no change applied in the 60 s after the destination came back")


if __name__ == "__main__":
    main()
