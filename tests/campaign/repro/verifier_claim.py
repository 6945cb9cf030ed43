"""One transient error while the embedded verifier hashes a range: canCommit never comes.

The range stays claimed by the worker (claim_task only hands out unclaimed ranges; the retry
of _hash_ranges claims the next one), so initial hashing never finishes.
"""

import pymongo

from tests.campaign.repro.kit import application, clusters, migration, verdict


def main() -> None:
    with clusters() as (source, destination):
        app = application(source)
        app.app.items.insert_many([{"n": i} for i in range(100)])
        with pymongo.MongoClient(destination.uri, appname="admin") as admin:
            # Only the verifier reads app.items on the destination: its first read fails, once.
            admin.admin.command("configureFailPoint", "failCommand", mode={"times": 1}, data={
                "failCommands": ["find"], "namespace": "app.items", "errorCode": 6,
                "appName": "pymongosync"})
        with migration(source, destination) as running:
            try:
                running.wait_for(lambda p: p["canCommit"], timeout=60)
                stuck = False
            except TimeoutError:
                stuck = True
            print("verification:", running.progress().get("verification"))
        verdict(stuck, "canCommit not reached within 60 s")


if __name__ == "__main__":
    main()
