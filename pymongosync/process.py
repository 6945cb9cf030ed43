"""The mongosync process: INITIALIZING → serving a migration → stopping (spec §2.6, §4, §15).

The main thread only waits: signal handlers set flags it polls, so nothing runs inside a
handler except the immediate exit on a second signal. The HTTP server runs on its own thread
from the start (``/progress`` answers INITIALIZING while the clusters are being reached), and
connecting plus loading the stored migration happens on another, so a slow or unreachable
cluster never keeps the process from answering or from stopping.

Stopping checkpoints: ``Migration.close`` stops the worker at a resumable point. A second
signal exits at once, which is as safe as kill -9: the metadata is written so that a crash at
any moment resumes correctly.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import generate_latest

from pymongosync import logs, retry
from pymongosync.api import Service, create_app
from pymongosync.clusters import Cluster, redact
from pymongosync.errors import MigrationError
from pymongosync.changes.hot_documents import HotDocuments
from pymongosync.migration import EngineSettings, Migration

log = logging.getLogger("pymongosync.process")

VERSION = importlib.metadata.version("pymongosync")
DEFAULT_PORT = 27182
DEFAULT_METRICS_DIRECTORY = "metrics"
METRICS_INTERVAL_SECONDS = 10.0
POLL_SECONDS = 0.1
# Exit codes: 0 after a clean stop; 1 on a fatal error (spec §2.6); 128 + signal number when a
# second signal cuts the shutdown short, as shells report a process killed by that signal.
EXIT_FATAL = 1
CLOSE_SECONDS = 2.0


@dataclass(frozen=True)
class Options:
    """The validated command line and config file (spec §2.2); names are the option names."""

    cluster0: str
    cluster1: str
    port: int = DEFAULT_PORT
    bind: str = "127.0.0.1"
    logPath: str | None = None
    verbosity: str = "DEBUG"
    id: str | None = None
    loadLevel: int = 3
    acceptDisclaimer: bool = False
    disableTelemetry: bool = False
    disableVerification: bool = False
    disableMetricsLogging: bool = False
    metricsLoggingFilepath: str = DEFAULT_METRICS_DIRECTORY
    hotDocIDs: tuple[str, ...] = ()
    createIndexesBatchSize: int | None = None
    enableCappedCollectionHandling: bool = False
    changeBufferLimitMB: int = 10240
    disableChangeBuffering: bool = False

    @property
    def mongosync_id(self) -> str:
        return self.id or "coordinator"

    def for_log(self) -> dict[str, Any]:
        """The ``Mongosync Options`` line: every option, connection strings without secrets."""
        values = asdict(self)
        values["cluster0"], values["cluster1"] = redact(self.cluster0), redact(self.cluster1)
        return values


class MongosyncProcess:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.service = Service(options.mongosync_id)
        self.clusters: list[Cluster] = []
        self._stop_signal: int | None = None
        self._rotate = False
        self._fatal: str | None = None
        self._fatal_fields: dict[str, Any] = {}
        self._log_handler: logging.Handler | None = None
        self._metrics_log: logs.MetricsLog | None = None

    # -- signals (handlers only set flags) -------------------------------------------------
    def _on_stop_signal(self, number: int, frame: FrameType | None) -> None:
        if self._stop_signal is not None:
            os.write(2, b"second signal: exiting now; the migration resumes from its last "
                        b"checkpoint when mongosync starts again\n")
            os._exit(128 + number)
        self._stop_signal = number

    def _on_rotate_signal(self, number: int, frame: FrameType | None) -> None:
        self._rotate = True

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> int:
        options = self.options
        self._log_handler = logs.configure(options.verbosity, options.logPath,
                                           options.mongosync_id)
        log.info("Version info", extra={"fields": {
            "version": VERSION, "os": platform.system().lower(), "arch": platform.machine(),
            "compatibleWith": "mongosync 1.22"}})
        log.info("Mongosync Options", extra={"fields": options.for_log()})
        # mongosync echoes its hidden flags here (spec §2.3); pymongosync has one such knob,
        # the retry window mongosync calls longRetryTime, under that name.
        log.info("Mongosync HiddenFlags", extra={"fields": {
            "longRetryTime": f"{retry.RETRY_FOR_SECONDS / 60:.0f}m0s"}})
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGUSR1, self._on_rotate_signal)
        try:
            listener = self._listen()
        except OSError as exc:
            log.log(logs.FATAL, "Got a fatal error running Mongosync", extra={"fields": {
                "error": f"cannot serve the API on {options.bind}:{options.port}: {exc}; is "
                         f"another mongosync running? Choose another --port"}})
            return EXIT_FATAL
        server = uvicorn.Server(uvicorn.Config(
            create_app(self.service), log_config=None, access_log=False, lifespan="off",
            timeout_graceful_shutdown=2))
        http = threading.Thread(target=server.run, kwargs={"sockets": [listener]},
                                name="http", daemon=True)
        http.start()
        host, port = listener.getsockname()[:2]
        log.info("HTTP server listening", extra={"fields": {"address": host, "port": port}})
        self._open_metrics_log()
        initializer = threading.Thread(target=self._initialize, name="initialize", daemon=True)
        initializer.start()
        fatal = self._wait()
        server.should_exit = True
        http.join(timeout=5)
        self._shut_down(initialized=not initializer.is_alive(), fatal=fatal)
        if fatal:  # the last line of a failed run (spec §17)
            log.log(logs.FATAL, "Got a fatal error running Mongosync", extra={"fields": {
                "error": self._fatal, **self._fatal_fields}})
        logging.shutdown()
        return EXIT_FATAL if fatal else 0

    def _listen(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.options.bind else socket.AF_INET
        return socket.create_server((self.options.bind, self.options.port), family=family)

    def _initialize(self) -> None:
        """Connect, check both clusters answer, attach to the stored migration (or IDLE)."""
        options = self.options
        try:
            cluster0 = Cluster.connect("cluster0", options.cluster0)
            self.clusters.append(cluster0)
            cluster1 = Cluster.connect("cluster1", options.cluster1)
            self.clusters.append(cluster1)
            for cluster in (cluster0, cluster1):
                cluster.client.admin.command("ping")
            log.info(f"Initialized client0 with URI: {redact(options.cluster0)} and client1 "
                     f"with URI: {redact(options.cluster1)}")
            settings = EngineSettings(
                change_buffering=not options.disableChangeBuffering,
                change_buffer_limit_bytes=options.changeBufferLimitMB * 1024 * 1024,
                create_indexes_batch_size=options.createIndexesBatchSize,
                hot_documents=HotDocuments.from_options(options.hotDocIDs))
            migration = Migration.open(cluster0, cluster1, options.loadLevel,
                                       disable_verification=options.disableVerification,
                                       settings=settings, instance_id=options.id)
            migration.add_listener(lambda message: self._on_migration_event(migration))
            if migration.error is not None:
                self._fatal = (f"the migration stopped on a fatal error: "
                               f"{migration.error.error_name}: "
                               f"{migration.error.message}. Fix the cause, then run `mongosync "
                               f"reset` and start a new migration (spec §15.2)")
                return
            self.service.migration = migration
            log.info("Transitioning the state", extra={"fields": {
                "oldState": "INITIALIZING", "newState": migration.state}})
        except MigrationError as exc:
            self._fatal = f"{exc.error_name}: {exc.message}"
        except Exception as exc:  # noqa: BLE001 - e.g. unreachable cluster, bad credentials
            self._fatal = (f"cannot use the clusters: {type(exc).__name__}: "
                           f"{redact(str(exc))}")

    def _on_migration_event(self, migration: Migration) -> None:
        # Called on the worker thread at every phase or state change; a recorded error means
        # the migration has stopped for good (spec §2.6: the process then exits).
        if migration.error is not None:
            self._fatal_fields = migration.error.to_document()
            self._fatal = f"{migration.error.error_name}: {migration.error.message}"

    def _wait(self) -> bool:
        """Sleep until a signal (False) or a fatal error (True); rotate logs and write metrics
        meanwhile."""
        next_metrics = time.monotonic()
        while True:
            if self._stop_signal is not None:
                log.info("Received signal, stopping", extra={"fields": {
                    "signal": signal.Signals(self._stop_signal).name}})
                return False
            if self._fatal is not None:
                return True
            if self._rotate:
                self._rotate = False
                self._rotate_logs()
            if self._metrics_log is not None and time.monotonic() >= next_metrics:
                self._write_metrics()
                next_metrics = time.monotonic() + METRICS_INTERVAL_SECONDS
            time.sleep(POLL_SECONDS)

    def _rotate_logs(self) -> None:
        if isinstance(self._log_handler, logs.LogFile):
            archive = self._log_handler.rotate()
            log.info("Rotated the log file", extra={"fields": {"rotatedTo": str(archive)}})
        else:
            log.info("Ignoring SIGUSR1: logs go to stdout (rotation needs --logPath)")

    def _open_metrics_log(self) -> None:
        if self.options.disableMetricsLogging:
            return
        try:
            self._metrics_log, fallback = logs.open_metrics_log(
                self.options.metricsLoggingFilepath, DEFAULT_METRICS_DIRECTORY)
        except OSError as exc:
            log.warning("metrics logging is off: cannot write the metrics log",
                        extra={"fields": {"error": str(exc)}})
            return
        if fallback:
            log.warning(fallback)

    def _write_metrics(self) -> None:
        assert self._metrics_log is not None
        try:
            self._metrics_log.write(generate_latest(self.service.registry).decode())
        except Exception as exc:  # noqa: BLE001 - a missed sample is only worth a line
            log.debug("could not write the metrics log", extra={"fields": {"error": str(exc)}})

    def _shut_down(self, initialized: bool, fatal: bool) -> None:
        migration = self.service.migration
        if migration is not None:
            migration.close()
            if not fatal:
                log.info("Stopped; starting mongosync again with the same options continues "
                         "from here", extra={"fields": {"state": migration.state}})
        if self._metrics_log is not None:
            self._write_metrics()
            self._metrics_log.close()
        # While the initializer may still be opening the migration, its clients stay open: a
        # worker it starts must not fail on a closed client (and record that as fatal); the
        # exit ends it like a crash, which resumes cleanly.
        if initialized:
            for cluster in self.clusters:
                # Closing ends the driver's sessions on the server: bounded, as a cluster that
                # does not answer would hold the exit for its whole server selection timeout.
                with retry.bounded(CLOSE_SECONDS):
                    cluster.close()
