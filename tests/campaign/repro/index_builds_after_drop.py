"""Index builds run beside change application from the namespaces listed at the start: a
collection dropped or renamed on the source meanwhile gets its indexes built under its old name
after change application dropped or renamed it there, and createIndexes re-creates it.

Here app.gone is dropped on the source while the builder is still busy with app.big (its build
takes 3 s): the drop is applied, then the builder creates gone's index, which creates app.gone
again on the destination (seen when the commit waits a second after canCommit). Committing as
soon as canCommit is true, as here, ended instead with big's index n_1 missing on the
destination in every run.
"""

import pymongo

from pymongosync.verifier.compare import compare_clusters
from tests.campaign.repro.kit import application, clusters, commit, migration, verdict


def main() -> None:
    with clusters() as (source, destination):
        app = application(source)
        app.app.big.insert_many([{"n": i, "pad": "x" * 1000} for i in range(2000)])
        app.app.big.create_index("n")
        app.app.gone.insert_many([{"k": i} for i in range(10)])
        app.app.gone.create_index("k")
        with pymongo.MongoClient(destination.uri, appname="admin") as admin:
            admin.admin.command("configureFailPoint", "failCommand", mode={"times": 1}, data={
                "failCommands": ["createIndexes"], "namespace": "app.big", "blockConnection": True,
                "blockTimeMS": 3000, "appName": "pymongosync"})
        body = {"source": "cluster0", "destination": "cluster1", "verification": {"enabled": False}}
        with migration(source, destination, body) as running:
            running.wait_for(lambda p: p["info"] == "change event application", timeout=120)
            app.app.gone.drop()
            commit(running)
        with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right)
            print("destination collections:", sorted(right.app.list_collection_names()))
        print(comparison.summary())
        verdict(not comparison.equal, "the destination differs from the source")


if __name__ == "__main__":
    main()
