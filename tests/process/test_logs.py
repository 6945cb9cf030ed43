"""Logs as spec §17 describes them: JSON lines with mongosync's keys, to <logPath>/mongosync.log,
rotated (gzipped) at start and on SIGUSR1, values cut at 1,024 characters, verbosity honoured."""

from __future__ import annotations

import gzip
import json
import re
import signal
import time
from pathlib import Path

from .processkit import MongosyncFactory, Tripwire

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d$")
ARCHIVE = re.compile(r"^mongosync-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}(-\d+)?\.log\.gz$")


def lines(path: Path) -> list[dict]:
    return [json.loads(text) for text in path.read_text().splitlines()]


def wait_until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def archives(directory: Path) -> list[Path]:
    return sorted(path for path in directory.iterdir() if ARCHIVE.match(path.name))


def test_log_file_format_rotation_and_truncation(tmp_path: Path, tripwire: Tripwire,
                                                 mongosync: MongosyncFactory) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    (directory / "mongosync.log").write_text('{"message": "from the previous run"}\n')
    many_ids = ", ".join(f'{{"_id": {n}}}' for n in range(300))
    hot = f'{{"db": "app", "collection": "users", "ids": [{many_ids}]}}'
    process = mongosync("--cluster0", tripwire.uri, "--cluster1", "mongodb://127.0.0.1:9",
                        "--port", "0", "--acceptDisclaimer", "--logPath", str(directory),
                        "--hotDocIDs", hot, "--id", "instance-7")
    log_file = directory / "mongosync.log"
    wait_until(lambda: log_file.exists() and any(
        line["message"] == "HTTP server listening" for line in lines(log_file)))

    (first_archive,) = archives(directory)
    with gzip.open(first_archive, "rt") as previous:
        assert "from the previous run" in previous.read()
    written = lines(log_file)
    for line in written:
        assert list(line)[:6] == ["level", "time", "message", "mongosyncID", "componentName",
                                  "pid"], line
        assert line["level"] in ("debug", "info", "warn", "error", "fatal")
        assert TIME.match(line["time"]), line["time"]
        assert line["mongosyncID"] == "instance-7"
        assert line["pid"] == process.process.pid
    options = next(line for line in written if line["message"] == "Mongosync Options")
    assert options["componentName"] == "Mongosync" and options["port"] == 0
    assert isinstance(options["hotDocIDs"], str)  # the whole list: longer than 1,024 chars
    assert options["hotDocIDs"].endswith("...(truncated)")
    assert len(options["hotDocIDs"]) <= 1024 + len("...(truncated)")
    assert process.stdout == []  # everything went to the file

    process.signal(signal.SIGUSR1)
    wait_until(lambda: len(archives(directory)) == 2)
    wait_until(lambda: log_file.exists() and any(
        line["message"] == "Rotated the log file" for line in lines(log_file)))
    assert not any(line["message"] == "Mongosync Options" for line in lines(log_file))
    process.signal(signal.SIGTERM)
    assert process.wait_exit(10) == 0
    assert lines(log_file)[-1]["message"] == "Received signal, stopping"


def test_verbosity_filters_lines(tmp_path: Path, tripwire: Tripwire,
                                 mongosync: MongosyncFactory) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    process = mongosync("--cluster0", tripwire.uri, "--cluster1", "mongodb://127.0.0.1:9",
                        "--port", "0", "--acceptDisclaimer", "--verbosity", "WARN",
                        "--metricsLoggingFilepath", str(not_a_directory / "metrics"))
    # An unusable metrics directory falls back to ./metrics with a warning (spec §18.1).
    wait_until(lambda: any(line["level"] == "warn" for line in process.log()))
    assert (tmp_path / "metrics" / "mongosync_metrics.log").exists()
    process.signal(signal.SIGTERM)
    assert process.wait_exit(10) == 0
    assert {line["level"] for line in process.log()} == {"warn"}, process.log()
