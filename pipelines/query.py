"""``gbmmet query``: SQL over the lake's tables, printed or saved.

Read-only (``storage.catalog.query``): one SELECT over the lake's views; it writes nothing to the
lake, reads no file but the tables, and works on a lake this user cannot write.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gbmmet.errors import ConfigError, LakeError

FORMATS = ("table", "csv", "parquet")


def pinned_versions(lake, as_of: str | None, versions: list[str]) -> dict[str, int | None] | None:
    """The table versions a query answers from: those the run ``as_of`` (``RUN`` or ``RUN/KIND``)
    recorded as read, then ``versions`` (``TABLE=V``) over them; None (latest) for neither.

    Raises:
        ConfigError: an unknown run or table, or a version that is not a number.
    """
    from storage import queries
    from storage.schemas import SCHEMAS

    if as_of is None and not versions:
        return None
    pins: dict[str, int | None] = {}
    if as_of is not None:
        run, _, kind = as_of.partition("/")
        pins.update(queries.run_versions(lake, run, kind or None))
    for item in versions:
        table, sep, v = item.partition("=")
        if not sep or table not in SCHEMAS or not v.strip().isdigit():
            raise ConfigError(f"--version {item!r}: give TABLE=VERSION, TABLE one of {sorted(SCHEMAS)} "
                              f"(`gbmmet lake stats` lists each table's versions)")
        pins[table] = int(v)
    return pins


def run_query(sql: str, lake_root: str, *, params: list[str], fmt: str = "table", out: Path | None = None,
              limit: int = 50, as_of: str | None = None, versions: list[str] = ()) -> None:
    import duckdb

    from storage import catalog
    from storage.lake import Lake

    if fmt not in FORMATS:
        raise ConfigError(f"The 'format' parameter must be one of {FORMATS}. Got {fmt!r} instead.")
    if fmt == "parquet" and out is None:
        raise ConfigError("--format parquet needs --out FILE")
    lake = Lake(lake_root)
    if lake.local_root is not None and lake.local_root.is_file():
        raise LakeError(f"the lake {lake_root} is a file, not a lake folder: give --lake the folder "
                        f"`gbmmet preprocess` wrote")
    if lake.local_root is not None and not lake.local_root.is_dir():
        raise ConfigError(f"no lake at {lake_root}: run `gbmmet preprocess --lake {lake_root}` first")
    if out is not None and lake.local_root is not None and out.resolve().is_relative_to(lake.local_root):
        raise ConfigError(f"--out {out} is inside the lake {lake_root}: gbmmet query is read-only; "
                          f"write its output elsewhere")
    try:
        table = catalog.query(lake, sql, params, versions=pinned_versions(lake, as_of, list(versions)))
    except duckdb.Error as exc:
        raise ConfigError(f"query failed: {exc}") from None
    if fmt == "table":
        from rich.console import Console
        from rich.table import Table

        view = Table(show_lines=False)
        for name in table.column_names:
            view.add_column(name)
        for row in table.slice(0, limit).to_pylist():
            view.add_row(*[_show(v) for v in row.values()])
        console = Console()
        console.print(view)
        if table.num_rows > limit:
            console.print(f"({table.num_rows} rows, {limit} shown; --limit to see more, --format csv for all)")
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        table = table.select([n for n, t in zip(table.column_names, table.schema.types, strict=True)
                              if str(t) not in ("binary", "large_binary")])
        if out is None:
            pacsv.write_csv(table, sys.stdout.buffer)
        else:
            pacsv.write_csv(table, str(out))
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, str(out))


def _show(value) -> str:
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
