"""pymongosync, one mongosync per source shard: an instance that lost its lease took it back
with the coordinator's record. Fixed (migration.py, ``_keep_or_take_lease``).

The campaign's plan of seed 57 with CAMPAIGN_ONE_PER_SHARD=1, cut down: a 2-shard source (its
setup as the seed draws it), write concern errors injected into 3 of pymongosync's updates and
inserts on the destination during the copy, then a ``create`` during change application. The
lease renewals that meet those errors are retried past the lease's deadline, so an instance
stops, stands by and takes its lease back. shard02's instance then loaded the coordinator's
record (``resumeData`` ``_id: "coordinator"``), not its own, and wrote its shard's resume token
and ``applied_before`` over the coordinator's. Its own record never moved past its start, and
the coordinator waited for ever for it to pass the ``create``: canCommit never came (the
campaign's 180 s wait failed). Nothing was lost or committed, but a restart of the coordinator
would have resumed shard01's stream from shard02's resume token.

Which instance's renewal meets the injected errors is timing: a run where only shard01's does
passes, so it runs the plan three times. The test that failed before the fix is
``tests/sharded/test_instance_lease.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
os.environ["CAMPAIGN_ONE_PER_SHARD"] = "1"

from tests.campaign.generator import Fault, Op, Plan, generate
from tests.campaign.repro.kit import replay


def plan() -> Plan:
    drawn = generate(57)
    lease_faults = Fault(cluster="destination", times=3, data={
        "failCommands": ["update", "insert"], "appName": "pymongosync",
        "writeConcernError": {"code": 91, "errmsg": "injected write concern error"},
        "errorLabels": ["RetryableWriteError"]})
    return Plan(
        seed=57, big=False, load_level=1, slow_side="source", slow_ms=50, setup=drawn.setup,
        copy=[lease_faults],
        cea=[Op("create", "db0", "new3", {"options": {}}),
             Op("insert", "db0", "new3", {"documents": [{"_id": i} for i in range(5)]})],
        commit_kills=[], start_body={"source": "cluster0", "destination": "cluster1"},
        pace_ms=5, sharded_source=True, one_per_shard=True,
        source_shard_keys=drawn.source_shard_keys)


def main() -> None:
    replay(plan(), "canCommit", "never reached canCommit")


if __name__ == "__main__":
    main()
