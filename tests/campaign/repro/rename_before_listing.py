"""A rename with dropTarget between /start and the listing of the source's namespaces.

/start takes the change stream's start time; before the source's collections are listed (the
listing is held back 1 s here), documents are inserted into one of the two collections, then
db1.moving is renamed onto db1.target (dropTarget). The listing sees db1.target, holding
moving's documents, and copies it. Change application replays from the start time, by
namespace name:

- inserts into db1.moving (made before the rename) create db1.moving on the destination, holding
  only those documents; the rename event then renames it onto db1.target with dropTarget, which
  drops the full copy: every document moving had before /start is lost;
- inserts into db1.target (the collection the rename drops) land in the destination's
  db1.target, which is already the renamed collection; the rename fails there (NamespaceNotFound,
  ignored) and nothing drops them: the destination keeps documents the source dropped.
"""

import pymongo

from pymongosync.verifier.compare import compare_clusters
from tests.campaign.repro.kit import application, clusters, commit, migration, verdict


def main() -> None:
    found = []
    for written in ("moving", "target"):
        with clusters() as (source, destination):
            app = application(source)
            app.db1.target.insert_many([{"_id": 1000 + i, "old": True} for i in range(3)])
            app.db1.moving.insert_many([{"_id": i, "moving": True} for i in range(3)])
            with pymongo.MongoClient(source.uri, appname="admin") as admin:
                # The listing of the source's collections waits 1 s (the start time is taken
                # before).
                admin.admin.command("configureFailPoint", "failCommand", mode={"times": 1}, data={
                    "failCommands": ["listCollections"], "blockConnection": True,
                    "blockTimeMS": 1000, "appName": "pymongosync"})
            body = {"source": "cluster0", "destination": "cluster1",
                    "verification": {"enabled": False}}
            with migration(source, destination, body) as running:
                app.db1[written].insert_many([{"_id": 100 + i, "later": True} for i in range(5)])
                app.admin.command("renameCollection", "db1.moving", to="db1.target",
                                  dropTarget=True)
                commit(running)
            with pymongo.MongoClient(source.uri) as left, \
                    pymongo.MongoClient(destination.uri) as right:
                comparison = compare_clusters(left, right)
            print(f"inserts into db1.{written} before the rename:", comparison.summary())
            found.append(not comparison.equal)
    verdict(any(found), "the destination differs from the source")


if __name__ == "__main__":
    main()
