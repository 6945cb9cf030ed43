"""The balancer and chunk migrations.

A round looks at every sharded collection (unless ``noBalance``) and, where the shard with the
most chunks has at least :data:`MIGRATION_THRESHOLD` more than the one with the fewest, moves
one chunk from the first to the second. (MongoDB 6.0.3+ compares data sizes against three
chunk sizes; counting chunks, as earlier releases did, makes the emulator's small test
collections balance.)

A migration, one at a time per cluster:

1. the recipient first waits for any pending deletion of an overlapping range of its own;
2. under the namespace's gate (routed writes and the start of routed reads wait), the donor's
   documents of the range are copied to the recipient, both sides logged fromMigrate;
3. the new owner is committed on the config server and pushed to the shards;
4. the donor deletes the range in the background once no cursor opened before can read it.

Between 3 and 4 the donor's copies are orphans: shards filter them out of routed reads.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from bson.int64 import Int64

from mongoemu.cluster.client import RemoteUnavailable, error_of
from mongoemu.cluster.shardkey import bound_point
from mongoemu.errors import CommandError

if TYPE_CHECKING:
    from mongoemu.cluster.router import Router

log = logging.getLogger("mongoemu.balancer")

MIGRATION_THRESHOLD = 2
CLONE_BATCH = 1000


class Balancer:
    def __init__(self, router: "Router", interval_s: float) -> None:
        self.router = router
        self.interval_s = interval_s
        self.migration_lock = asyncio.Lock()
        self.rounds = 0
        self.in_round = False
        self.migrations = 0

    async def enabled(self) -> bool:
        settings = await self.router.table.setting("balancer")
        return settings.get("mode", "full") == "full" and not settings.get("stopped", False)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.round()
            except (CommandError, RemoteUnavailable) as exc:
                log.warning("balancer round failed: %s", exc)
            except Exception:
                log.exception("balancer round failed")

    async def round(self) -> None:
        if not await self.enabled():
            return
        self.in_round = True
        self.rounds += 1
        try:
            for ns, sharded in list(self.router.table.collections.items()):
                if sharded.document.get("noBalance"):
                    continue
                counts = {shard: 0 for shard in self.router.remotes}
                for chunk in sharded.chunks:
                    counts[chunk.shard] = counts.get(chunk.shard, 0) + 1
                most = max(counts, key=lambda shard: counts[shard])
                least = min(counts, key=lambda shard: counts[shard])
                if counts[most] - counts[least] < MIGRATION_THRESHOLD:
                    continue
                chunk = next(chunk for chunk in sharded.chunks if chunk.shard == most)
                if not await self.enabled():
                    return
                await self.move(ns, chunk.min, least)
        finally:
            self.in_round = False

    async def move(self, ns: str, lower: dict[str, Any], to: str,
                   wait_for_delete: bool = False) -> None:
        """Migrate the chunk starting at ``lower`` to shard ``to``."""
        router = self.router
        async with self.migration_lock:
            sharded = router.table.sharded(ns)
            if sharded is None:
                raise CommandError(118, f"{ns} is not sharded",
                                   code_name_override="NamespaceNotSharded")
            start = bound_point(lower, sharded.key)
            chunk = next((c for c in sharded.chunks if c.lower == start), None)
            if chunk is None:
                raise CommandError(2, f"no chunk of {ns} starts at {lower}")
            if chunk.shard == to:
                return
            donor, recipient = router.remotes[chunk.shard], router.remotes[to]
            bounds = {"min": chunk.min, "max": chunk.max}
            _check(await recipient.command("admin", {"_emulatorShardPrepareRange": ns,
                                                      **bounds}))
            async with router.gate(ns).exclusive():
                try:
                    await self._clone(ns, bounds, donor, recipient)
                except BaseException:
                    # The recipient does not own the range: whatever was copied is an orphan.
                    await recipient.command("admin", {"_emulatorShardDeleteRange": ns,
                                                      **bounds})
                    raise
                await router.table.move(sharded, chunk, to)
                await router.push_metadata(sharded, ns)
            _check(await donor.command("admin", {"_emulatorShardDeleteRange": ns, **bounds}))
            if wait_for_delete:
                _check(await donor.command("admin", {"cleanupOrphaned": ns}))
            self.migrations += 1
            log.info("moved %s %s from %s to %s", ns, bounds, donor.name, to)

    @staticmethod
    async def _clone(ns: str, bounds: dict[str, Any], donor: Any, recipient: Any) -> None:
        db, collection = ns.split(".", 1)
        reply = _check(await donor.command("admin", {"_emulatorShardReadRange": ns, **bounds,
                                                     "batchSize": CLONE_BATCH}))
        batch, cursor_id = reply["cursor"]["firstBatch"], int(reply["cursor"]["id"])
        while True:
            if batch:
                _check(await recipient.command(
                    "admin", {"_emulatorShardInsertMigrated": ns},
                    sequences={"documents": [document.raw for document in batch]}))
            if not cursor_id:
                return
            reply = _check(await donor.command(db, {"getMore": Int64(cursor_id),
                                                    "collection": collection,
                                                    "batchSize": CLONE_BATCH}))
            batch, cursor_id = reply["cursor"]["nextBatch"], int(reply["cursor"]["id"])


def _check(reply: dict[str, Any]) -> dict[str, Any]:
    error = error_of(reply)
    if error is not None:
        raise CommandError(error[0], f"chunk migration: {error[1]}")
    return reply
