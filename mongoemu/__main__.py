"""``python -m mongoemu``: run one emulated replica-set primary or mongos."""

from __future__ import annotations

import argparse
import logging
import sys

from mongoemu.config import WIRE_VERSIONS, EmulatorConfig
from mongoemu.server import serve_forever


def parse_args(argv: list[str] | None = None) -> EmulatorConfig:
    parser = argparse.ArgumentParser(
        prog="python -m mongoemu",
        description="A MongoDB wire-protocol emulator: a replica-set primary or a mongos with an "
                    "oplog and change streams, for tests and demos.")
    parser.add_argument("--port", type=int, default=27017,
                        help="TCP port (0 picks a free one; the ready line tells which)")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--host", default=None,
                        help="host name advertised in hello (defaults to --bind)")
    topology = parser.add_mutually_exclusive_group()
    topology.add_argument("--replset", metavar="NAME", default=None,
                          help="act as the primary of replica set NAME (the default, rs0)")
    topology.add_argument("--mongos", action="store_true", help="act as a mongos router")
    parser.add_argument("--server-version", default="7.0", choices=sorted(WIRE_VERSIONS),
                        help="MongoDB release to emulate (wire version, buildInfo, FCV)")
    parser.add_argument("--oplog-size-mb", type=float, default=192.0,
                        help="oplog capacity in MiB; older entries are dropped beyond it")
    parser.add_argument("--auth", action="store_true", help="require SCRAM authentication")
    parser.add_argument("--user", help="root user created at start (with --auth)")
    parser.add_argument("--password", help="password of the root user (with --auth)")
    parser.add_argument("--noop-interval", type=float, default=10.0,
                        help="seconds between periodic no-op oplog writes on an idle server")
    parser.add_argument("--bypass-write-blocking-app", action="append", default=[],
                        metavar="APPNAME",
                        help="with auth off, clients with this appName bypass "
                             "setUserWriteBlockMode (as the bypassWriteBlockingMode privilege "
                             "would); repeatable")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level")
    args = parser.parse_args(argv)
    if args.port < 0 or args.port > 65535:
        parser.error(f"--port must be between 0 and 65535, not {args.port}")
    if args.oplog_size_mb <= 0:
        parser.error("--oplog-size-mb must be positive")
    if args.auth and not (args.user and args.password):
        parser.error("--auth needs --user and --password for the initial root user")
    if (args.user or args.password) and not args.auth:
        parser.error("--user/--password only make sense with --auth")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return EmulatorConfig(
        port=args.port, bind_host=args.bind, advertised_host=args.host or args.bind,
        mode="mongos" if args.mongos else "replset", replset_name=args.replset or "rs0",
        server_version=args.server_version, oplog_size_mb=args.oplog_size_mb, auth=args.auth,
        root_user=args.user, root_password=args.password, noop_interval_s=args.noop_interval,
        bypass_write_blocking_apps=list(args.bypass_write_blocking_app))


def connection_uri(config: EmulatorConfig) -> str:
    if config.is_mongos:
        return f"mongodb://{config.address}/"
    return f"mongodb://{config.address}/?replicaSet={config.replset_name}"


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)

    def ready(server: object, port: int) -> None:
        print(f"mongoemu ready uri={connection_uri(config)} port={port} mode={config.mode} "
              f"version={config.server_version}", flush=True)

    serve_forever(config, ready)


if __name__ == "__main__":
    main()
