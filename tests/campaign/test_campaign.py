"""The randomized differential campaign's fixed seeds: each one a whole migration driven through
the real ``mongosync`` process while a seeded workload writes to the source (every BSON type,
numerically equal ``_id``s, DDL, transactions), with kill -9s, pauses and injected faults,
ending with commit and a byte-for-byte comparison.

The long mode runs many more: ``.venv/bin/python -m scripts.campaign --seconds 600``.
Deselect these with ``-m "not campaign"``.
"""

from __future__ import annotations

import pymongo
import pytest
from bson import Int64
from bson.codec_options import DatetimeConversion

from mongoemu.testing import EmulatorProcess

from .generator import Op, features, generate
from .runner import run_seed

# Chosen so that together they exercise every feature of the generator (see
# test_the_seeds_cover_every_feature), each in about 5-10 s. Plans change when the generator or
# its AVOIDED set does: that test then says which features these seeds no longer reach, and
# `scripts.campaign` finds seeds that do. 369: a rename across databases during the listing
# (lost the collection in about one run out of three before its fix; see
# test_a_rename_the_listing_saw_under_neither_name_copies_the_collection_whole). 10278: a
# stored batch of the change buffer ending inside a transaction, applied again after each
# restart, and a rename with dropTarget applied again over its target (failed every run before
# its fix; see test_a_stored_batch_the_live_stream_went_past_is_never_applied_again). 10375:
# prepareUnique set again on an index already unique, which the commit's conversion cleared
# (the verifier failed every run; see test_prepare_unique_set_again_on_a_unique_index_is_restored).
SEEDS = [3, 7, 11, 19, 24, 43, 161, 200, 240, 289, 369, 10278, 10375]


# Seeds of the modes that are off by default (generator.py), each passed by the campaigns of
# its mode: 786 draws the server's own copies (convertToCapped and cloneCollectionAsCapped
# during the copy and after it, $out after it); 345 runs with --hotDocIDs naming three
# documents its timelines write; 300 and 547 migrate into a sharded destination, on whose
# shard key {nested.z: 1} the source has its own index (hidden at commit in 300, built during the
# copy in 547: the stand-in index, and the source's index in place of sharding's); 17 migrates
# from a sharded source (three collections sharded there, a fourth sharded during the copy,
# transactions, a /pause that came while change application started the verifier: /pause
# answered 500 before its fix); 2 with one
# mongosync per source shard (kills of one instance, of all while paused, the commit barrier);
# 27 too (a collection sharded during the copy): a pause while shard02's instance held writes
# back for the coordinator, down, lost them before its fix
# (tests/campaign/repro/one_per_shard_pause.py); 28 from a sharded source into a sharded
# destination, which takes the source's shard keys (kills, a pause, faults).
MODE_SEEDS: list[tuple[int, dict[str, bool]]] = [(786, {"server_copies": True}),
                                                 (345, {"hot_documents": True}),
                                                 (300, {"sharded_destination": True}),
                                                 (547, {"sharded_destination": True}),
                                                 (17, {"sharded_source": True}),
                                                 (2, {"one_per_shard": True}),
                                                 (27, {"one_per_shard": True}),
                                                 (28, {"sharded_source": True,
                                                       "sharded_destination": True})]


@pytest.mark.campaign
@pytest.mark.parametrize("seed", SEEDS)
def test_seed(seed: int) -> None:
    outcome = run_seed(seed)
    assert outcome.passed, outcome.line()
    assert outcome.stats["documents"] > 0 and outcome.stats["ops_ok"] > 0, outcome.line()


@pytest.mark.campaign
@pytest.mark.parametrize(("seed", "modes"), MODE_SEEDS, ids=lambda value: str(value))
def test_seed_in_a_mode(seed: int, modes: dict[str, bool]) -> None:
    outcome = run_seed(seed, **modes)
    assert outcome.passed, outcome.line()
    assert f"CAMPAIGN_{next(iter(modes)).upper()}=1" in outcome.command


def test_the_mode_seeds_draw_their_mode() -> None:
    copies = features(generate(786, server_copies=True, hot_documents=False))
    assert {"convert_to_capped during cea", "clone_capped during copy",
            "out during cea"} <= copies
    assert len(generate(345, server_copies=False, hot_documents=True).hot_documents) == 3
    assert len(generate(17, sharded_source=True).source_shard_keys) == 3
    per_shard = generate(2, one_per_shard=True)
    assert per_shard.sharded_source and per_shard.source_shard_keys
    assert {"kill during copy", "kill during cea", "pause and kill"} <= features(per_shard)
    for seed, steps in ((300, "setup"), (547, "copy")):
        plan = generate(seed, sharded_destination=True)
        entry = plan.start_body["sharding"]["shardingEntries"][0]
        assert entry["shardCollection"]["key"] == [{"nested.z": 1}]
        assert any(isinstance(op, Op) and op.kind == "create_index" and
                   (op.db, op.coll) == (entry["database"], entry["collection"]) and
                   op.args["spec"] == {"key": {"nested.z": 1}, "name": "z_hidden_later",
                                       "hidden": True} for op in getattr(plan, steps))


def test_the_seeds_cover_every_feature() -> None:
    """Every feature the generator can produce in a hundred seeds is in one of ``SEEDS``."""
    possible = set().union(*(features(generate(seed)) for seed in range(1, 101)))
    covered = set().union(*(features(generate(seed)) for seed in SEEDS))
    assert possible - covered == set()


def _tamper(source: EmulatorProcess, destination: EmulatorProcess) -> None:
    """After COMMITTED: one document changed, and one ``_id`` of another numeric type."""
    with pymongo.MongoClient(destination.uri,
                             datetime_conversion=DatetimeConversion.DATETIME_AUTO) as client:
        for db in client.list_database_names():
            if db in ("admin", "config", "local", "pre") or db.startswith("mongosync"):
                continue
            for name in client[db].list_collection_names(filter={"type": "collection"}):
                if name == "keep_dest":  # the destination's own (pre-existing data)
                    continue
                collection = client[db][name]
                document = collection.find_one({"_id": {"$type": "int"}})
                if document is not None and not collection.options().get("capped"):
                    collection.delete_one({"_id": document["_id"]})
                    collection.insert_one({**document, "_id": Int64(document["_id"])})
                    collection.update_one({"_id": {"$ne": document["_id"]}},
                                          {"$set": {"tampered": True}})
                    return
    raise AssertionError("no document to tamper with")


@pytest.mark.campaign
def test_a_difference_fails_the_seed() -> None:
    """The checks can fail: a destination changed behind the tool's back is caught by both the
    verifier and the independent comparison, and the seed prints how to reproduce it."""
    outcome = run_seed(SEEDS[0], tamper=_tamper)
    assert not outcome.passed
    assert "differences after commit" in outcome.reason
    assert "(verifier), 0 (independent" not in outcome.reason, outcome.reason
    assert not outcome.reason.startswith("0 differences"), outcome.reason
    assert f"reproduce with: .venv/bin/python -m scripts.campaign --seed {SEEDS[0]}" in \
        outcome.line()
