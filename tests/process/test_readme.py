"""The README's manual path, run as printed from a fresh copy of the checkout: ``make venv``, the
activation, two emulators, sample data, ``mongosync check``, ``mongosync`` itself, ``/start``
with curl, ``mongosync status``, the commit, then a sharded cluster as destination whose
``/start`` (with ``sharding``) is accepted. The emulators get free ports instead of the README's
(a developer's own mongod may hold 27017); mongosync keeps its default API port 27182 (and
27183), as printed, since ``mongosync status`` relies on that default: the test skips when
either is taken."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from .processkit import ROOT, free_port

MARKER = "<!-- manual-path: the test runs the sh block below -->"
EMULATOR_PORTS = ("27017", "27018", "27019")
API_PORTS = (27182, 27183)


def manual_path() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert MARKER in readme, "the README lost its manual-path marker"
    block = re.search(r"```sh\n(.*?)```", readme[readme.index(MARKER):], re.DOTALL)
    assert block is not None, "no sh block after the manual-path marker"
    return block.group(1)


def fresh_copy(destination: Path) -> Path:
    """What a clone of this checkout would hold once committed: tracked and new files that git
    does not ignore (no .venv, no build output)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # listed but deleted in the working tree: not there after a commit
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


@pytest.mark.slow
def test_the_manual_path_runs_as_printed(tmp_path: Path) -> None:
    for tool in ("git", "make", "curl", "python3"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed; the README's manual path needs it")
    for port in API_PORTS:
        try:
            socket.create_server(("127.0.0.1", port)).close()
        except OSError:
            pytest.skip(f"port {port} is in use; the README's mongosync commands use it")
    checkout = fresh_copy(tmp_path / "checkout")
    script = manual_path()
    for port in EMULATOR_PORTS:
        script = script.replace(port, str(free_port()))
    # Harness only: stop at the first failing command and then end what it started; after the
    # README's own `kill $(jobs -p)`, wait for every process to have stopped.
    harness = ("set -e\ntrap 'status=$?; [ $status = 0 ] || kill $(jobs -p) 2>/dev/null; "
               "exit $status' EXIT\n" + script + "wait\n")
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    process = subprocess.Popen(["bash", "-c", harness], cwd=checkout, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"the manual path did not finish:\n{output[-6000:]}") from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    (tmp_path / "output.txt").write_text(output)
    print(output[-3000:])
    assert process.returncode == 0, output[-6000:]
    assert "BuildBackendWarning" not in output and "deprecated" not in output  # make venv
    assert output.count("mongoemu ready uri=") == 3  # two replica sets and the cluster
    assert "loaded " in output and "documents into" in output  # the sample data
    assert "mongosync check:" in output and "/start would pass the pre-flight checks" in output
    # /start, /commit and the sharded /start each answered success.
    assert output.count('{"success":true}') + output.count('{"success": true}') == 3, output
    assert "mongosync at http://127.0.0.1:27182: RUNNING" in output
    assert "mongosync at http://127.0.0.1:27183: RUNNING" in output  # the sharded destination
    # The script only goes on once `mongosync status` says COMMITTED; the log has the commit.
    log = (checkout / "mongosync-logs" / "mongosync.log").read_text()
    assert '"oldState":"RUNNING","newState":"COMMITTING"' in log, log[-2000:]
    sharded_log = (checkout / "mongosync-logs-sharded" / "mongosync.log").read_text()
    assert "Got a fatal error" not in sharded_log
    leftovers = subprocess.run(["pgrep", "-f", str(checkout)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "a process of the manual path is still running"
