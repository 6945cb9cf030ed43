"""Per-connection and per-command state handed to every command handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mongoemu.errors import CommandError

if TYPE_CHECKING:
    from mongoemu.server import Server
    from mongoemu.sessions import Session, Transaction


@dataclass
class Connection:
    id: int
    peer: str  # "ip:port" of the client
    app_name: str | None = None
    client_metadata: dict[str, Any] | None = None
    # (user, db) once authenticated; None before (and always when auth is off).
    user: tuple[str, str] | None = None
    # In-flight SASL conversations by conversationId.
    sasl: dict[int, Any] = field(default_factory=dict)
    closed: bool = False


class Context:
    """One command being executed: who sent it, where, and with which session."""

    __slots__ = ("server", "conn", "db", "body", "name", "session", "txn", "operation_time",
                 "from_migrate")

    def __init__(self, server: "Server", conn: Connection, db: str, body: dict[str, Any],
                 name: str) -> None:
        self.server = server
        self.conn = conn
        self.db = db
        self.body = body
        self.name = name
        self.session: "Session | None" = None
        self.txn: "Transaction | None" = None
        self.operation_time = None
        # Writes of a chunk migration or of a sharded DDL on a non-primary shard: logged with
        # fromMigrate (change streams skip them) and exempt from user write blocking.
        self.from_migrate = False

    @property
    def catalog(self) -> Any:
        """The catalog this command sees: inside a transaction, its private workspace."""
        if self.txn is not None:
            return self.txn.view(self.server.catalog)
        return self.server.catalog

    @property
    def target(self) -> Any:
        """The command's first value, e.g. the collection name of ``{find: "coll"}``."""
        return self.body[self.name]

    def collection_name(self) -> str:
        value = self.body[self.name]
        if not isinstance(value, str):
            raise CommandError(
                73 if value is not None else 2,
                f"collection name has invalid type {type(value).__name__}",
            )
        if not value:
            raise CommandError(73, f"Invalid namespace specified '{self.db}.'")
        return value

    def namespace(self) -> str:
        return f"{self.db}.{self.collection_name()}"

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)
