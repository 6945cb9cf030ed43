"""The command line and the config file: bad values are refused, naming the option, before
any cluster is contacted; good ones combine as documented (command line over file)."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pymongosync.cli import main

from .processkit import MONGOSYNC, MongosyncFactory, Tripwire

HOT = '{"db": "app", "collection": "users", "ids": [{"_id": 1}]}'

# (extra arguments, text the error must contain): the named option and why.
BAD_OPTIONS = [
    (["--port", "abc"], "Invalid value for '--port': must be an integer from 0 to 65535"),
    (["--port", "70000"], "Invalid value for '--port'"),
    (["--loadLevel", "5"], "Invalid value for '--loadLevel': must be an integer from 1 to 4"),
    (["--loadLevel", "two"], "Invalid value for '--loadLevel'"),
    (["--verbosity", "LOUD"], "Invalid value for '--verbosity': must be one of TRACE, DEBUG"),
    (["--createIndexesBatchSize", "0"], "Invalid value for '--createIndexesBatchSize'"),
    (["--hotDocIDs", "{not json"], "Invalid value for '--hotDocIDs': is not valid JSON"),
    (["--hotDocIDs", '{"db": "app"}'], "Invalid value for '--hotDocIDs': must be an object"),
    (["--hotDocIDs", HOT, "--hotDocIDs", '{"db": "a", "collection": "c", "ids": []}'],
     "ids must be a non-empty array"),
    (["--hotDocIDs", '{"db": "a", "collection": "c", "ids": [{"_id": {"$oid": "zz"}}]}'],
     "Invalid value for '--hotDocIDs'.*is not a valid extended JSON _id"),
    (["--logPath", ""], "Invalid value for '--logPath': must not be empty"),
    (["--logpath", "/tmp/x"], "No such option.*--logpath.*Did you mean '--logPath'"),
    (["--bogus"], "No such option.*--bogus"),
    (["--port"], "Option '--port' requires an argument"),
]
BAD_URIS = [
    ("mongodb://127.0.0.1:{port}/?readPreference=secondary",
     "Invalid URI option, read preference must be primary"),
    ("mongodb://127.0.0.1:{port}/?readConcernLevel=local",
     "Invalid URI option, read concern must be majority"),
    ("mongodb://127.0.0.1:{port}/?w=1", "Invalid URI option, write concern must be majority"),
    ("mongodb://127.0.0.1:{port}/?socketTimeoutMS=1000",
     "Invalid URI option, socketTimeoutMS is not supported"),
    ("http://127.0.0.1:{port}", "Invalid connection string"),
]
# (config file text, text the error must contain)
BAD_CONFIGS = [
    ("cluster0: [unclosed", "is not valid YAML at line 1"),
    ("- cluster0\n- cluster1\n", "must be a flat YAML mapping"),
    ("logpath: /tmp/x\n", "unknown key 'logpath'; did you mean 'logPath'?"),
    ("loadLevel: '3'\n", "Invalid value for 'loadLevel' in config file"),
    ("port: true\n", "Invalid value for 'port' in config file"),
    ("verbosity: 3\n", "Invalid value for 'verbosity' in config file"),
    ("acceptDisclaimer: 'yes'\n", "Invalid value for 'acceptDisclaimer' in config file"),
    ("id: 7\n", "Invalid value for 'id' in config file"),
    ("hotDocIDs: [1]\n", "Invalid value for 'hotDocIDs' in config file"),
    ("config: other.yaml\n", "'config' cannot be set inside a config file"),
    ("cluster1: 'mongodb://h:1/?w=2'\n",
     "Invalid value for 'cluster1' in config file.*write concern must be majority"),
]


def run_cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, prog_name="mongosync")
    return result.exit_code, result.output


def cluster_args(first: Tripwire, second: Tripwire) -> list[str]:
    return ["--cluster0", first.uri, "--cluster1", second.uri]


@pytest.fixture
def second_tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    yield wire
    wire.close()


@pytest.mark.parametrize("extra, expected", BAD_OPTIONS, ids=[" ".join(c[0])[:40]
                                                               for c in BAD_OPTIONS])
def test_bad_options_are_refused_naming_the_option(extra: list[str], expected: str,
                                                   tripwire: Tripwire,
                                                   second_tripwire: Tripwire) -> None:
    code, output = run_cli(cluster_args(tripwire, second_tripwire) + extra)
    assert code == 2, output
    assert re.search(expected, output), output
    assert not tripwire.touched() and not second_tripwire.touched()


@pytest.mark.parametrize("uri, expected", BAD_URIS, ids=[c[1][:40] for c in BAD_URIS])
def test_bad_connection_strings_get_mongosyncs_texts(uri: str, expected: str,
                                                     tripwire: Tripwire,
                                                     second_tripwire: Tripwire) -> None:
    code, output = run_cli(["--cluster0", uri.format(port=tripwire.port),
                            "--cluster1", second_tripwire.uri])
    assert code == 2, output
    assert f"Invalid value for '--cluster0': {expected}" in output, output
    assert not tripwire.touched() and not second_tripwire.touched()


def test_missing_and_identical_clusters_are_refused(tripwire: Tripwire) -> None:
    code, output = run_cli(["--cluster0", tripwire.uri])
    assert code == 2 and "Missing option '--cluster1'" in output, output
    code, output = run_cli(["--cluster0", tripwire.uri, "--cluster1", tripwire.uri])
    assert code == 2 and "'--cluster1': it names the same hosts as '--cluster0'" in output
    assert not tripwire.touched()


@pytest.mark.parametrize("text, expected", BAD_CONFIGS, ids=[c[0][:30] for c in BAD_CONFIGS])
def test_bad_config_files_are_refused_naming_the_key(text: str, expected: str, tmp_path: Path,
                                                     tripwire: Tripwire,
                                                     second_tripwire: Tripwire) -> None:
    config = tmp_path / "mongosync.yaml"
    config.write_text(text)
    # Valid clusters on the command line: the file is checked even where they override it.
    code, output = run_cli(["--config", str(config), *cluster_args(tripwire, second_tripwire)])
    assert code == 2, output
    assert re.search(expected, output), output
    assert not tripwire.touched() and not second_tripwire.touched()


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    code, output = run_cli(["--config", str(tmp_path / "absent.yaml")])
    assert code == 2
    assert "Invalid value for '--config'" in output and "No such file" in output, output


def test_the_real_process_refuses_at_once_without_connecting(tmp_path: Path,
                                                             tripwire: Tripwire,
                                                             second_tripwire: Tripwire) -> None:
    started = time.monotonic()
    result = subprocess.run([str(MONGOSYNC), *cluster_args(tripwire, second_tripwire),
                             "--loadLevel", "9"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 2
    assert "Invalid value for '--loadLevel'" in result.stderr
    assert time.monotonic() - started < 10  # a connection attempt would wait 30 s
    assert not tripwire.touched() and not second_tripwire.touched()
    assert result.stdout == ""  # nothing was logged: the process never started


def test_version_and_help() -> None:
    for flag in ("-v", "--version"):
        code, output = run_cli([flag])
        assert code == 0 and "mongosync (pymongosync)" in output
    code, output = run_cli(["-h"])
    assert code == 0
    for option in ("--cluster0", "--cluster1", "--config", "--port", "--logPath", "--verbosity",
                   "--id", "--loadLevel", "--acceptDisclaimer", "--disableTelemetry",
                   "--disableVerification", "--disableMetricsLogging",
                   "--metricsLoggingFilepath", "--hotDocIDs", "--createIndexesBatchSize",
                   "--enableCappedCollectionHandling", "--bind", "status", "reset"):
        assert option in output, option


def test_command_line_overrides_the_config_file(tmp_path: Path, tripwire: Tripwire,
                                                second_tripwire: Tripwire,
                                                mongosync: MongosyncFactory) -> None:
    """The file gives the clusters, a log directory and values the command line replaces."""
    logs = tmp_path / "logs"
    config = tmp_path / "mongosync.yaml"
    config.write_text(f"cluster0: '{tripwire.uri}'\ncluster1: '{second_tripwire.uri}'\n"
                      f"port: 1\nverbosity: WARN\nloadLevel: 4\nid: from-file\n"
                      f"logPath: '{logs}'\nacceptDisclaimer: true\nhotDocIDs: '{HOT}'\n")
    process = mongosync("--config", str(config), "--port", "0", "--verbosity", "info",
                        "--id", "shard-a")
    line = wait_for_file_line(logs / "mongosync.log", "Mongosync Options")
    assert (line["port"], line["verbosity"], line["loadLevel"], line["id"]) == \
        (0, "INFO", 4, "shard-a")
    assert line["logPath"] == str(logs) and line["hotDocIDs"] == [HOT]
    assert line["mongosyncID"] == "shard-a"
    process.signal(signal.SIGTERM)
    assert process.wait_exit(10) == 0
    assert process.stderr == []  # acceptDisclaimer from the file: no notice


def test_disclaimer_notice_and_prompt(tmp_path: Path, tripwire: Tripwire,
                                      second_tripwire: Tripwire,
                                      mongosync: MongosyncFactory) -> None:
    # Without a terminal: the notice is shown and the process goes on.
    quiet = mongosync(*cluster_args(tripwire, second_tripwire), "--port", "0")
    quiet.wait_listening()
    assert "--acceptDisclaimer" in "".join(quiet.stderr)
    quiet.signal(signal.SIGINT)
    assert quiet.wait_exit(10) == 0
    # At a terminal: answering "n" stops before anything starts.
    controller, terminal = pty.openpty()
    try:
        asked = mongosync(*cluster_args(tripwire, second_tripwire), "--port", "0",
                          stdin=terminal)
        deadline = time.monotonic() + 20
        while "--acceptDisclaimer" not in "".join(asked.stderr) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.write(controller, b"n\n")  # the terminal holds the answer until the prompt reads it
        assert asked.wait_exit(10) == 1
        assert "Continue? [y/N]" in "".join(asked.stderr)
        assert "the notice was not accepted" in "".join(asked.stderr)
        assert asked.stdout == []
    finally:
        os.close(controller)
        os.close(terminal)


def wait_for_file_line(path: Path, message: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for text in path.read_text().splitlines():
                line = json.loads(text)
                if line["message"] == message:
                    return line
        time.sleep(0.05)
    raise AssertionError(f"no {message!r} line in {path}")
