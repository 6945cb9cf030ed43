"""Zones on the router: ``addShardToZone``, ``removeShardFromZone`` and ``updateZoneKeyRange``,
kept where MongoDB keeps them — the shards' ``tags`` in ``config.shards`` and one document per
range in ``config.tags`` (``{ns, min, max, tag}``) — and persistent query settings, which the
router keeps itself, as it keeps users (one router per emulated cluster), so that its own
``$querySettings`` stage sees them.

As on MongoDB (4.0.3+), a range may be given for a namespace that is not sharded or does not
exist yet: that is how zones are prepared before a collection is sharded. The balancer does not
act on zones.
"""

from __future__ import annotations

from typing import Any

from bson.objectid import ObjectId

from mongoemu.bsonvalues import compare
from mongoemu.cluster.commands import router_of
from mongoemu.cluster.router import routed
from mongoemu.commands.registry import REGISTRY
from mongoemu.context import Context
from mongoemu.errors import CommandError

SHARD_NOT_FOUND, ZONE_STILL_IN_USE, ZONE_NOT_FOUND, RANGE_OVERLAP_CONFLICT = 70, 163, 177, 178


def _string_argument(ctx: Context, name: str, what: str) -> str:
    value = ctx.body.get(name)
    if not isinstance(value, str) or not value:
        raise CommandError(2, f"{name} takes {what} as a non-empty string")
    return value


async def _shard(ctx: Context, name: str) -> dict[str, Any]:
    found = await router_of(ctx).table.find("shards", {"_id": name})
    if not found:
        raise CommandError(SHARD_NOT_FOUND, f"Shard {name} does not exist")
    return found[0]


@routed("addShardToZone", "addshardtozone", admin_only=True, action="enableSharding")
async def add_shard_to_zone(ctx: Context) -> dict[str, Any]:
    shard = await _shard(ctx, _string_argument(ctx, ctx.name, "a shard name"))
    zone = _string_argument(ctx, "zone", "the zone name")
    tags = list(shard.get("tags") or [])
    if zone not in tags:
        shard["tags"] = tags + [zone]
        await router_of(ctx).table.put("shards", shard)
    return {}


@routed("removeShardFromZone", "removeshardfromzone", admin_only=True, action="enableSharding")
async def remove_shard_from_zone(ctx: Context) -> dict[str, Any]:
    shard = await _shard(ctx, _string_argument(ctx, ctx.name, "a shard name"))
    zone = _string_argument(ctx, "zone", "the zone name")
    table = router_of(ctx).table
    others = [s for s in await table.find("shards") if s["_id"] != shard["_id"]
              and zone in (s.get("tags") or [])]
    if not others and await table.find("tags", {"tag": zone}):
        raise CommandError(ZONE_STILL_IN_USE, f"zone {zone} cannot be removed from "
                                              f"{shard['_id']}: ranges are still assigned to it")
    if zone in (shard.get("tags") or []):
        shard["tags"] = [tag for tag in shard["tags"] if tag != zone]
        await table.put("shards", shard)
    return {}


def _bound(ctx: Context, name: str) -> dict[str, Any]:
    value = ctx.body.get(name)
    if not isinstance(value, dict) or not value:
        raise CommandError(2, f"updateZoneKeyRange takes {name} as a non-empty shard key "
                              f"document")
    return value


@routed("updateZoneKeyRange", "updatezonekeyrange", admin_only=True, action="enableSharding")
async def update_zone_key_range(ctx: Context) -> dict[str, Any]:
    namespace = _string_argument(ctx, ctx.name, "the namespace (db.collection)")
    if "." not in namespace.strip("."):
        raise CommandError(73, f"invalid namespace {namespace!r}: give db.collection")
    low, high = _bound(ctx, "min"), _bound(ctx, "max")
    if list(low) != list(high):
        raise CommandError(2, "min and max must name the same shard key fields in the same "
                              "order")
    if compare(low, high) >= 0:
        raise CommandError(2, f"min {low} must be less than max {high}")
    if "zone" not in ctx.body:
        raise CommandError(40414, "BSON field 'updateZoneKeyRange.zone' is missing but a "
                                  "required field")
    zone = ctx.body["zone"]
    table = router_of(ctx).table
    ranges = await table.find("tags", {"ns": namespace})
    if zone is None:  # removes the range with exactly these bounds, if any
        await table.remove("tags", {"ns": namespace, "min": low, "max": high})
        return {}
    if not isinstance(zone, str) or not zone:
        raise CommandError(2, "zone must be a zone name, or null to remove the range")
    if not any(zone in (shard.get("tags") or []) for shard in await table.find("shards")):
        raise CommandError(ZONE_NOT_FOUND, f"zone {zone} does not exist: add a shard to it "
                                           f"with addShardToZone first")
    for existing in ranges:
        same = compare(existing["min"], low) == 0 and compare(existing["max"], high) == 0
        overlaps = compare(existing["min"], high) < 0 and compare(low, existing["max"]) < 0
        if same and existing["tag"] == zone:
            return {}
        if overlaps:
            raise CommandError(RANGE_OVERLAP_CONFLICT,
                               f"zone range {low} -> {high} on {namespace} overlaps the range "
                               f"{existing['min']} -> {existing['max']} of zone "
                               f"{existing['tag']}")
    await table.put("tags", {"_id": ObjectId(), "ns": namespace, "min": low, "max": high,
                             "tag": zone})
    return {}


def _on_router(name: str) -> None:
    async def handler(ctx: Context) -> dict[str, Any]:
        return REGISTRY[name].handler(ctx)  # type: ignore[return-value]  # synchronous ones

    routed(name, admin_only=True, action="querySettings")(handler)


for _name in ("setQuerySettings", "removeQuerySettings"):
    _on_router(_name)
