"""Everything that distinguishes one emulated server from another."""

from __future__ import annotations

from dataclasses import dataclass, field

# maxWireVersion per emulated release (driver wire-version table).
WIRE_VERSIONS: dict[str, int] = {"6.0": 17, "7.0": 21, "8.0": 25}
PATCH_RELEASES: dict[str, str] = {"6.0": "6.0.19", "7.0": "7.0.15", "8.0": "8.0.4"}


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
    # With auth off a real server treats every client as fully privileged, which would bypass
    # write blocking; tests need to see blocking, so unauthenticated clients do not bypass it.
    unauthenticated_bypass_write_blocking: bool = False
    # With auth off, clients whose handshake appName is listed here bypass write blocking,
    # standing in for the bypassWriteBlockingMode privilege they would hold with auth on.
    bypass_write_blocking_apps: list[str] = field(default_factory=list)
    shard_names: list[str] = field(default_factory=lambda: ["shard01", "shard02"])

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
        return PATCH_RELEASES[self.server_version]

    @property
    def address(self) -> str:
        return f"{self.advertised_host}:{self.port}"

    @property
    def is_mongos(self) -> bool:
        return self.mode == "mongos"
