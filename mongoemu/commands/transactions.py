"""commitTransaction and abortTransaction (the dispatcher resolves the transaction)."""

from __future__ import annotations

from typing import Any

from mongoemu.commands.registry import command
from mongoemu.context import Context
from mongoemu.errors import CommandError
from mongoemu.sessions import TRANSIENT


def _transaction(ctx: Context) -> Any:
    if ctx.session is None or "txnNumber" not in ctx.body:
        raise CommandError(125, f"{ctx.name} must be run within a transaction")
    txn = ctx.session.transaction
    if txn is None or txn.txn_number != int(ctx.body["txnNumber"]):
        raise CommandError(251, "No transaction started", labels=[TRANSIENT])
    return txn


@command("commitTransaction", admin_only=True, in_transaction=True)
def commit_transaction(ctx: Context) -> dict[str, Any]:
    txn = _transaction(ctx)
    if txn.state == "committed":
        return {}
    if txn.state == "aborted":
        raise CommandError(251, f"Transaction with {{ txnNumber: {txn.txn_number} }} has been "
                                f"aborted.", labels=[TRANSIENT])
    ctx.txn = txn
    ctx.server.writer.commit_transaction(ctx)
    ctx.server.sessions.release_locks(txn)
    txn.state = "committed"
    ctx.txn = None
    return {}


@command("abortTransaction", admin_only=True, in_transaction=True)
def abort_transaction(ctx: Context) -> dict[str, Any]:
    txn = _transaction(ctx)
    if txn.state == "committed":
        raise CommandError(256, f"Transaction {txn.txn_number} has been committed.")
    if txn.state == "aborted":
        raise CommandError(251, f"Transaction with {{ txnNumber: {txn.txn_number} }} has been "
                                f"aborted.", labels=[TRANSIENT])
    ctx.server.writer.abort_transaction(txn)
    ctx.server.sessions.release_locks(txn)
    txn.state = "aborted"
    ctx.txn = None
    return {}
