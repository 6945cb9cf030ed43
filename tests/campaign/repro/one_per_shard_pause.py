"""pymongosync, one mongosync per source shard: writes lost after a kill of the coordinator and
a pause during change application. Fixed (phases/apply.py, ``_handle``).

The campaign's minimal plan of seed 27 with CAMPAIGN_ONE_PER_SHARD=1: a 2-shard source, the
databases on shard01; during change application 2 documents inserted into db0.c3, the
coordinator (shard01's instance) killed and started again 0.3 s later, 20 documents inserted
into db1.c1 (a new collection: its create event goes through the coordinator's DDL ordering)
while it is down, then /pause and /resume on both instances. The coordinator applies db1.c1's
create, but none of the 20 inserts: the embedded verifier finds them missing and the commit
fails (VerificationFailed, "20 found"), so nothing wrong is committed while it is on; `mongosync
repair` takes them from the source. Without the kill, or without the pause, the plan passes.

The cause: db1 is placed on shard02 (its first write created it), whose instance held the
create and the inserts back until the coordinator, down, applied the create. The pause stopped
that wait, and the instance went on with the batches its reader had read ahead: an empty one's
resume token moved its checkpoint past the held-back events, which were never read again.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.campaign.generator import Kill, Op, Pause, Plan
from tests.campaign.repro.kit import replay


def plan() -> Plan:
    return Plan(
        seed=27,  # the seed draws which instance a kill takes: the coordinator, here
        big=False, load_level=2, slow_side="destination", slow_ms=20, setup=[], copy=[],
        cea=[Op("insert", "db0", "c3", {"documents": [{"_id": i} for i in range(2)]}),
             Kill(delay=1.0, down_for=0.3),
             Op("insert", "db1", "c1", {"documents": [{"_id": i} for i in range(20)]}),
             Pause(seconds=0.0, kill=False)],
        commit_kills=[], start_body={"source": "cluster0", "destination": "cluster1",
                                     "buildIndexes": "afterDataCopy"},
        pace_ms=20, sharded_source=True, one_per_shard=True)


def main() -> None:
    replay(plan(), "VerificationFailed", "lost writes")


if __name__ == "__main__":
    main()
