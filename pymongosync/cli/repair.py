"""``mongosync repair``: the command-line face of :mod:`pymongosync.repair`."""

from __future__ import annotations

import click

from pymongosync.cli.clusters import cluster_options, clusters_of_a_command, confirm_plan
from pymongosync.errors import RepairError
from pymongosync.repair import apply_repair, plan_repair


@click.command("repair", help="""Finish a migration whose final verification found documents
that differ, without starting over.

When the verifier fails a commit on documents (missing, extra or different on the destination),
the source is write-blocked and every change up to the commit time is applied. Repair takes
those documents from the source as they are: replaces them on the destination (or deletes them
where the source has none), records them, and queues them to be compared again. Start mongosync
again with the same flags: it continues the commit and commits only if the clusters are equal.
Refuses while a mongosync process still works on the migration, and for any difference that is
not a document's (indexes, options, collections). Shows the plan and asks before changing
anything.""")
@cluster_options
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Apply the plan without asking.")
def repair_command(cluster0: str | None, cluster1: str | None, config: str | None,
                   dry_run: bool, yes: bool) -> None:
    with clusters_of_a_command(config, cluster0, cluster1, RepairError) as clusters:
        plan = plan_repair(clusters["cluster0"], clusters["cluster1"])
        click.echo(plan.describe())
        if dry_run:
            click.echo("Dry run: nothing was changed.")
            return
        confirm_plan(yes)
        click.echo(apply_repair(plan).describe())


if __name__ == "__main__":
    repair_command(prog_name="mongosync repair")
