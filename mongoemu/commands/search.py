"""Atlas Search index management: createSearchIndexes, updateSearchIndex, dropSearchIndex and
the $listSearchIndexes stage, answered as a MongoDB server without a search index management
host answers them (the emulated server is not Atlas and has no mongot).

MongoDB checks that configuration before it parses the request or looks up the collection, so
every call fails the same way whatever its arguments. The answer depends on the release:

* 7.0 (and 6.0.7+): CommandNotSupported, "Search index commands are only supported with
  Atlas." for the commands and Location6047401, "$listSearchIndexes stage is only allowed on
  MongoDB Atlas" for the stage;
* 7.3 and later (so 8.0): SearchNotEnabled (31082) for both, with one message.
"""

from __future__ import annotations

from typing import Any

from mongoemu.commands.registry import command
from mongoemu.context import Context
from mongoemu.errors import CommandError

SEARCH_NOT_ENABLED_MESSAGE = (
    "Using Atlas Search Database Commands and the $listSearchIndexes aggregation stage requires "
    "additional configuration. Please connect to Atlas or an AtlasCLI local deployment to enable. "
    "For more information on how to connect, see "
    "https://dochub.mongodb.org/core/atlas-cli-deploy-local-reqs.")


def _search_not_enabled(server_version: str) -> bool:
    major, minor = (int(part) for part in server_version.split(".")[:2])
    return (major, minor) >= (7, 3)


def search_command_refused(ctx: Context) -> CommandError:
    """The error of a search index command on this (non-Atlas) server."""
    if _search_not_enabled(ctx.server.config.server_version):
        return CommandError(31082, SEARCH_NOT_ENABLED_MESSAGE, code_name_override="SearchNotEnabled")
    return CommandError(115, "Search index commands are only supported with Atlas.")


def list_search_indexes_refused(ctx: Context) -> CommandError:
    """The error of a pipeline with a $listSearchIndexes stage on this (non-Atlas) server."""
    if _search_not_enabled(ctx.server.config.server_version):
        return CommandError(31082, SEARCH_NOT_ENABLED_MESSAGE, code_name_override="SearchNotEnabled")
    return CommandError(6047401, "$listSearchIndexes stage is only allowed on MongoDB Atlas")


@command("createSearchIndexes")
@command("updateSearchIndex")
@command("dropSearchIndex")
def search_index_command(ctx: Context) -> dict[str, Any]:
    raise search_command_refused(ctx)
