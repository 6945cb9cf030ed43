"""The ``mongosync`` console script: mongosync's command line and YAML config (spec §2), plus
``mongosync status`` (a person's view of ``/progress``) and ``mongosync reset``.

Every option is checked — on the command line and in the config file alike, by the same
table — before anything touches a cluster, and a refusal names the option (``'--loadLevel'``
or ``'loadLevel' in config file x.yaml``). The command line wins over the file, key by key.
"""

from __future__ import annotations

import collections
import difflib
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import click
import yaml
from click.core import ParameterSource

from pymongosync.clusters import check_connection_string
from pymongosync.logs import LEVELS
from pymongosync.process import DEFAULT_PORT, VERSION, MongosyncProcess, Options
from pymongosync.reset import reset_command


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
    Setting("id", "text", "ID", "Instance ID, shown as mongosyncID in logs and /progress. "
            "pymongosync runs one instance per migration, which handles every shard."),
    Setting("loadLevel", "int", "1-4", "Workload intensity, 1 (lightest) to 4 (fastest) "
            "[default: 3].", 1, 4),
    Setting("acceptDisclaimer", "flag", "", "Do not show the notice and prompt at start."),
    Setting("disableTelemetry", "flag", "", "Accepted for compatibility: pymongosync sends no "
            "telemetry at all."),
    Setting("disableVerification", "flag", "", "Accepted for compatibility: pymongosync has no "
            "embedded verifier to disable."),
    Setting("disableMetricsLogging", "flag", "", "Do not write the metrics log."),
    Setting("metricsLoggingFilepath", "text", "DIR", "Directory of the metrics log "
            "mongosync_metrics.log [default: ./metrics]."),
    Setting("hotDocIDs", "hotDocIDs", "JSON", 'JSON {"db", "collection", "ids": [{"_id": '
            '...}]} naming often-updated documents; repeatable. Checked and logged; '
            "pymongosync applies their events like any other."),
    Setting("createIndexesBatchSize", "int", "N", "Indexes per createIndexes call; checked and "
            "logged (pymongosync builds indexes per collection).", 1, None),
    Setting("enableCappedCollectionHandling", "flag", "", "Accepted for compatibility: "
            "pymongosync follows capped collections created on the source without it."),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}

DISCLAIMER = """\
Before you migrate with pymongosync:

- pymongosync copies the source cluster to the destination, then applies the source's changes
  until you commit. Stop writes to the source before you call /api/v1/commit.
- It has no embedded verifier: the /start field "verification" and --disableVerification are
  accepted for compatibility and change nothing. Check the destination yourself before moving
  applications to it (for example with pymongosync.verify.compare_clusters).
- It blocks user writes on the destination until commit, and on the source from commit on,
  as mongosync does; `mongosync reset` undoes what an abandoned migration left.

Pass --acceptDisclaimer (or acceptDisclaimer: true in the config file) to skip this notice.
"""


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
    example = '{"db": "db1", "collection": "coll1", "ids": [{"_id": {"$oid": "..."}}]}'
    if not isinstance(value, str):
        raise TypeError(f"each value must be a JSON string like {example}, got {value!r}")
    try:
        document = json.loads(value)
    except ValueError as exc:
        raise ValueError(f"is not valid JSON ({exc}); give an object like {example}") from None
    if not isinstance(document, dict) or set(document) != {"db", "collection", "ids"}:
        raise ValueError(f"must be an object with exactly db, collection and ids, like {example}")
    if not all(isinstance(document[key], str) and document[key] for key in ("db", "collection")):
        raise ValueError("db and collection must be non-empty strings")
    ids = document["ids"]
    if not isinstance(ids, list) or not ids or not all(
            isinstance(item, dict) and list(item) == ["_id"] for item in ids):
        raise ValueError(f'ids must be a non-empty array of {{"_id": <EJSON>}} objects, like '
                         f'{example}')
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


def resolve(ctx: click.Context, values: dict[str, Any]) -> Options:
    """Command line over config file over defaults. Every value given is checked, also file
    values the command line replaces: a mistake in the file should not wait for the day the
    override is dropped."""
    config_path = values.get("config")
    chosen: dict[str, Any] = {}

    def take(setting: Setting, raw: Any, where: str, from_text: bool) -> None:
        try:
            chosen[setting.name] = convert(setting, raw, from_text)
        except (TypeError, ValueError) as exc:  # InvalidConnectionString included
            raise click.UsageError(f"Invalid value for {where}: {exc}") from None

    for name, raw in (read_config(config_path) if config_path else {}).items():
        take(BY_NAME[name], raw, f"'{name}' in config file {config_path}", False)
    for setting in SETTINGS:
        if ctx.get_parameter_source(setting.name) in (ParameterSource.COMMANDLINE,
                                                       ParameterSource.ENVIRONMENT):
            take(setting, values[setting.name], f"'--{setting.name}'", True)
    for label in ("cluster0", "cluster1"):
        if label not in chosen:
            raise click.UsageError(f"Missing option '--{label}' (or '{label}' in the config "
                                   f"file): give the connection string of both clusters")
    if check_connection_string(chosen["cluster0"])["nodelist"] == \
            check_connection_string(chosen["cluster1"])["nodelist"]:
        raise click.UsageError("Invalid value for '--cluster1': it names the same hosts as "
                               "'--cluster0'; give the two clusters of the migration")
    return Options(**chosen)


def show_disclaimer(options: Options) -> None:
    """Spec §2.6: the notice, and a y/n prompt when someone is at the terminal to answer."""
    if options.acceptDisclaimer:
        return
    click.echo(DISCLAIMER, err=True)
    if sys.stdin.isatty() and not click.confirm("Continue?", default=False, err=True):
        raise click.ClickException("the notice was not accepted; nothing was started")


def _setting_option(setting: Setting) -> Any:
    if setting.kind == "flag":
        return click.option(f"--{setting.name}", setting.name, is_flag=True, help=setting.help)
    return click.option(f"--{setting.name}", setting.name, metavar=setting.metavar,
                        multiple=setting.kind == "hotDocIDs", help=setting.help)


def _with_settings(function: Any) -> Any:
    for setting in reversed(SETTINGS):
        function = _setting_option(setting)(function)
    return function


@click.group(invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]},
             help="Migrate and sync between two MongoDB clusters (a mongosync-compatible "
                  "process). Run with --cluster0/--cluster1 (or --config) to start the process "
                  "and its HTTP API; see the commands below for tools around it.")
@click.option("--config", "config", metavar="FILE",
              help="YAML file with the same keys as the long options; options given on the "
                   "command line win.")
@_with_settings
@click.version_option(VERSION, "-v", "--version",
                      message="mongosync (pymongosync) %(version)s, compatible with mongosync "
                              "1.22")
@click.pass_context
def main(ctx: click.Context, **values: Any) -> None:
    if ctx.invoked_subcommand is not None:
        return
    options = resolve(ctx, values)
    show_disclaimer(options)
    ctx.exit(MongosyncProcess(options).run())


# -- mongosync status --------------------------------------------------------------------------
class CopyRate:
    """Copy speed over the last few seconds of samples, for the rate and the ETA."""

    def __init__(self, window_seconds: float = 10.0) -> None:
        self.window = window_seconds
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, progress: dict[str, Any]) -> None:
        copy = progress.get("collectionCopy") or {}
        copied = copy.get("estimatedCopiedBytes")
        if copied is None:
            return
        now = time.monotonic()
        self.samples.append((now, copied))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()

    def bytes_per_second(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None


def human_bytes(count: float) -> str:
    if count < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024:
            break
    return f"{count:.1f} {unit}"


def human_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def copy_line(progress: dict[str, Any], rate: float | None) -> str | None:
    copy = progress.get("collectionCopy")
    if not copy:
        return None
    total, copied = copy["estimatedTotalBytes"] or 1, copy["estimatedCopiedBytes"] or 0
    done = progress.get("info") != "collection copy"
    fraction = 1.0 if done else min(copied / total, 1.0)
    width = 30
    bar = "#" * int(fraction * width) + "." * (width - int(fraction * width))
    line = f"[{bar}] {fraction * 100:5.1f}%  {human_bytes(copied)} of {human_bytes(total)}"
    if not done and rate:
        line += f"  {human_bytes(rate)}/s  ETA {human_seconds(max(total - copied, 0) / rate)}"
    return line


def next_step(progress: dict[str, Any], url: str) -> str:
    """What the operator should do now, in one sentence."""
    state, lag = progress["state"], progress.get("lagTimeSeconds")
    post = f"curl -X POST {url}/api/v1/"
    if progress.get("error"):
        error = progress["error"]
        return (f"the migration stopped on a fatal error ({error['name']}: {error['message']});"
                f" fix the cause, run `mongosync reset`, then start again")
    if state == "INITIALIZING":
        return "mongosync is connecting to the clusters and loading its metadata: wait"
    if state == "IDLE":
        return (f"start a migration: {post}start --data "
                "'{\"source\": \"cluster0\", \"destination\": \"cluster1\"}'")
    if state == "PAUSED":
        return f"paused: resume with {post}resume --data '{{}}'"
    if state == "RUNNING" and progress["canCommit"]:
        return (f"lag is {lag} s: you can commit now. Stop writes to the source, then "
                f"{post}commit --data '{{}}'")
    if state == "RUNNING" and progress.get("info") == "change event application":
        if lag is None:
            return "change event application is starting: wait"
        return f"lag is {lag} s: wait until it is at most 30 s, then commit"
    if state == "RUNNING":
        return ("the initial copy is running: wait; commit becomes possible once it has "
                "finished and lag is at most 30 s")
    if state == "COMMITTING":
        writes = "already takes" if progress.get("canWrite") else "will take"
        return f"committing: wait for COMMITTED (the destination {writes} writes)"
    if state == "COMMITTED":
        return ("done: the destination takes writes; point your applications at it (or "
                f"{post}reverse --data '{{}}' if the migration is reversible)")
    if state == "REVERSING":
        return "reversing: wait for RUNNING in the other direction"
    return "see GET /api/v1/progress"


def render(progress: dict[str, Any], url: str, rate: float | None) -> str:
    lines = [f"mongosync at {url}: {progress['state']}"]
    mapping = progress.get("directionMapping")
    if mapping:
        lines.append(f"  direction  {mapping['Source']} -> {mapping['Destination']}")
    details = progress.get("copyDetails") or {}
    if progress.get("info"):
        stage = f" ({progress['ceaStage']})" if progress.get("ceaStage") else ""
        lines.append(f"  phase      {details.get('phase') or progress['info']}{stage}")
    copy = copy_line(progress, rate)
    if copy:
        lines.append(f"  copy       {copy}")
        if details.get("partitions"):
            lines.append(f"             partitions {details['partitionsDone']}/"
                         f"{details['partitions']}, documents {details['copiedDocuments']:,}"
                         f" of about {details['estimatedDocuments']:,}")
    if progress["state"] not in ("INITIALIZING", "IDLE"):
        lag = progress.get("lagTimeSeconds")
        lines.append(f"  lag        {'-' if lag is None else f'{lag} s'}")
        lines.append(f"  events     {progress.get('totalEventsApplied') or 0:,} applied")
        lines.append(f"  canCommit  {str(progress['canCommit']).lower()}, canWrite "
                     f"{str(progress.get('canWrite')).lower()}")
    for warning in progress.get("warnings") or []:
        lines.append(f"  warning    {warning}")
    lines.append(f"  next       {next_step(progress, url)}")
    return "\n".join(lines)


def fetch_progress(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{url}/api/v1/progress", timeout=10) as answer:
            document = json.load(answer)
    except urllib.error.HTTPError as exc:
        try:
            document = json.load(exc)
        except ValueError:
            raise click.ClickException(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(f"no mongosync answers at {url} ({reason}); is it running, "
                                   f"and on this --port?") from None
    if not document.get("success"):
        raise click.ClickException(f"{url}: {document.get('error')}: "
                                   f"{document.get('errorDescription')}")
    return document["progress"]


@main.command("status")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port of the running mongosync's HTTP API.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address of the running mongosync.")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
def status_command(port: int, host: str, watch: bool) -> None:
    """Show a running migration's progress: state, phase, copy progress with rate and ETA,
    lag, and what to do next."""
    url = f"http://{host}:{port}"
    rate = CopyRate()
    progress = fetch_progress(url)
    rate.add(progress)
    if not watch:
        if progress.get("info") == "collection copy":  # a second look gives a rate and an ETA
            time.sleep(1)
            progress = fetch_progress(url)
            rate.add(progress)
        click.echo(render(progress, url, rate.bytes_per_second()))
        return
    try:
        while True:
            if sys.stdout.isatty():
                click.clear()
            click.echo(render(progress, url, rate.bytes_per_second()) + "\n")
            time.sleep(1)
            progress = fetch_progress(url)
            rate.add(progress)
    except KeyboardInterrupt:
        return


main.add_command(reset_command, "reset")


if __name__ == "__main__":
    main()
