"""Everything that distinguishes one emulated server from another."""

from __future__ import annotations

from dataclasses import dataclass, field

# maxWireVersion per emulated release (driver wire-version table).
WIRE_VERSIONS: dict[str, int] = {"6.0": 17, "7.0": 21, "8.0": 25}
# The patch release each one reports by default: at or above mongosync's minimums (spec §20.1),
# so that a default emulator is a supported cluster; `--server-version 7.0.12` emulates another.
PATCH_RELEASES: dict[str, str] = {"6.0": "6.0.24", "7.0": "7.0.21", "8.0": "8.0.9"}


def split_release(value: str) -> tuple[str, str | None]:
    """``"7.0"`` or ``"7.0.12"`` as (major release, patch release or None); ValueError names
    what is accepted."""
    parts = value.split(".")
    major = ".".join(parts[:2])
    if major not in WIRE_VERSIONS or len(parts) not in (2, 3) or not all(
            part.isdigit() for part in parts):
        raise ValueError(f"unsupported server version {value!r}; give one of "
                         f"{', '.join(WIRE_VERSIONS)} or a patch release of one, like 7.0.12")
    return major, value if len(parts) == 3 else None


@dataclass
class EmulatorConfig:
    port: int = 27017
    bind_host: str = "127.0.0.1"
    # The host name clients put in their URI; advertised in hello.hosts/me/primary.
    advertised_host: str = "127.0.0.1"
    mode: str = "replset"  # "replset" or "mongos"
    replset_name: str = "rs0"
    server_version: str = "7.0"
    oplog_size_mb: float = 192.0
    auth: bool = False
    root_user: str | None = None
    root_password: str | None = None
    noop_interval_s: float = 10.0
    enable_test_commands: bool = True
    shard_names: list[str] = field(default_factory=lambda: ["shard01", "shard02"])
    # A replica set serving as one shard of a cluster (mongod --shardsvr): it keeps the
    # filtering metadata the router pushes and answers the chunk-migration commands.
    shard_role: bool = False
    # The exact patch release reported (buildInfo, serverStatus); None: PATCH_RELEASES.
    release: str | None = None
    # A sink for benchmarks (mongoemu/commands/sink.py): writes to user databases are
    # acknowledged but their documents are not stored.
    discard_writes: bool = False

    def __post_init__(self) -> None:
        if self.server_version not in WIRE_VERSIONS:
            raise ValueError(
                f"unsupported --server-version {self.server_version!r}; "
                f"choose one of {', '.join(WIRE_VERSIONS)}"
            )
        if self.mode not in ("replset", "mongos"):
            raise ValueError(f"unsupported mode {self.mode!r}; choose replset or mongos")
        if self.auth and not (self.root_user and self.root_password):
            raise ValueError("--auth needs --user and --password for the initial root user")

    @property
    def max_wire_version(self) -> int:
        return WIRE_VERSIONS[self.server_version]

    @property
    def full_version(self) -> str:
        return self.release or PATCH_RELEASES[self.server_version]

    @property
    def address(self) -> str:
        return f"{self.advertised_host}:{self.port}"

    @property
    def is_mongos(self) -> bool:
        return self.mode == "mongos"
