"""``mongosync reset``: the command-line face of :mod:`pymongosync.reset`."""

from __future__ import annotations

import click

from pymongosync.errors import ResetError
from pymongosync.leftovers import LABELS
from pymongosync.cli.clusters import cluster_options, clusters_of_a_command, confirm_plan
from pymongosync.reset import apply_reset, plan_reset


@click.command("reset", help="""Remove what a failed or abandoned migration left, so a new one
can start (the documented restart-from-scratch procedure, checked).

Finds the migration on the clusters, refuses while a mongosync process still works on it, and
then: disables write blocking on the destination (and on the source when the migration blocked
it), drops the databases the migration created and its metadata database (never admin, local or
config), and optionally turns the balancers back on. Shows the plan and asks before changing
anything.""")
@cluster_options
@click.option("--all-user-databases", is_flag=True,
              help="Drop every user database on the destination, not only those the "
                   "migration created (the documented procedure).")
@click.option("--enable-balancer", is_flag=True,
              help="Start the balancers this migration stopped (to abandon the migration).")
@click.option("--force-balancer", is_flag=True,
              help="With --enable-balancer (implied): start the balancers even where no "
                   "metadata says this migration stopped them.")
@click.option("--destination", type=click.Choice(LABELS),
              help="Which cluster is the destination when no metadata says so "
                   "(default cluster1); must agree with the metadata otherwise.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Apply the plan without asking.")
def reset_command(cluster0: str | None, cluster1: str | None, config: str | None,
                  all_user_databases: bool, enable_balancer: bool, force_balancer: bool,
                  destination: str | None, dry_run: bool, yes: bool) -> None:
    with clusters_of_a_command(config, cluster0, cluster1, ResetError) as clusters:
        plan = plan_reset(clusters["cluster0"], clusters["cluster1"],
                          all_user_databases=all_user_databases,
                          enable_balancer=enable_balancer, force_balancer=force_balancer,
                          destination=destination)
        click.echo(plan.describe())
        databases = ", ".join(plan.states[plan.destination].databases)
        if plan.nothing_to_do:
            click.echo(f"Nothing to reset. Databases on {plan.destination}: {databases}")
            return
        if dry_run:
            click.echo(f"Dry run: nothing was changed. Databases on {plan.destination}: "
                       f"{databases}")
            return
        confirm_plan(yes)
        report = apply_reset(plan)
        click.echo(report.describe())
        click.echo("Start mongosync again and call /api/v1/start for a new migration.")


if __name__ == "__main__":
    reset_command(prog_name="mongosync reset")
