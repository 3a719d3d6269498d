"""``openbits store``: check, back up and restore the job store, without the daemon."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from openbits.cli.openbits.exits import EXIT_BITS_ERROR, EXIT_USAGE, P, R, fail
from openbits.cli.openbits.options import json_option
from openbits.cli.render import print_json


def _store_path(state_dir: str | None, config_path: str | None) -> tuple[str, str]:
    """(state directory, store file) as the daemon would find them."""
    from openbits.config import Config

    try:
        config = Config.load(config_path, state_dir=os.path.abspath(state_dir) if state_dir else None)
    except (OSError, ValueError, TypeError) as e:
        fail(f"bad configuration: {e}", EXIT_USAGE)
    return config.state_dir, config.db_path


def _store_options(fn: Callable[P, R]) -> Callable[P, R]:
    fn = click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="The daemon's TOML file (for its state_dir).",
    )(fn)
    return click.option(
        "--state-dir", type=click.Path(file_okay=False), default=None, help="The daemon's state directory."
    )(fn)


def _print_report(report: Any, as_json: bool, what: str) -> None:
    if as_json:
        print_json(report.to_json())
        return
    counts = (
        f"{report.jobs} jobs, {report.files} files, {report.events} events" if report.jobs is not None else ""
    )
    if report.ok:
        click.echo(
            f"{what} {report.path}: ok (schema {report.schema_version}; {counts}; {report.size_bytes} bytes)"
        )
    else:
        click.echo(f"{what} {report.path}: DAMAGED", err=True)
        for problem in report.problems[:20]:
            click.echo(f"  {problem}", err=True)
    if report.key_file:
        click.echo(
            f"with its key file {report.key_file} (it opens the secrets: keep it as safe as the store)"
        )


@click.group(name="store")
def store_group() -> None:
    """Check, back up and restore the job store (SQLite), with or without the daemon.

    The daemon checks its store at every start and refuses a damaged one, rather than start
    empty as BITS does: nothing is lost or rewritten. Then 'store check' shows the damage and
    'store restore BACKUP' puts a backup in place, keeping the damaged file aside. Take
    backups with 'store backup', safe while the daemon runs.

    \b
    Example:
      openbits store backup ~/openbits-$(date +%F).sqlite
      openbits store check
    """


@store_group.command(name="check")
@_store_options
@json_option("the report")
def store_check(state_dir: str | None, config_path: str | None, as_json: bool) -> None:
    """Run SQLite's full integrity check on the store (read-only); exit 1 if it is damaged.

    \b
    Example:
      openbits store check --state-dir /var/lib/openbits
    """
    from openbits.store import StoreError
    from openbits.store.maintenance import check

    _, path = _store_path(state_dir, config_path)
    try:
        report = check(path)
    except StoreError as e:
        fail(str(e))
    _print_report(report, as_json, "store")
    if not report.ok:
        sys.exit(EXIT_BITS_ERROR)


@store_group.command(name="backup")
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
@_store_options
@json_option("the report of the copy")
def store_backup(
    dest: str, force: bool, state_dir: str | None, config_path: str | None, as_json: bool
) -> None:
    """Copy the store to DEST: a consistent snapshot, safe while the daemon runs, checked.

    The key that seals the store's secrets (passwords, custom headers) is copied beside it,
    as DEST.key (mode 0600): a backup without it loses them.

    \b
    Example:
      openbits store backup /backup/openbits.sqlite --force
    """
    from openbits.store import StoreError
    from openbits.store.maintenance import backup

    _, path = _store_path(state_dir, config_path)
    try:
        report = backup(path, os.path.abspath(dest), force=force)
    except StoreError as e:
        fail(str(e))
    _print_report(report, as_json, "backup")


@store_group.command(name="restore")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@_store_options
@json_option('{"Restored": report, "KeptAside": [paths]}')
def store_restore(source: str, state_dir: str | None, config_path: str | None, as_json: bool) -> None:
    """Put the backup SOURCE in the store's place (stop the daemon first).

    SOURCE must pass the integrity check. The file it replaces, damaged or not, is moved
    aside with its WAL (jobs.sqlite.replaced-<time>), never deleted. SOURCE.key, the key of
    its secrets, is restored with it (the current key moved aside too).

    \b
    Example:
      systemctl stop openbits && openbits store restore /backup/openbits.sqlite
    """
    from openbits.daemon import DaemonError, lock_state_dir
    from openbits.store import StoreError
    from openbits.store.maintenance import restore

    directory, path = _store_path(state_dir, config_path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        lock = lock_state_dir(directory)
    except DaemonError:
        fail(f"a daemon is running on {directory}: stop it first")
    try:
        report, kept = restore(path, os.path.abspath(source))
    except StoreError as e:
        fail(str(e))
    finally:
        os.close(lock)
    if as_json:
        print_json({"Restored": report.to_json(), "KeptAside": kept})
        return
    _print_report(report, False, "restored")
    if not report.key_file:
        click.echo(
            "the backup has no key file beside it: its passwords and custom headers open only "
            "if the store's current key sealed them (else they are lost; the jobs are not)"
        )
    for aside in kept:
        click.echo(f"kept aside: {aside}")


COMMANDS = (store_group,)
