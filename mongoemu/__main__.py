"""``python -m mongoemu``: run one emulated replica-set primary or mongos;
``python -m mongoemu cluster``: a sharded cluster of such processes (see mongoemu.cluster)."""

from __future__ import annotations

import argparse
import logging
import sys

from mongoemu.config import WIRE_VERSIONS, EmulatorConfig, split_release
from mongoemu.server import serve_forever


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, except where there is none to show (unset options, off flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False):
            return action.help or ""
        return super()._get_help_string(action) or ""


def _release(value: str) -> tuple[str, str | None]:
    try:
        return split_release(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> EmulatorConfig:
    parser = argparse.ArgumentParser(
        prog="python -m mongoemu",
        description="A MongoDB wire-protocol emulator: a replica-set primary or a mongos with an "
                    "oplog and change streams, for tests and demos. `python -m mongoemu cluster "
                    "--help`: a sharded cluster.",
        formatter_class=_DefaultsShown)
    parser.add_argument("--port", type=int, default=27017,
                        help="TCP port (0 picks a free one; the ready line tells which)")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--host", default=None,
                        help="host name advertised in hello (defaults to --bind)")
    parser.add_argument("--replset", metavar="NAME", default=None,
                        help="act as the primary of replica set NAME (the default, rs0); "
                             "for a mongos, start a cluster: python -m mongoemu cluster")
    parser.add_argument("--server-version", default="7.0", type=_release, metavar="VERSION",
                        help=f"MongoDB release to emulate (wire version, buildInfo, FCV): "
                             f"{', '.join(sorted(WIRE_VERSIONS))}, or a patch release such as "
                             f"7.0.12 (buildInfo then reports it)")
    parser.add_argument("--oplog-size-mb", type=float, default=192.0,
                        help="oplog capacity in MiB; older entries are dropped beyond it")
    parser.add_argument("--auth", action="store_true", help="require SCRAM authentication")
    parser.add_argument("--user", help="root user created at start (with --auth)")
    parser.add_argument("--password", help="password of the root user (with --auth)")
    parser.add_argument("--noop-interval", type=float, default=10.0,
                        help="seconds between periodic no-op oplog writes on an idle server")
    parser.add_argument("--shardsvr", action="store_true",
                        help="serve as one shard of a cluster (started by `python -m mongoemu "
                             "cluster`): keep the router's filtering metadata, take chunk "
                             "migrations")
    parser.add_argument("--discard-writes", action="store_true",
                        help="a sink for benchmarks: writes to user databases are acknowledged "
                             "with their counts but not stored (admin, config, local and "
                             "mongosync's metadata database are stored as usual)")
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
        mode="replset", replset_name=args.replset or "rs0",
        server_version=args.server_version[0], release=args.server_version[1],
        oplog_size_mb=args.oplog_size_mb, auth=args.auth,
        root_user=args.user, root_password=args.password, noop_interval_s=args.noop_interval,
        shard_role=args.shardsvr, discard_writes=args.discard_writes)


def connection_uri(config: EmulatorConfig) -> str:
    return f"mongodb://{config.address}/?replicaSet={config.replset_name}"


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["cluster"]:
        from mongoemu.cluster.launcher import main as cluster_main
        sys.exit(cluster_main(arguments[1:]))
    config = parse_args(argv)

    def ready(server: object, port: int) -> None:
        print(f"mongoemu ready uri={connection_uri(config)} port={port} mode={config.mode} "
              f"version={config.server_version}", flush=True)

    serve_forever(config, ready)


if __name__ == "__main__":
    main()
