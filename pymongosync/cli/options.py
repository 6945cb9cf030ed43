"""mongosync's options, one table for the command line and the YAML config file (spec §2), and
the checks of their values. The process (:mod:`pymongosync.cli.main`) and the tools beside it
(``check``, ``reset``, ``verify``) read their cluster options through it."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import click
import yaml

from pymongosync.changes import hot_documents
from pymongosync.clusters import check_connection_string
from pymongosync.logs import LEVELS
from pymongosync.process import DEFAULT_PORT


@dataclass(frozen=True)
class Setting:
    """One option: ``--<name>`` on the command line and ``<name>:`` in the config file."""

    name: str
    kind: str  # "uri", "text", "int", "flag", "choice", "hotDocIDs"
    metavar: str
    help: str
    minimum: int | None = None
    maximum: int | None = None


SETTINGS = (
    Setting("cluster0", "uri", "URI", "Connection string of the first cluster (required)."),
    Setting("cluster1", "uri", "URI", "Connection string of the second cluster (required)."),
    Setting("port", "int", "PORT", f"Port of the HTTP API [default: {DEFAULT_PORT}; 0 picks "
            "a free port, logged in the 'HTTP server listening' line].", 0, 65535),
    Setting("bind", "text", "ADDRESS", "Address the HTTP API listens on [default: 127.0.0.1]; "
            "the API has no authentication, so widen it only on a trusted network."),
    Setting("logPath", "text", "DIR", "Directory for mongosync.log (created if missing; an "
            "existing log is rotated and gzipped) [default: log to stdout]."),
    Setting("verbosity", "choice", "LEVEL", "Minimum log level: " + ", ".join(LEVELS)
            + " [default: DEBUG]."),
    Setting("id", "text", "ID", "One instance per source shard: this instance's source "
            "shard id (listShards); start one process per shard, each with its own --port, "
            "and send each the same requests. The first shard's instance coordinates. "
            "Without it, one instance migrates everything."),
    Setting("loadLevel", "int", "1-4", "Workload intensity, 1 (lightest) to 4 (fastest) "
            "[default: 3].", 1, 4),
    Setting("acceptDisclaimer", "flag", "", "Do not show the notice and prompt at start."),
    Setting("disableTelemetry", "flag", "", "Accepted for compatibility: pymongosync sends no "
            "telemetry at all."),
    Setting("disableVerification", "flag", "", "Turn the embedded verifier off for this "
            "migration, for good (it stays off after restarts without the flag)."),
    Setting("disableMetricsLogging", "flag", "", "Do not write the metrics log."),
    Setting("metricsLoggingFilepath", "text", "DIR", "Directory of the metrics log "
            "mongosync_metrics.log [default: ./metrics]."),
    Setting("hotDocIDs", "hotDocIDs", "JSON", 'JSON {"db", "collection", "ids": [{"_id": '
            '...}]} naming often-updated documents; repeatable. Their change events '
            "are skipped and each is taken from the source at commit. IDs given once stay "
            "with the migration; a restart can add more."),
    Setting("createIndexesBatchSize", "int", "N", "Indexes per createIndexes command while "
            "index builds run beside change application [default: one at a time].", 1, None),
    Setting("changeBufferLimitMB", "int", "MB", "pymongosync: the most the change buffer may "
            "hold on the destination while the copy runs; past it the migration stops "
            "(ChangeBufferFull) until started again with a larger limit [default: 10240].",
            1, None),
    Setting("disableChangeBuffering", "flag", "", "pymongosync: for a migration started by "
            "this process, do not store the source's changes during the copy (the source's "
            "oplog must then hold every change made while it copies)."),
    Setting("enableCappedCollectionHandling", "flag", "", "Accepted for compatibility: "
            "pymongosync follows capped collections created on the source without it."),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}

# -- checking values ---------------------------------------------------------------------------
def convert(setting: Setting, raw: Any, from_text: bool) -> Any:
    """A setting's value from the command line (text) or YAML (typed); a TypeError or
    ValueError says why not.

    YAML values must already have the right type: a quoted ``"3"`` for loadLevel is refused
    rather than guessed at, as mongosync's own YAML decoding does.
    """
    if setting.kind == "flag":
        if not isinstance(raw, bool):
            raise TypeError(f"must be true or false, got {raw!r}")
        return raw
    if setting.kind == "hotDocIDs":
        values = raw if isinstance(raw, (list, tuple)) else [raw]  # repeatable, or one string
        return tuple(check_hot_doc_ids(value) for value in values)
    if setting.kind == "int":
        return check_int(setting, raw, from_text)
    if not isinstance(raw, str):
        raise TypeError(f"must be a string, got {raw!r} (quote it in YAML)")
    if not raw.strip():
        raise ValueError("must not be empty")
    if setting.kind == "choice":
        level = raw.upper()
        if level not in LEVELS:
            raise ValueError(f"must be one of {', '.join(LEVELS)}, got {raw!r}")
        return level
    if setting.kind == "uri":
        check_connection_string(raw)  # InvalidConnectionString is a ValueError
    return raw


def check_int(setting: Setting, raw: Any, from_text: bool) -> int:
    bounds = (f"from {setting.minimum} to {setting.maximum}" if setting.maximum is not None
              else f"of at least {setting.minimum}")
    if from_text:
        try:
            value = int(raw, 10)
        except ValueError:
            raise ValueError(f"must be an integer {bounds}, got {raw!r}") from None
    elif isinstance(raw, bool) or not isinstance(raw, int):
        raise TypeError(f"must be an integer {bounds}, got {raw!r}")
    else:
        value = raw
    if (setting.minimum is not None and value < setting.minimum) or (
            setting.maximum is not None and value > setting.maximum):
        raise ValueError(f"must be an integer {bounds}, got {value}")
    return value


def check_hot_doc_ids(value: Any) -> str:
    """One --hotDocIDs value (spec §2.2): a JSON object {db, collection, ids: [{_id}, ...]}."""
    if not isinstance(value, str):
        raise TypeError(f"each value must be a JSON string like {hot_documents.EXAMPLE}, "
                        f"got {value!r}")
    hot_documents.from_option(value)
    return value


def read_config(path: str) -> dict[str, Any]:
    """The flat YAML config file (spec §2.4), keys checked against the option names."""
    def refuse(problem: str) -> click.UsageError:
        return click.UsageError(f"Invalid value for '--config': {path}: {problem}")

    try:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
    except OSError as exc:
        raise refuse(f"cannot read the file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise refuse("is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise refuse(f"is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise refuse("must be a flat YAML mapping of option names to values, e.g. "
                     "'cluster0: mongodb://host:27017'")
    for key in loaded:
        if key == "config":
            raise refuse("'config' cannot be set inside a config file")
        if key not in BY_NAME:
            close = difflib.get_close_matches(str(key), list(BY_NAME), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise refuse(f"unknown key {key!r}{hint} (keys are the long option names, "
                         f"case-sensitive: {', '.join(BY_NAME)})")
    return loaded
