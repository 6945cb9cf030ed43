"""mongoemu: createIndexes of {_id: 1} on a clustered collection adds a second index.

MongoDB treats createIndexes on the cluster key as a no-op whatever the name or the clustered
option (jstests clustered_collection_create_index_clustered_common.js: "createIndex on the
cluster key is a no-op", "the specified name is discarded"); the emulator lists two indexes,
both named after the clustered index. pymongosync rebuilds the clustered index of a collection
created with clusteredIndex.name that way, and the destination ends with an extra index.
"""

import sys
from pathlib import Path

import pymongo

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from mongoemu.testing import start_emulator
from tests.campaign.repro.kit import verdict


def main() -> None:
    with start_emulator("replset") as emulator, pymongo.MongoClient(emulator.uri) as client:
        client.test.command("create", "c", clusteredIndex={"key": {"_id": 1}, "unique": True,
                                                            "name": "by_id"})
        client.test.command("createIndexes", "c", indexes=[
            {"key": {"_id": 1}, "name": "by_id", "clustered": True}])
        indexes = list(client.test.c.list_indexes())
        for index in indexes:
            print(dict(index))
        verdict(len(indexes) != 1, f"{len(indexes)} indexes on the clustered collection")


if __name__ == "__main__":
    main()
