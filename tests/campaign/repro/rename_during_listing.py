"""A rename between the listing of a collection and the listing of its indexes.

pymongosync lists the source's collections, then each collection's indexes. db1.moving is
renamed to db1.moved after the first and before the second (each listIndexes of it takes 1 s here): listIndexes on
db1.moving finds no collection, which PyMongo's list_indexes answers with an empty list, and the
collection is recorded without its indexes. The rename is replayed, the index never is: after
commit the destination's db1.moved lacks the index the source has.
"""

import time

import pymongo

from pymongosync.verifier.compare import compare_clusters
from tests.campaign.repro.kit import application, clusters, commit, migration, verdict


def main() -> None:
    with clusters() as (source, destination):
        app = application(source)
        app.db1.moving.insert_many([{"n": i} for i in range(50)])
        app.db1.moving.create_index("n", name="by_n")
        with pymongo.MongoClient(source.uri, appname="admin") as admin:
            # Every listIndexes of db1.moving takes 1 s (the pre-flight's at /start too).
            admin.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
                "failCommands": ["listIndexes"], "namespace": "db1.moving",
                "blockConnection": True, "blockTimeMS": 1000, "appName": "pymongosync"})
        body = {"source": "cluster0", "destination": "cluster1", "verification": {"enabled": False},
                "buildIndexes": "beforeDataCopy"}
        with migration(source, destination, body) as running:
            time.sleep(0.4)  # the listing has listed db1.moving and waits for its indexes
            app.admin.command("renameCollection", "db1.moving", to="db1.moved")
            with pymongo.MongoClient(source.uri, appname="admin") as admin:
                admin.admin.command("configureFailPoint", "failCommand", mode="off")
            commit(running)
        with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right)
        print(comparison.summary())
        verdict(not comparison.equal, "the destination differs from the source")


if __name__ == "__main__":
    main()
