"""The ``mongosync`` console script: mongosync's command line and YAML config (spec §2); its
subcommands ``status`` and ``reset`` live in their own modules.

Every option is checked — on the command line and in the config file alike, by the same
table — before anything touches a cluster, and a refusal names the option (``'--loadLevel'``
or ``'loadLevel' in config file x.yaml``). The command line wins over the file, key by key.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from click.core import ParameterSource

from pymongosync.clusters import check_connection_string
from pymongosync.process import VERSION, MongosyncProcess, Options
from pymongosync.cli.check import check_command
from pymongosync.cli.options import BY_NAME, SETTINGS, Setting, convert, read_config
from pymongosync.cli.repair import repair_command
from pymongosync.cli.reset import reset_command
from pymongosync.cli.status import status_command
from pymongosync.cli.verify import verify_command


DISCLAIMER = """\
Before you migrate with pymongosync:

- pymongosync copies the source cluster to the destination, then applies the source's changes
  until you commit. Stop writes to the source before you call /api/v1/commit.
- Its embedded verifier compares both clusters document by document before cutover and fails
  the migration on any difference (on by default; off with /start "verification":
  {"enabled": false} or --disableVerification, which stays in force). `mongosync verify`
  compares two clusters after the fact.
- It blocks user writes on the destination until commit, and on the source from commit on,
  as mongosync does; `mongosync reset` undoes what an abandoned migration left.

Pass --acceptDisclaimer (or acceptDisclaimer: true in the config file) to skip this notice.
"""


def resolve(ctx: click.Context, values: dict[str, Any]) -> Options:
    """Command line over config file over defaults. Every value given is checked, also file
    values the command line replaces: a mistake in the file should not wait for the day the
    override is dropped."""
    config_path = values.get("config")
    chosen: dict[str, Any] = {}

    def take(setting: Setting, raw: Any, where: str, from_text: bool) -> None:
        try:
            chosen[setting.name] = convert(setting, raw, from_text)
        except (TypeError, ValueError) as exc:  # InvalidConnectionString included
            raise click.UsageError(f"Invalid value for {where}: {exc}") from None

    for name, raw in (read_config(config_path) if config_path else {}).items():
        take(BY_NAME[name], raw, f"'{name}' in config file {config_path}", False)
    for setting in SETTINGS:
        if ctx.get_parameter_source(setting.name) in (ParameterSource.COMMANDLINE,
                                                       ParameterSource.ENVIRONMENT):
            take(setting, values[setting.name], f"'--{setting.name}'", True)
    for label in ("cluster0", "cluster1"):
        if label not in chosen:
            raise click.UsageError(f"Missing option '--{label}' (or '{label}' in the config "
                                   f"file): give the connection string of both clusters")
    if check_connection_string(chosen["cluster0"])["nodelist"] == \
            check_connection_string(chosen["cluster1"])["nodelist"]:
        raise click.UsageError("Invalid value for '--cluster1': it names the same hosts as "
                               "'--cluster0'; give the two clusters of the migration")
    return Options(**chosen)


def show_disclaimer(options: Options) -> None:
    """Spec §2.6: the notice, and a y/n prompt when someone is at the terminal to answer."""
    if options.acceptDisclaimer:
        return
    click.echo(DISCLAIMER, err=True)
    if sys.stdin.isatty() and not click.confirm("Continue?", default=False, err=True):
        raise click.ClickException("the notice was not accepted; nothing was started")


def _setting_option(setting: Setting) -> Any:
    if setting.kind == "flag":
        return click.option(f"--{setting.name}", setting.name, is_flag=True, help=setting.help)
    return click.option(f"--{setting.name}", setting.name, metavar=setting.metavar,
                        multiple=setting.kind == "hotDocIDs", help=setting.help)


def _with_settings(function: Any) -> Any:
    for setting in reversed(SETTINGS):
        function = _setting_option(setting)(function)
    return function


@click.group(invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]},
             help="Migrate and sync between two MongoDB clusters (a mongosync-compatible "
                  "process). Run with --cluster0/--cluster1 (or --config) to start the process "
                  "and its HTTP API; see the commands below for tools around it.")
@click.option("--config", "config", metavar="FILE",
              help="YAML file with the same keys as the long options; options given on the "
                   "command line win.")
@_with_settings
@click.version_option(VERSION, "-v", "--version",
                      message="mongosync (pymongosync) %(version)s, compatible with mongosync "
                              "1.22")
@click.pass_context
def main(ctx: click.Context, /, **values: Any) -> None:
    if ctx.invoked_subcommand is not None:
        return
    options = resolve(ctx, values)
    show_disclaimer(options)
    ctx.exit(MongosyncProcess(options).run())


main.add_command(check_command, "check")
main.add_command(status_command, "status")
main.add_command(reset_command, "reset")
main.add_command(repair_command, "repair")
main.add_command(verify_command, "verify")
