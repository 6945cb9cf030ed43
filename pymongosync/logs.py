"""JSON-lines logging as mongosync writes it (spec §17), and the metrics log (spec §18.1).

Every line is one JSON object: ``level`` (lowercase), ``time`` (ISO-8601, microseconds and
offset), ``message``, ``mongosyncID``, ``componentName``, ``pid``, then the event's own keys.
Code logs through the standard ``logging`` module and passes its keys as
``extra={"fields": {...}}``; this module turns records into lines, so the engine needs no
knowledge of the format. Connection strings are redacted and every value is cut at 1,024
characters here, in one place, whatever the caller passed.
"""

from __future__ import annotations

import datetime
import gzip
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from pymongosync.clusters import redact

# mongosync's levels; TRACE, FATAL and PANIC have no counterpart in `logging`.
LEVELS = {"TRACE": 5, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
          "ERROR": logging.ERROR, "FATAL": logging.CRITICAL, "PANIC": logging.CRITICAL + 10}
TRACE, FATAL = LEVELS["TRACE"], LEVELS["FATAL"]
_LEVEL_NAMES = {number: name.lower() for name, number in LEVELS.items()}
MAX_VALUE_CHARS = 1024
LOG_FILE = "mongosync.log"
METRICS_LOG_FILE = "mongosync_metrics.log"

# componentName by logger: what an operator filters on (spec §17 "componentName").
_COMPONENTS = {
    "pymongosync.engine": "Migration",
    "pymongosync.copy": "Collection Copy",
    "pymongosync.changes": "Change Event Application",
    "pymongosync.buffer": "Change Buffer",
    "pymongosync.indexes": "Index Builds",
    "pymongosync.verifier": "Verifier",
    "pymongosync.preflight": "Preflight",
    "pymongosync.lease": "Migration",
    "pymongosync.clusters": "Driver",
    "pymongosync.retry": "Retryer",
    "pymongosync.api": "API Server",
    "pymongosync.process": "Mongosync",
    "uvicorn": "HTTP Server",
    "pymongo": "Driver",
}


def component_of(logger_name: str) -> str:
    parts = logger_name.split(".")
    for length in range(len(parts), 0, -1):
        component = _COMPONENTS.get(".".join(parts[:length]))
        if component is not None:
            return component
    return logger_name


def bounded(value: Any) -> Any:
    """A log field value with credentials removed and at most 1,024 characters of text.

    Structures keep their shape when they fit; a larger one becomes its cut JSON text, so a
    huge /start body cannot flood the log.
    """
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, str):
        text = redact(value)
        return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "...(truncated)"
    text = redact(json.dumps(value, default=str))
    if len(text) <= MAX_VALUE_CHARS:
        return json.loads(text)
    return text[:MAX_VALUE_CHARS] + "...(truncated)"


def timestamp(seconds: float) -> str:
    """``2024-06-21T11:15:33.123456-04:00``: local time, microseconds, offset — as mongosync
    writes it. MongoDB's Mongosync Insights reads the first 26 characters as
    ``%Y-%m-%dT%H:%M:%S.%f``, so milliseconds would make it fail on every line."""
    moment = datetime.datetime.fromtimestamp(seconds).astimezone()
    return moment.isoformat(timespec="microseconds")


class JsonFormatter(logging.Formatter):
    def __init__(self, mongosync_id: str) -> None:
        super().__init__()
        self.mongosync_id = mongosync_id

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "level": _LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
            "time": timestamp(record.created),
            "message": bounded(record.getMessage()),
            "mongosyncID": self.mongosync_id,
            "componentName": component_of(record.name),
            "pid": os.getpid(),
        }
        for key, value in (getattr(record, "fields", None) or {}).items():
            line.setdefault(key, bounded(value))
        if record.exc_info and record.exc_info[0] is not None:
            line["stacktrace"] = bounded("".join(traceback.format_exception(*record.exc_info)))
        return json.dumps(line, default=str, separators=(",", ":"))


def rotated_name(directory: Path, stem: str) -> Path:
    """``<stem>-YYYY-MM-DDTHH-MM-SS.mmm.log`` (spec §17), unique within the directory."""
    now = datetime.datetime.now()
    name = f"{stem}-{now:%Y-%m-%dT%H-%M-%S}.{now.microsecond // 1000:03d}"
    candidate, counter = directory / f"{name}.log", 1
    while candidate.exists() or candidate.with_suffix(".log.gz").exists():
        candidate, counter = directory / f"{name}-{counter}.log", counter + 1
    return candidate


def rotate_file(path: Path) -> Path | None:
    """Move ``path`` aside under a timestamped name and gzip it; returns the ``.gz`` file.

    The compressed copy is written under a temporary name first, so a crash mid-way leaves the
    plain rotated file rather than a truncated archive.
    """
    if not path.exists() or path.stat().st_size == 0:
        return None
    rotated = rotated_name(path.parent, path.name.removesuffix(".log"))
    path.rename(rotated)
    archive = rotated.with_suffix(".log.gz")
    partial = archive.with_suffix(".gz.partial")
    with rotated.open("rb") as plain, gzip.open(partial, "wb") as packed:
        shutil.copyfileobj(plain, packed)
    partial.rename(archive)
    rotated.unlink()
    return archive


class LogFile(logging.StreamHandler):  # type: ignore[type-arg]
    """``<logPath>/mongosync.log``, rotated at start and on demand (SIGUSR1)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOG_FILE
        rotate_file(self.path)
        super().__init__(self.path.open("a", encoding="utf-8"))

    def rotate(self) -> Path | None:
        self.acquire()
        try:
            self.flush()
            self.stream.close()
            archive = rotate_file(self.path)
            self.stream = self.path.open("a", encoding="utf-8")
        finally:
            self.release()
        return archive

    def close(self) -> None:
        self.acquire()
        try:
            self.stream.close()
        finally:
            self.release()
        super().close()


def configure(verbosity: str, log_path: str | None, mongosync_id: str) -> logging.Handler:
    """Send every log record of the process to one JSON-lines handler; returns that handler."""
    for number, name in _LEVEL_NAMES.items():
        logging.addLevelName(number, name.upper())
    handler: logging.Handler
    if log_path:
        handler = LogFile(Path(log_path))
    else:
        handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(mongosync_id))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    level = LEVELS[verbosity]
    root.setLevel(level)
    # The driver's and the HTTP server's own debug output is per command or per connection:
    # only TRACE, the level meant for digging into them, lets it through.
    for noisy in ("pymongo", "uvicorn", "asyncio"):
        logging.getLogger(noisy).setLevel(level if level <= TRACE else max(level, logging.WARNING))
    return handler


class MetricsLog:
    """``<dir>/mongosync_metrics.log``: one ``{"time", "message": <Prometheus text>}`` line
    per interval (spec §18.1), rotated at start like the main log."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / METRICS_LOG_FILE
        rotate_file(self.path)
        # Opened once and probed now, so an unwritable place is found at start, not later.
        self.stream = self.path.open("a", encoding="utf-8")

    def write(self, exposition: str) -> None:
        self.stream.write(json.dumps({"time": timestamp(time.time()), "message": exposition},
                                     separators=(",", ":")) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()


def open_metrics_log(directory: str, default: str) -> tuple[MetricsLog, str | None]:
    """The metrics log in ``directory``, or in ``default`` when that fails (as mongosync does);
    the second value explains a fallback."""
    try:
        return MetricsLog(Path(directory)), None
    except OSError as exc:
        fallback = f"cannot write metrics to {directory} ({exc}); using {default} instead"
        return MetricsLog(Path(default)), fallback
