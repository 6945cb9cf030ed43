"""A pipeline update that puts a new field before existing ones, during change application.

The source stores {_id, pad, new, a}; the change event's updateDescription lists {new, a}
among updatedFields (MongoDB's delta oplog entry re-inserts every field after the new one,
and a re-inserted field goes to the end), exactly like fields updated in place. Replayed as
$set, "a" kept its old place and the destination stored {_id, pad, a, new}: the same fields
in another order. With the verifier off (as here), the migration reached COMMITTED with the
difference. Fixed: change application reads each update as its oplog delta
(showRawUpdateDescription) and applies it with $_internalApplyOplogUpdate.
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
