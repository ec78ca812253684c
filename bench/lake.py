"""Benchmark of the lake's layouts: file per patient against Delta, before and after compaction.

One synthetic lake of N patients (metadata rows and small slices, no real images) in each
layout, side by side in one run:

- A, file per patient (the old layout, kept here only for the comparison): patients/<pid>.parquet,
  preprocess_runs/<pid>-<attempt>.parquet, slices/site=S/split=X/<pid>.parquet written with
  pyarrow, and the old catalog: views ``read_parquet('<table>/**/*.parquet', ...)``;
- B, Delta, one commit per table and batch of 32 patients, before compaction: written through
  ``storage.lake.Lake`` as the preprocessing job does (slices staged per patient and committed per
  batch, replacing the batch's old rows; ``preprocess_runs`` appended; ``patients`` replaced by
  patient id; the catalog rebuilt after each batch);
- C, the same Delta lake after ``storage.maintenance.compact``.

For each: seconds to write it, data files per table, catalog rebuild (``storage.catalog.refresh``;
A: the old glob views), ``count(*)`` of slices and one patient's slices (a ``?`` parameter)
through DuckDB on ``catalog.duckdb``, and the dashboard's refresh after a commit (``stamp``, a new
``memory_connection``, the sidebar's and Overview's queries; A: the old equivalents, rebuilt
here: a digest of every file, Arrow datasets over the folders). Wall and CPU seconds (this
process, all threads); medians of repeats.
Targets: queries under 0.2 s, rebuild under 2 s, 10x fewer data files (C against A).

    .venv/bin/python -m bench.lake [--patients 2000] [--slices 10] [--batch 32] [--keep DIR]

Writes bench/out/lake.json (lake-<N>.json for another number of patients).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

try:
    from _common import save
except ImportError:  # run as `python -m bench.lake`
    from bench._common import save

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dashboards import names
from gbmmet import constants as C
from storage import catalog, maintenance
from storage.lake import Lake
from storage.schemas import PARTITIONS, SCHEMAS

TABLES = (C.TABLE_PATIENTS, C.TABLE_SLICES, C.TABLE_PREPROCESS_RUNS)
IMAGE_BYTES = 1024
QUERY_TARGET_S = 0.2
REBUILD_TARGET_S = 2.0
FILES_TARGET = 10.0
QUERY_REPEATS = 7
SLOW_REPEATS = 3  # catalog rebuilds and dashboard refreshes
COUNT_SQL = f"select count(*) from {C.TABLE_SLICES}"
LOOKUP_SQL = (f"select slice_index, z_mm, height, width, image from {C.TABLE_SLICES} "
              f"where {C.COL_PATIENT_ID} = ? order by slice_index")
# What the dashboard runs on a refresh after the lake changed (dashboards/data.py: the sidebar's
# patients and runs, the Overview's counts), copied here: those functions need Streamlit's runtime.
DASHBOARD_SQL = (
    ("""select patient_id, site, split, label, age, sex, location, primary_tumor, n_slices, preprocessed_at
        from patients order by site, split, patient_id""", ()),
    ("""select t.run_id, t.mode, t.backbone_id, t.finished_at,
               exists (select 1 from runs e where e.run_id = t.run_id and e.kind = 'evaluate'
                       and e.status = 'ok') as evaluated
        from runs t where t.kind = 'train' and t.status = 'ok' order by t.finished_at desc""", ()),
    ("""select site, split, label, count(*) as patients, coalesce(sum(n_slices), 0)::bigint as slices
        from patients where list_contains(?, site)
        group by site, split, label order by list_position(?, split), site, label""",
     ([C.SITE_INTERNAL, C.SITE_EXTERNAL], list(names.ALL_COHORTS))),
)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn, repeats: int = 1) -> dict:
    """Run ``fn`` ``repeats`` times: median wall and CPU seconds, the first run's wall, the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "first_wall_s": walls[0],
            "repeats": repeats, "result": result}


# -- the synthetic cohort -------------------------------------------------------------------------
def cohort(n: int, seed: int = 0) -> list[dict]:
    """``n`` patients: siteA (train / val / test) and siteB (external), both labels."""
    rng = np.random.default_rng(seed)
    internal = (C.TRAIN,) * 6 + (C.VAL, C.TEST)
    out = []
    for i in range(n):
        external = i % 5 == 4
        out.append({
            C.COL_PATIENT_ID: f"p{hashlib.sha256(str(i).encode()).hexdigest()[:16]}",
            C.COL_SITE: C.SITE_EXTERNAL if external else C.SITE_INTERNAL,
            C.COL_SPLIT: C.EXTERNAL if external else internal[i % len(internal)],
            C.COL_LABEL: C.LABELS[i % 2], C.COL_AGE: int(rng.integers(30, 85)), C.COL_SEX: C.SEXES[i % 2],
            C.COL_LOCATION: C.LOCATIONS[int(i % 3 == 0)],
            C.COL_PRIMARY: None if i % 2 == 0 else C.PRIMARY_TUMORS[i % 5],
            "attempts": 2 if i % 20 == 7 else 1,  # a few patients failed once before they passed
        })
    return out


def patient_tables(p: dict, n_slices: int, rng: np.random.Generator) -> dict[str, pa.Table]:
    """One patient's rows of each table (slices without their partition columns)."""
    now = dt.datetime.now(dt.UTC)
    keys = {c: p[c] for c in (C.COL_PATIENT_ID, C.COL_SITE, C.COL_SPLIT, C.COL_LABEL)}
    patients = {**{c: p[c] for c in SCHEMAS[C.TABLE_PATIENTS].names if c in p}, "n_slices": n_slices,
                "input_hash": "i" * 32, "params_hash": "h" * 16, "preprocessed_at": now}
    runs = [{**keys, "attempt_id": f"20250101T00000{k}-{p[C.COL_PATIENT_ID][1:9]}", "started_at": now,
             "status": "ok" if k == p["attempts"] - 1 else "failed",
             "error_kind": None if k == p["attempts"] - 1 else "registration",
             "total_s": float(rng.uniform(3, 8)), "n_slices": n_slices, "params_hash": "h" * 16,
             "input_hash": "i" * 32, "params": "{}", "versions": "{}"} for k in range(p["attempts"])]
    slices = {C.COL_PATIENT_ID: [p[C.COL_PATIENT_ID]] * n_slices, C.COL_LABEL: [p[C.COL_LABEL]] * n_slices,
              "slice_index": list(range(40, 40 + n_slices)), "z_mm": [float(z) for z in range(n_slices)],
              **{f"roi_{a}_{b}": [10 if b == "min" else 30] * n_slices for a in "ij" for b in ("min", "max")},
              "crop_mm": [64.0] * n_slices, "channels": [2] * n_slices, "height": [16] * n_slices,
              "width": [32] * n_slices, "image": [rng.bytes(IMAGE_BYTES) for _ in range(n_slices)],
              "params_hash": ["h" * 16] * n_slices}
    return {C.TABLE_PATIENTS: pa.Table.from_pylist([patients], SCHEMAS[C.TABLE_PATIENTS]),
            C.TABLE_PREPROCESS_RUNS: pa.Table.from_pylist(runs, SCHEMAS[C.TABLE_PREPROCESS_RUNS]),
            C.TABLE_SLICES: pa.Table.from_pydict(slices, SCHEMAS[C.TABLE_SLICES])}


# -- layout A: one Parquet file per patient, the old catalog --------------------------------------
def write_files(root: Path, pats: list[dict], n_slices: int) -> dict:
    """Layout A, as the old ``lake.write`` did: one file per patient (and per attempt)."""
    rng, t0 = np.random.default_rng(1), time.perf_counter()
    for k, p in enumerate(pats):
        t = patient_tables(p, n_slices, rng)
        pid = p[C.COL_PATIENT_ID]
        folder = root / C.TABLE_SLICES / f"{C.COL_SITE}={p[C.COL_SITE]}" / f"{C.COL_SPLIT}={p[C.COL_SPLIT]}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(t[C.TABLE_SLICES], folder / f"{pid}.parquet", compression="zstd")
        runs = t[C.TABLE_PREPROCESS_RUNS]
        (root / C.TABLE_PREPROCESS_RUNS).mkdir(parents=True, exist_ok=True)
        for i in range(runs.num_rows):
            pq.write_table(runs.slice(i, 1), root / C.TABLE_PREPROCESS_RUNS / f"{pid}-{runs['attempt_id'][i]}.parquet",
                           compression="zstd")
        (root / C.TABLE_PATIENTS).mkdir(parents=True, exist_ok=True)
        pq.write_table(t[C.TABLE_PATIENTS], root / C.TABLE_PATIENTS / f"{pid}.parquet", compression="zstd")
        _tick("A", k + 1, len(pats), t0)
    return {}


def _old_has_files(root: Path, name: str) -> bool:
    return (root / name).is_dir() and any((root / name).rglob("*.parquet"))


def refresh_files(root: Path) -> Path:
    """The old catalog: one view per table over a glob of its folder, built atomically."""
    final, tmp = root / catalog.CATALOG_FILE, root / f".{catalog.CATALOG_FILE}.tmp"
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        empty = Lake(root / ".no-such-lake")  # view_sql of a table with no files: its typed empty view
        for name in SCHEMAS:
            if _old_has_files(root, name):
                hive = "true" if PARTITIONS.get(name) else "false"
                glob = (root / name / "**" / "*.parquet").as_posix().replace("'", "''")
                con.execute(f"CREATE OR REPLACE VIEW \"{name}\" AS SELECT * FROM read_parquet('{glob}', "
                            f"hive_partitioning = {hive}, union_by_name = true)")
            else:
                con.execute(catalog.view_sql(empty, name))
    finally:
        con.close()
    os.replace(tmp, final)
    return final


def stamp_files(root: Path) -> str:
    """The old stamp: a digest of every table's files (names, sizes, modification times)."""
    fs, h = pafs.LocalFileSystem(), hashlib.sha256()
    for name in SCHEMAS:
        if (root / name).is_dir():
            for i in fs.get_file_info(pafs.FileSelector(str(root / name), recursive=True)):
                h.update(f"{i.path}\0{i.size}\0{i.mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def memory_connection_files(root: Path) -> duckdb.DuckDBPyConnection:
    """The old in-memory views: an Arrow dataset over each table's folder."""
    con = duckdb.connect(":memory:")
    empty = Lake(root / ".no-such-lake")
    for name in SCHEMAS:
        if _old_has_files(root, name):
            data = ds.dataset(str(root / name), format="parquet",
                              partitioning="hive" if PARTITIONS.get(name) else None)
            con.register(f"_arrow_{name}", data)
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "_arrow_{name}"')
        else:
            con.execute(catalog.view_sql(empty, name))
    return con


# -- layout B: Delta, one commit per batch, as the preprocessing job writes --------------------
WRITE_STEPS = ("stage slices", "commit slices", "append preprocess_runs", "replace patients", "catalog refresh")


@contextmanager
def _step(spent: dict, key: str):
    """Add the block's wall and CPU seconds to ``spent[key]``; keep the first and last batch's wall."""
    w, c = time.perf_counter(), time.process_time()
    yield
    s = spent[key]
    s["wall_s"] += time.perf_counter() - w
    s["cpu_s"] += time.process_time() - c
    s["batches"].append(time.perf_counter() - w)


def write_delta(root: Path, pats: list[dict], n_slices: int, batch: int) -> dict:
    """Layout B through ``Lake``: per patient a staged slices file (the worker's part); per batch
    of ``batch`` patients one commit of the slices (replacing the batch's old rows), one append of
    the attempts, one replace of the patients' rows and a catalog rebuild (the driver's,
    ``pipelines.preprocess.Batches.flush``). Seconds per step: in all, and its first and last batch."""
    lake, rng, t0 = Lake(root), np.random.default_rng(1), time.perf_counter()
    spent = {k: {"wall_s": 0.0, "cpu_s": 0.0, "batches": []} for k in WRITE_STEPS}
    for start in range(0, len(pats), batch):
        group = pats[start:start + batch]
        tables = [patient_tables(p, n_slices, rng) for p in group]
        ids = [p[C.COL_PATIENT_ID] for p in group]
        with _step(spent, "stage slices"):
            staged = [lake.stage(C.TABLE_SLICES, t[C.TABLE_SLICES],
                                 {C.COL_SITE: p[C.COL_SITE], C.COL_SPLIT: p[C.COL_SPLIT]})
                      for p, t in zip(group, tables, strict=True)]
        with _step(spent, "commit slices"):
            lake.commit(C.TABLE_SLICES, staged, where={C.COL_PATIENT_ID: ids})
        with _step(spent, "append preprocess_runs"):
            lake.append(C.TABLE_PREPROCESS_RUNS, pa.concat_tables([t[C.TABLE_PREPROCESS_RUNS] for t in tables]))
        with _step(spent, "replace patients"):
            lake.replace(C.TABLE_PATIENTS, pa.concat_tables([t[C.TABLE_PATIENTS] for t in tables]),
                         where={C.COL_PATIENT_ID: ids})
        with _step(spent, "catalog refresh"):
            catalog.refresh(lake)
        _tick("B", start + len(group), len(pats), t0, step=len(group))
    for s in spent.values():
        b = s.pop("batches")
        s.update(first_batch_wall_s=b[0], last_batch_wall_s=b[-1])
    return spent


def compact(root: Path) -> dict:
    """Layout C: ``storage.maintenance.compact`` of the three tables (it rebuilds the catalog too)."""
    return maintenance.compact(Lake(root), names=list(TABLES))


def _tick(layout: str, done: int, n: int, t0: float, step: int = 1) -> None:
    """Progress on stderr each time ``done`` patients pass another tenth of ``n``."""
    tenth = max(1, n // 10)
    if done // tenth != (done - step) // tenth or done == n:
        progress(f"  {layout}: {done:>6,}/{n:,} patients written, {time.perf_counter() - t0:6.1f} s")


# -- measurements ---------------------------------------------------------------------------------
def files_per_table(root: Path, delta: bool) -> dict[str, int]:
    """Data files each table reads: of the current version (Delta), or in the folder (A)."""
    if delta:
        lake = Lake(root)
        return {name: len(lake.files(name)) for name in TABLES}
    return {name: sum(1 for _ in (root / name).rglob("*.parquet")) for name in TABLES}


def on_disk(root: Path) -> dict:
    files = [f for name in TABLES for f in (root / name).rglob("*.parquet")]
    return {"parquet_files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def queries(path: Path, ids: list[str]) -> dict:
    """``count(*)`` of slices and one patient's slices (a different one each time) on the catalog."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        count = timed(lambda: con.execute(COUNT_SQL).fetchone()[0], QUERY_REPEATS)
        it = itertools.cycle(ids)
        lookup = timed(lambda: len(con.execute(LOOKUP_SQL, [next(it)]).fetchall()), QUERY_REPEATS)
    finally:
        con.close()
    return {"count": count, "lookup": lookup}


def dashboard_refresh(stamp_fn, connect_fn) -> int:
    """What the dashboard does when the lake changed: the stamp, a new connection, its queries."""
    stamp_fn()
    con = connect_fn()
    try:
        return sum(len(con.execute(sql, list(params)).fetchall()) for sql, params in DASHBOARD_SQL)
    finally:
        con.close()


def measure(root: Path, delta: bool, ids: list[str], expected: int) -> dict:
    """Every measurement of one layout."""
    if delta:
        lake = Lake(root)
        rebuild = timed(lambda: catalog.refresh(lake), SLOW_REPEATS)
        dash = timed(lambda: dashboard_refresh(lambda: catalog.stamp(lake), lambda: catalog.memory_connection(lake)),
                     SLOW_REPEATS)
    else:
        rebuild = timed(lambda: refresh_files(root), SLOW_REPEATS)
        dash = timed(lambda: dashboard_refresh(lambda: stamp_files(root), lambda: memory_connection_files(root)),
                     SLOW_REPEATS)
    q = queries(rebuild.pop("result"), ids)
    if q["count"]["result"] != expected:
        raise SystemExit(f"{root}: count(*) of slices is {q['count']['result']}, not {expected}")
    dash.pop("result")
    return {"files": files_per_table(root, delta), "on_disk": on_disk(root), "rebuild": rebuild,
            "count": q["count"], "lookup": q["lookup"], "dashboard": dash}


# -- the report -----------------------------------------------------------------------------------
LAYOUTS = (("A", "A file per patient"), ("B", "B Delta, before compact"), ("C", "C Delta, compacted"))


def _row(label: str, cells: list[str], ratio: str = "") -> str:
    return f"{label:<30}" + "".join(f"{c:>26}" for c in cells) + f"{ratio:>9}"


def _t(m: dict) -> str:
    return f"{m['wall_s']:9.3f} {m['cpu_s']:9.3f}"


def report(res: dict, args) -> None:
    r = res["layouts"]
    print(f"lake layouts, {args.patients:,} patients x {args.slices} slices ({IMAGE_BYTES} B images), "
          f"Delta commits per {args.batch} patients; seconds: wall / CPU of this process; "
          f"queries median of {QUERY_REPEATS}, rebuild and dashboard median of {SLOW_REPEATS}")
    print(_row("", [name for _, name in LAYOUTS], "A/C"))
    print(_row("", ["wall s     cpu s"] * 3))
    print(_row("write the lake", [_t(r[k]["write"]) for k, _ in LAYOUTS[:2]] + [""]))
    print(_row("  compact (B -> C)", ["", "", _t(r["C"]["compact"])]))
    total = {k: sum(r[k]["files"].values()) for k, _ in LAYOUTS}
    for name in TABLES:
        f = {k: r[k]["files"][name] for k, _ in LAYOUTS}
        print(_row(f"data files: {name}", [f"{f[k]:,}" for k, _ in LAYOUTS], f"{f['A'] / max(f['C'], 1):.0f}x"))
    print(_row("data files: the three", [f"{total[k]:,}" for k, _ in LAYOUTS],
               f"{total['A'] / max(total['C'], 1):.0f}x"))
    print(_row("  files on disk (MB)", [f"{r[k]['on_disk']['parquet_files']:,} "
                                          f"({r[k]['on_disk']['bytes'] / 1e6:.1f})" for k, _ in LAYOUTS]))
    for key, label in (("rebuild", "catalog rebuild"), ("count", "count(*) from slices"),
                       ("lookup", "one patient's slices (?)"), ("dashboard", "dashboard refresh")):
        print(_row(label, [_t(r[k][key]) for k, _ in LAYOUTS],
                   f"{r['A'][key]['wall_s'] / r['C'][key]['wall_s']:.1f}x"))
    print(_row("  first run: count / one patient", [f"{r[k]['count']['first_wall_s']:.3f} / "
                                                  f"{r[k]['lookup']['first_wall_s']:.3f}" for k, _ in LAYOUTS]))
    print(f"write of B, per step: wall / CPU s in all ({-(-args.patients // args.batch)} batches), "
          "wall s of the first and the last batch")
    for k, v in r["B"]["write_parts"].items():
        print(f"  {k:<26}{_t(v)}{v['first_batch_wall_s']:9.3f}{v['last_batch_wall_s']:9.3f}")
    print("write: synthetic rows included (the same in A and B); B's includes its catalog refresh after every "
          "batch, as the job does. compact (B -> C): storage.maintenance.compact, its catalog rebuild included. "
          "files on disk: .parquet files in the tables' folders (C keeps B's until a vacuum)")
    print("targets:" + "".join(f"{k:>10}" for k, _ in LAYOUTS))
    for label, key in ((f"queries < {QUERY_TARGET_S * 1000:.0f} ms", "queries"),
                       (f"rebuild < {REBUILD_TARGET_S:.0f} s", "rebuild"),
                       (f"{FILES_TARGET:.0f}x fewer files than A", "files")):
        print(f"  {label:<26}" + "".join(f"{_met(res['targets'][k][key]):>10}" for k, _ in LAYOUTS))


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "NOT met")


def targets(r: dict) -> dict:
    total_a = sum(r["A"]["files"].values())
    out = {}
    for k, _ in LAYOUTS:
        m = r[k]
        out[k] = {"queries": max(m["count"]["wall_s"], m["lookup"]["wall_s"]) < QUERY_TARGET_S,
                  "rebuild": m["rebuild"]["wall_s"] < REBUILD_TARGET_S,
                  "files": None if k == "A" else total_a >= FILES_TARGET * sum(m["files"].values())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=2000, help="synthetic patients")
    ap.add_argument("--slices", type=int, default=10, help="slices per patient")
    ap.add_argument("--batch", type=int, default=32, help="patients per Delta commit (layout B)")
    ap.add_argument("--keep", help="write the lakes into this new folder and keep them "
                                   "(default: a temporary one, removed)")
    args = ap.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gbmmet-bench-lake-"))
    if (tmp / "A").exists() or (tmp / "B").exists():
        sys.exit(f"{tmp} already holds lakes of this benchmark (A, B): give --keep an empty or new folder")
    tmp.mkdir(parents=True, exist_ok=True)
    pats = cohort(args.patients)
    expected = args.patients * args.slices
    ids = [p[C.COL_PATIENT_ID] for p in pats[:: max(1, len(pats) // QUERY_REPEATS)]]
    r: dict[str, dict] = {}
    try:
        progress(f"writing layout A (file per patient) under {tmp / 'A'}")
        r["A"] = {"write": timed(lambda: write_files(tmp / "A", pats, args.slices))}
        progress("measuring A")
        r["A"].update(measure(tmp / "A", False, ids, expected))
        progress(f"writing layout B (Delta, a commit per {args.batch} patients) under {tmp / 'B'}")
        r["B"] = {"write": timed(lambda: write_delta(tmp / "B", pats, args.slices, args.batch))}
        r["B"]["write_parts"] = r["B"]["write"].pop("result")
        progress("measuring B")
        r["B"].update(measure(tmp / "B", True, ids, expected))
        progress("compacting B into C")
        c = timed(lambda: compact(tmp / "B"))
        r["C"] = {"compact": c, "compact_result": c["result"]}
        progress("measuring C")
        r["C"].update(measure(tmp / "B", True, ids, expected))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    for k in r:
        for m in r[k].values():
            if isinstance(m, dict):
                m.pop("result", None)
    res = {"patients": args.patients, "slices_per_patient": args.slices, "batch": args.batch,
           "image_bytes": IMAGE_BYTES, "layouts": r}
    res["targets"] = targets(r)
    report(res, args)
    path = save("lake" if args.patients == 2000 else f"lake-{args.patients}", res)
    print(f"written {path}")


if __name__ == "__main__":
    main()
