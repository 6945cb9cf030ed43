"""The cluster's hybrid logical clock: every oplog entry takes the next tick."""

from __future__ import annotations

import datetime
import time

from bson.timestamp import Timestamp


class Clock:
    def __init__(self) -> None:
        self.last = Timestamp(int(time.time()), 0)

    def tick(self) -> Timestamp:
        now = int(time.time())
        if now > self.last.time:
            self.last = Timestamp(now, 1)
        else:
            self.last = Timestamp(self.last.time, self.last.inc + 1)
        return self.last

    def advance_to(self, ts: Timestamp) -> None:
        """Adopt a greater cluster time gossiped by a client or asked for by afterClusterTime."""
        if (ts.time, ts.inc) > (self.last.time, self.last.inc):
            self.last = ts

    @property
    def now(self) -> Timestamp:
        return self.last


def wall_clock() -> datetime.datetime:
    """Millisecond-precision UTC now, as BSON dates store it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
