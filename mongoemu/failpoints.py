"""``configureFailPoint`` state, the ``failCommand`` interception every command passes and the
``onPrimaryTransactionalWrite`` check every retryable write statement passes."""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mongoemu.errors import CommandError, code_name

if TYPE_CHECKING:
    from mongoemu.context import Context
    from mongoemu.server import Server

NEVER_FAILED = frozenset({"configureFailPoint", "waitForFailPoint"})

# The fail points the emulator implements. MongoDB refuses any name its binary does not define
# (FailPointSetFailed, "<name> not found"); accepting an unimplemented name would let a test
# believe a fault was injected when nothing happens. onPrimaryTransactionalWrite lives in the
# shard's transaction code, which a mongos does not have.
REPLSET_FAIL_POINTS = frozenset({"failCommand", "failGetMoreAfterCursorCheckout",
                                 "onPrimaryTransactionalWrite"})
MONGOS_FAIL_POINTS = frozenset({"failCommand", "failGetMoreAfterCursorCheckout"})


def fail_point_not_found(name: str) -> CommandError:
    return CommandError(266, f"{name} not found")


class CloseConnection(Exception):
    """Raised to drop the client's socket instead of replying."""


@dataclass
class FailPoint:
    name: str
    mode: Any = "off"
    data: dict[str, Any] = field(default_factory=dict)
    times_entered: int = 0
    remaining: int | None = None  # {times: N}
    skip: int = 0  # {skip: N}
    probability: float = 1.0

    @property
    def active(self) -> bool:
        return self.mode != "off"


class FailPoints:
    def __init__(self) -> None:
        self.points: dict[str, FailPoint] = {}

    def configure(self, name: str, mode: Any, data: dict[str, Any] | None) -> int:
        previous = self.points.get(name)
        count = previous.times_entered if previous else 0
        point = FailPoint(name=name, data=dict(data or {}), times_entered=count)
        if mode in ("alwaysOn", "off"):
            point.mode = mode
        elif isinstance(mode, dict) and len(mode) == 1:
            (kind, value), = mode.items()
            if kind == "times":
                point.mode, point.remaining = "times", int(value)
                if point.remaining <= 0:
                    point.mode = "off"
            elif kind == "skip":
                point.mode, point.skip = "skip", int(value)
            elif kind == "activationProbability":
                point.mode, point.probability = "probability", float(value)
            else:
                raise CommandError(2, f"unknown fail point mode {kind!r}")
        else:
            raise CommandError(2, "mode must be 'alwaysOn', 'off', {times: n}, {skip: n} or "
                                  "{activationProbability: p}")
        self.points[name] = point
        return count

    def _fires(self, point: FailPoint) -> bool:
        if point.mode == "off":
            return False
        if point.mode == "skip":
            if point.skip > 0:
                point.skip -= 1
                return False
        if point.mode == "probability" and random.random() >= point.probability:
            return False
        point.times_entered += 1
        if point.mode == "times":
            point.remaining = (point.remaining or 1) - 1
            if point.remaining <= 0:
                point.mode = "off"
        return True

    def triggered(self, name: str) -> dict[str, Any] | None:
        """The data of fail point ``name`` when it fires now (counting the activation)."""
        point = self.points.get(name)
        if point is None or not point.active or not self._fires(point):
            return None
        return point.data

    def before_transactional_write(self, ctx: "Context") -> None:
        """``onPrimaryTransactionalWrite``: fires where a retryable write is about to commit.

        The write commits unless ``failBeforeCommitExceptionCode`` is set (then it fails with
        that code and nothing is written); with ``closeConnection`` (default true) the client
        never gets the reply, while the outcome is still recorded for the retry.
        """
        if ("onPrimaryTransactionalWrite" not in self.points or ctx.session is None
                or "txnNumber" not in ctx.body or "autocommit" in ctx.body):
            return
        data = self.triggered("onPrimaryTransactionalWrite")
        if data is None:
            return
        if data.get("closeConnection", True):
            ctx.conn.closed = True
        code = data.get("failBeforeCommitExceptionCode")
        if code is not None:
            if isinstance(code, bool) or not isinstance(code, (int, float)):
                raise CommandError(14, "failBeforeCommitExceptionCode must be a number")
            session_id = ctx.session.lsid.get("id")
            if isinstance(session_id, bytes) and len(session_id) == 16:
                session_id = uuid.UUID(bytes=bytes(session_id))
            raise CommandError(int(code), f"Failing write for {session_id}:"
                                          f"{ctx.body['txnNumber']} due to failpoint. The write "
                                          f"must not be reflected.")

    async def intercept(self, ctx: "Context", server: "Server") -> dict[str, Any] | None:
        """Apply ``failCommand`` to this command: an error reply, a delay, or nothing."""
        point = self.points.get("failCommand")
        if point is None or not point.active or ctx.name in NEVER_FAILED:
            return None
        data = point.data
        names = data.get("failCommands") or []
        if ctx.name not in names:
            return None
        app_name = data.get("appName")
        if app_name is not None and app_name != ctx.conn.app_name:
            return None
        namespace = data.get("namespace")
        if namespace is not None:
            target = ctx.body.get(ctx.name)
            if not isinstance(target, str) or f"{ctx.db}.{target}" != namespace:
                return None
        if not self._fires(point):
            return None
        if data.get("blockConnection"):
            await asyncio.sleep(float(data.get("blockTimeMS", 0)) / 1000.0)
        if data.get("closeConnection"):
            ctx.conn.closed = True
            raise CloseConnection()
        if "errorCode" in data:
            code = int(data["errorCode"])
            labels = data.get("errorLabels")
            raise CommandError(code, data.get("errmsg", "Failing command via 'failCommand' "
                                                        "failpoint"),
                               code_name_override=code_name(code),
                               extra=dict(data.get("errorExtraInfo") or {}),
                               labels=list(labels) if labels is not None else None)
        if "writeConcernError" in data:
            error = dict(data["writeConcernError"])
            labels = data.get("errorLabels")
            if isinstance(labels, list):
                # The server lets the fail point's labels replace the ones it would compute.
                error["errorLabels"] = list(labels)
            ctx.body["$emulatorWriteConcernError"] = error
        return None
