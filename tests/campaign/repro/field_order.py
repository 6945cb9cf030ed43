"""A pipeline update that puts a new field before existing ones, during change application.

The source stores {_id, pad, new, a}; the change event is an update whose updatedFields hold
{new, a} (MongoDB's delta oplog entry re-inserts every field after the new one, and a
re-inserted field goes to the end); replayed as $set, "a" keeps its old place and the
destination stores {_id, pad, a, new}: the same fields in another order. With the embedded
verifier on, the commit fails with VerificationFailed; with it off (as here), the migration
reaches COMMITTED with the difference.
"""

from tests.campaign.repro.kit import application, clusters, commit, migration, verdict


def main() -> None:
    with clusters() as (source, destination):
        app = application(source)
        app.app.items.insert_one({"_id": 1, "pad": "p" * 100, "a": 1})
        with migration(source, destination, {"source": "cluster0", "destination": "cluster1",
                                             "verification": {"enabled": False}}) as running:
            running.wait_for(lambda p: p["info"] == "change event application", timeout=120)
            app.app.items.update_one({"_id": 1}, [{"$replaceWith": {"$mergeObjects": [
                {"_id": "$_id", "pad": "$pad", "new": True}, "$$ROOT"]}}])
            events = running.progress()["totalEventsApplied"]
            running.wait_for(lambda p: p["totalEventsApplied"] > events, timeout=60)
            commit(running)
        left = list(app.app.items.find_one({"_id": 1}))
        with application(destination) as dest:
            right = list(dest.app.items.find_one({"_id": 1}))
        print("source:     ", left)
        print("destination:", right)
        verdict(left != right, "the destination document has its fields in another order")


if __name__ == "__main__":
    main()
