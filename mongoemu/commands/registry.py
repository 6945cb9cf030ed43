"""The command table: every command handler registers itself here with its rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Union

if TYPE_CHECKING:
    from mongoemu.context import Context

Reply = dict[str, Any]
Handler = Callable[["Context"], Union[Reply, Awaitable[Reply]]]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    handler: Handler
    admin_only: bool = False
    # Runs before authentication (hello, saslStart, ping, buildInfo, ...).
    no_auth: bool = False
    # Allowed inside a multi-document transaction.
    in_transaction: bool = False
    # Only in one topology: "replset", "mongos" or None for both.
    topology: str | None = None
    # Action checked by the authorizer (see mongoemu.auth); None derives it from the name.
    action: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)


REGISTRY: dict[str, CommandSpec] = {}


def command(name: str, *aliases: str, **rules: Any) -> Callable[[Handler], Handler]:
    """Register ``handler`` for ``name`` (and its case-sensitive aliases)."""

    def register(handler: Handler) -> Handler:
        spec = CommandSpec(name=name, handler=handler, aliases=aliases, **rules)
        for key in (name, *aliases):
            if key in REGISTRY:
                raise RuntimeError(f"command {key!r} registered twice")
            REGISTRY[key] = spec
        return handler

    return register
