"""``gbmmet lake``: maintenance of the lake's Delta tables (``storage.maintenance``).

``stats`` shows every table's version, files, size, rows and log entries; ``compact`` rewrites
small data files into large ones; ``vacuum`` deletes the files and log entries no version younger
than ``--retain-hours`` needs (ending time travel before it); ``forget`` erases one patient's
rows; ``migrate`` converts a lake of the old file-per-patient layout once. Registered in
``pipelines.cli`` as ``app.add_typer(lake_app, name="lake")``.
"""

from __future__ import annotations

import functools
from typing import Annotated

import typer

lake_app = typer.Typer(
    help="Lake maintenance: table sizes, compaction, vacuum, erasing a patient, migrating an old lake.",
    no_args_is_help=True,
    add_completion=False,
)

LakeOpt = Annotated[str, typer.Option(help="Lake folder or URI (s3://...).")]
TableOpt = Annotated[list[str] | None, typer.Option("--table", help="Only this table (repeatable; default: all).")]
RETAIN_HELP = ("Keep every version (and its files) younger than this many hours; 0 keeps only each table's "
               "latest version. Versions older than this can no longer be read (--as-of a run that read them).")


def _user_errors(fn):
    """``pipelines.cli``'s handling of gbmmet's errors (one line, exit code 2), imported when the
    command runs: ``pipelines.cli`` imports this module to register ``lake_app``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pipelines.cli import _user_errors as handle

        return handle(fn)(*args, **kwargs)

    return wrapper


def _open(root: str):
    """The lake at ``root``; ConfigError where a local one does not exist (nothing to maintain)."""
    from gbmmet.errors import ConfigError, LakeError
    from storage.lake import Lake

    lake = Lake(root)
    if lake.local_root is not None and lake.local_root.is_file():
        raise LakeError(f"the lake {root} is a file, not a lake folder: give --lake the folder the jobs wrote")
    if lake.local_root is not None and not lake.local_root.is_dir():
        raise ConfigError(f"no lake at {root}: give --lake the folder the jobs wrote")
    return lake


def _table(title: str, columns: list[str], rows: list[list]):
    """A rich table: first column left, the others (numbers) right."""
    from rich.table import Table

    view = Table(title=title)
    for i, col in enumerate(columns):
        view.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        view.add_row(*["" if v is None else str(v) for v in row])
    return view


def _print(*items) -> None:
    from rich.console import Console

    console = Console(width=160)
    for item in items:
        console.print(item)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


@lake_app.command("stats")
@_user_errors
def stats_cmd(lake: LakeOpt = "lake") -> None:
    """Every table's latest version, data files, size, rows and log entries."""
    from storage.maintenance import stats

    rows = [[s.name, s.version, s.files, _mb(s.bytes), s.rows, s.log_entries] for s in stats(_open(lake))]
    _print(_table(f"lake {lake}", ["table", "version", "files", "MB", "rows", "log entries"], rows))


@lake_app.command("compact")
@_user_errors
def compact_cmd(
    lake: LakeOpt = "lake",
    table: TableOpt = None,
    target_mb: Annotated[int, typer.Option(help="Size of the data files written, in MB.")] = 256,
) -> None:
    """Rewrite each table's small data files into files of about --target-mb (one commit per
    table, rows unchanged); the old files stay for older versions until `gbmmet lake vacuum`."""
    from storage.maintenance import compact

    done = compact(_open(lake), table, target_mb * 1024 * 1024)
    rows = [[name, r["files_before"], r["files_after"], _mb(r["bytes_before"]), _mb(r["bytes_after"])]
            for name, r in done.items()]
    _print(_table(f"compact {lake} (target {target_mb} MB)", ["table", "files before", "files after",
                                                              "MB before", "MB after"], rows))
    if any(r["files_before"] != r["files_after"] for r in done.values()):
        typer.echo(f"the replaced files stay for older versions: `gbmmet lake vacuum --lake {lake}` removes them "
                   f"once older than --retain-hours")


@lake_app.command("vacuum")
@_user_errors
def vacuum_cmd(
    lake: LakeOpt = "lake",
    retain_hours: Annotated[int, typer.Option(help=RETAIN_HELP)] = 168,
) -> None:
    """Delete the data files and log entries no version younger than --retain-hours needs, files
    of jobs killed before their commit, and migration backups as old. Run it while no job runs."""
    from storage.maintenance import vacuum

    done = vacuum(_open(lake), retain_hours)
    rows = [[place, r["files_removed"], r["log_entries_removed"]] for place, r in done.items()
            if r["files_removed"] or r["log_entries_removed"]]
    if rows:
        _print(_table(f"vacuum {lake} (versions older than {retain_hours} h)", ["table", "files removed",
                                                                             "log entries removed"], rows))
    else:
        typer.echo(f"vacuum {lake}: nothing older than {retain_hours} h to remove")
    typer.echo(f"versions older than {retain_hours} h can no longer be read (time travel, `gbmmet query --as-of` "
               f"of runs that read them)")


@lake_app.command("forget")
@_user_errors
def forget_cmd(
    site: Annotated[str, typer.Option(help="The patient's site, as in the site's manifest.")],
    patient: Annotated[str, typer.Option(help="The patient's raw id, as in the site's manifest (only hashed "
                                              "with the lake's key, never written).")],
    lake: LakeOpt = "lake",
) -> None:
    """Erase one patient: delete their rows from every table (one commit per table). Older
    versions keep them until `gbmmet lake vacuum --retain-hours 0`."""
    from storage.maintenance import forget

    r = forget(_open(lake), site, patient)
    rows = [[name, n] for name, n in r.removed.items()]
    _print(_table(f"forget: the patient of site {site} (pseudonym {r.pseudonym})", ["table", "rows removed"], rows))
    typer.echo(f"removed {sum(r.removed.values())} rows from the latest version of every table"
               + (f"; catalog rebuilt ({r.catalog})" if r.catalog else ""))
    typer.secho(f"older versions' files and the log still hold them: run `gbmmet lake vacuum --lake {lake} "
                f"--retain-hours 0` (when no job runs) to erase them from the lake's files", fg="yellow")
    for backup in r.backups:
        typer.secho(f"the old-layout backup {backup} may hold them too: vacuum --retain-hours 0 deletes it",
                    fg="yellow")


@lake_app.command("migrate")
@_user_errors
def migrate_cmd(lake: LakeOpt = "lake") -> None:
    """Convert a lake of the old file-per-patient layout into Delta tables, once; the old files
    are moved into <lake>/.migrated-<time>/."""
    from storage.maintenance import migrate

    opened = _open(lake)
    m = migrate(opened)
    if m.backup is None:
        typer.echo(f"migrate {lake}: every table is a Delta table already; nothing to do")
        return
    rows = [[name, t["old_files"], t["rows"]] for name, t in m.tables.items()]
    _print(_table(f"migrate {lake}" + (" (resumed)" if m.resumed else ""), ["table", "old files", "rows"], rows))
    typer.echo(f"the old files were moved to {opened.child_uri(m.backup)}: check the lake (`gbmmet lake stats`), "
               f"then delete that folder, or let `gbmmet lake vacuum` delete it once older than --retain-hours")
