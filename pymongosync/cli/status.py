"""``mongosync status``: a person's view of a running migration's ``/progress``."""

from __future__ import annotations

import collections
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import click

from pymongosync.process import DEFAULT_PORT


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


def verification_lines(progress: dict[str, Any]) -> list[str]:
    sides = progress.get("verification")
    if not sides:
        return []
    details = progress.get("verificationDetails") or {}
    source, destination = sides["source"], sides["destination"]
    lines = [f"  verifier   {source['phase']}: hashed {source['hashedDocumentCount']:,} source "
             f"and {destination['hashedDocumentCount']:,} destination documents of about "
             f"{source['estimatedDocumentCount']:,}; {source['scannedCollectionCount']}/"
             f"{source['totalCollectionCount']} collections; lag "
             f"{_lag(source)} / {_lag(destination)}; {details.get('pendingRechecks', 0):,} "
             f"rechecks pending"]
    if details.get("verdict") == "equal":
        lines.append("             verdict: the destination equals the source")
    for mismatch in details.get("firstMismatches") or []:
        lines.append(f"  mismatch   {mismatch}")
    if details.get("mismatches"):
        lines.append(f"             {details['mismatches']} in all: mongosync verify "
                     f"--cluster0 <URI> --cluster1 <URI> --report lists them")
    return lines


def _lag(side: dict[str, Any]) -> str:
    return "-" if side.get("lagTimeSeconds") is None else f"{side['lagTimeSeconds']} s"


def render(progress: dict[str, Any], url: str, rate: float | None) -> str:
    lines = [f"mongosync at {url}: {progress['state']}"]
    instance, coordinator = progress.get("mongosyncID"), progress.get("coordinatorID")
    if instance and instance != "coordinator":
        role = "the coordinator" if instance == coordinator else f"coordinator {coordinator}"
        lines.append(f"  instance   {instance} ({role})")
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
        lines += verification_lines(progress)
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
    progress: dict[str, Any] = document["progress"]
    return progress


def instances_summary(found: list[dict[str, Any]]) -> str:
    """One line over the instances of a migration run one instance per source shard: the copy
    is theirs together (estimatedCopiedBytes per instance, estimatedTotalBytes global)."""
    copied = sum((progress.get("collectionCopy") or {}).get("estimatedCopiedBytes") or 0
                 for progress in found)
    total = max(((progress.get("collectionCopy") or {}).get("estimatedTotalBytes") or 0
                 for progress in found), default=0)
    states = collections.Counter(progress["state"] for progress in found)
    ready = sum(bool(progress.get("canCommit")) for progress in found)
    share = f"{100 * copied / total:.1f}% " if total > 1 else ""
    return (f"{len(found)} instances: {', '.join(f'{n} {s}' for s, n in states.items())}; "
            f"copy {share}({human_bytes(copied)} of {human_bytes(total)}); canCommit on "
            f"{ready} of {len(found)}" + ("; send /commit to every instance at once"
                                          if ready == len(found) else ""))


def _render_all(found: list[dict[str, Any]], urls: list[str],
                rates: list[CopyRate]) -> str:
    blocks = [render(progress, url, rate.bytes_per_second())
              for progress, url, rate in zip(found, urls, rates)]
    if len(found) > 1:
        blocks.insert(0, instances_summary(found))
    return "\n\n".join(blocks)


@click.command("status")
@click.option("--port", "ports", type=click.IntRange(1, 65535), multiple=True,
              default=(DEFAULT_PORT,), show_default=True,
              help="Port of the running mongosync's HTTP API; repeat it for each instance of a "
                   "migration run one instance per source shard.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address of the running mongosync.")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
def status_command(ports: tuple[int, ...], host: str, watch: bool) -> None:
    """Show a running migration's progress: state, phase, copy progress with rate and ETA,
    lag, and what to do next (for each instance given, and all of them together)."""
    urls = [f"http://{host}:{port}" for port in ports]
    rates = [CopyRate() for _ in urls]

    def sample() -> list[dict[str, Any]]:
        found = [fetch_progress(url) for url in urls]
        for progress, rate in zip(found, rates):
            rate.add(progress)
        return found

    found = sample()
    if not watch:
        if any(progress.get("info") == "collection copy" for progress in found):
            time.sleep(1)  # a second look gives a rate and an ETA
            found = sample()
        click.echo(_render_all(found, urls, rates))
        return
    try:
        while True:
            if sys.stdout.isatty():
                click.clear()
            click.echo(_render_all(found, urls, rates) + "\n")
            time.sleep(1)
            found = sample()
    except KeyboardInterrupt:
        return
