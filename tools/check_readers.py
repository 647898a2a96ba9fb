#!/usr/bin/env python3
"""The reader matrix of schemas/storage.md: reads faccia's vote table with the tools analysts
use — pyarrow (through the deltalake package), pandas, Polars, DuckDB 1.4 LTS with its delta
extension, DuckDB current (2.x, its own Parquet reader over the files the Delta log lists) and
Spark 3.5 (parquet-java, the files the log lists) — each the way storage.md tells its users, and
checks that each gets what `faccia sql` gets: the count, votes per day, votes per hour of the
day in Italy, the sum of faces and of municipality codes, the first and last vote as instants,
and column types of the kind storage.md promises.

The readers run in a time zone that is not Italy's (America/Los_Angeles, set before any reader
starts), so a reader that silently used its own default zone for the hour, or read the `date`
partition as something else, disagrees.

Usage: tools/check_readers.py DATA_DIR FACCIA_BINARY [--readers pyarrow,pandas,...]
       [--duckdb-current PYTHON] [--spark]

`--duckdb-current PYTHON` is an interpreter whose `duckdb` is the current release (CI makes a
virtualenv); `--spark` runs pyspark (a JRE on the path). Exits non-zero on the first
disagreement, naming the reader, the measure, and both values.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Before any reader is imported: every reader's default zone is not Italy's.
os.environ["TZ"] = "America/Los_Angeles"
time.tzset()

ITALY = "Europe/Rome"

# What faccia sql answers; every reader must compute the same, its own way.
FACCIA_QUERIES = {
    "total": "SELECT count(*) AS n FROM votes",
    "days": "SELECT CAST(date AS VARCHAR) AS k, count(*) AS n FROM votes GROUP BY date",
    "hours": "SELECT local_hour(ts) AS k, count(*) AS n FROM votes GROUP BY 1",
    "sums": "SELECT CAST(sum(face) AS BIGINT) AS face, CAST(sum(CAST(municipality AS BIGINT)) AS BIGINT) AS municipality FROM votes",
    "instants": "SELECT CAST(min(ts) AS BIGINT) AS first, CAST(max(ts) AS BIGINT) AS last FROM votes",
}


def expected(faccia: str, data_dir: str) -> dict:
    from check_delta import faccia_sql

    rows = {name: faccia_sql(faccia, data_dir, sql) for name, sql in FACCIA_QUERIES.items()}
    return {
        "total": int(rows["total"][0]["n"]),
        "days": {r["k"]: int(r["n"]) for r in rows["days"]},
        "hours": {int(r["k"]): int(r["n"]) for r in rows["hours"]},
        "sums": {"face": int(rows["sums"][0]["face"]), "municipality": int(rows["sums"][0]["municipality"])},
        "instants": {"first": int(rows["instants"][0]["first"]), "last": int(rows["instants"][0]["last"])},
    }


def live_files(table: str) -> list[str]:
    """The Parquet files the Delta log says make the table (never a glob of the directory)."""
    from deltalake import DeltaTable

    return DeltaTable(table).file_uris()


# --- the readers: each returns the measures and the type it sees for each column -------------

def read_pyarrow(table: str) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    data = DeltaTable(table).to_pyarrow_table()
    local = pc.hour(data["ts"].cast(pa.timestamp(data["ts"].type.unit, tz=ITALY)))
    hours = data.append_column("hour", local).group_by("hour").aggregate([("hour", "count")])
    days = data.group_by("date").aggregate([("date", "count")])
    return {
        "total": data.num_rows,
        "days": {str(d): n for d, n in zip(days["date"].to_pylist(), days["date_count"].to_pylist())},
        "hours": dict(zip(hours["hour"].to_pylist(), hours["hour_count"].to_pylist())),
        "sums": {"face": pc.sum(data["face"]).as_py(), "municipality": pc.sum(data["municipality"].cast("int64")).as_py()},
        "instants": {"first": epoch_ms(pc.min(data["ts"])), "last": epoch_ms(pc.max(data["ts"]))},
        "types": {f.name: str(f.type) for f in data.schema},
    }


def epoch_ms(instant) -> int:
    """A pyarrow timestamp scalar of any unit as milliseconds since the epoch."""
    return int(instant.as_py().timestamp() * 1000)


def read_pandas(table: str) -> dict:
    from deltalake import DeltaTable

    frame = DeltaTable(table).to_pandas()
    hours = frame["ts"].dt.tz_convert(ITALY).dt.hour.value_counts()
    return {
        "total": len(frame),
        "days": {str(d): int(n) for d, n in frame["date"].value_counts().items()},
        "hours": {int(h): int(n) for h, n in hours.items()},
        "sums": {"face": int(frame["face"].sum()), "municipality": int(frame["municipality"].astype("int64").sum())},
        "instants": {"first": int(frame["ts"].min().timestamp() * 1000), "last": int(frame["ts"].max().timestamp() * 1000)},
        "types": {c: str(t) for c, t in frame.dtypes.items()},
    }


def read_polars(table: str) -> dict:
    import polars as pl

    lazy = pl.scan_delta(table)
    hour = pl.col("ts").dt.convert_time_zone(ITALY).dt.hour()
    got = lazy.select(
        pl.len().alias("total"),
        pl.col("face").cast(pl.Int64).sum().alias("face"),
        pl.col("municipality").cast(pl.Int64).sum().alias("municipality"),
        pl.col("ts").min().dt.epoch("ms").alias("first"),
        pl.col("ts").max().dt.epoch("ms").alias("last"),
    ).collect().row(0, named=True)
    return {
        "total": got["total"],
        "days": {str(d): n for d, n in lazy.group_by("date").agg(pl.len()).collect().iter_rows()},
        "hours": {h: n for h, n in lazy.group_by(hour.alias("hour")).agg(pl.len()).collect().iter_rows()},
        "sums": {"face": got["face"], "municipality": got["municipality"]},
        "instants": {"first": got["first"], "last": got["last"]},
        "types": {name: str(dtype) for name, dtype in lazy.collect_schema().items()},
    }


DUCKDB_MEASURES = {
    "total": "SELECT count(*) FROM {src}",
    "days": "SELECT CAST(date AS VARCHAR), count(*) FROM {src} GROUP BY 1",
    "hours": "SELECT hour(timezone('" + ITALY + "', ts)), count(*) FROM {src} GROUP BY 1",
    "sums": "SELECT CAST(sum(face) AS BIGINT), CAST(sum(municipality) AS BIGINT) FROM {src}",
    "instants": "SELECT epoch_ms(min(ts)), epoch_ms(max(ts)) FROM {src}",
}


def duckdb_measures(connection, src: str) -> dict:
    def rows(name):
        return connection.execute(DUCKDB_MEASURES[name].format(src=src)).fetchall()

    sums, instants = rows("sums")[0], rows("instants")[0]
    described = connection.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()
    return {
        "total": rows("total")[0][0],
        "days": {str(d): n for d, n in rows("days")},
        "hours": {int(h): n for h, n in rows("hours")},
        "sums": {"face": sums[0], "municipality": sums[1]},
        "instants": {"first": instants[0], "last": instants[1]},
        "types": {name: kind for name, kind, *_ in described},
    }


def read_duckdb_lts(table: str) -> dict:
    import duckdb
    from check_delta import duckdb_connection

    assert duckdb.__version__.startswith("1.4."), f"DuckDB LTS is 1.4, this is {duckdb.__version__}"
    return duckdb_measures(duckdb_connection(), f"delta_scan('{table}')")


def read_duckdb_files(table: str) -> dict:
    """DuckDB without the delta extension (none ships for its current release offline): its
    own Parquet reader over the files the log lists, the partition from their paths."""
    import duckdb

    files = ", ".join(f"'{f}'" for f in live_files(table))
    connection = duckdb.connect()
    return duckdb_measures(connection, f"read_parquet([{files}], hive_partitioning = true, hive_types = {{'date': DATE}})")


def read_spark(table: str) -> dict:
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = (SparkSession.builder.master("local[2]").appName("faccia-readers")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").config("spark.sql.shuffle.partitions", "4")
             .config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        # storage.md: the session's time zone set to Italy's, the files the log lists.
        spark.conf.set("spark.sql.session.timeZone", ITALY)
        frame = spark.read.option("basePath", table).parquet(*live_files(table))
        got = frame.agg(
            F.count(F.lit(1)).alias("total"),
            F.sum("face").alias("face"),
            F.sum("municipality").alias("municipality"),
            F.min(F.unix_millis("ts")).alias("first"),
            F.max(F.unix_millis("ts")).alias("last"),
        ).collect()[0]
        return {
            "total": got["total"],
            "days": {str(r[0]): r[1] for r in frame.groupBy("date").count().collect()},
            "hours": {r[0]: r[1] for r in frame.groupBy(F.hour("ts")).count().collect()},
            "sums": {"face": got["face"], "municipality": got["municipality"]},
            "instants": {"first": got["first"], "last": got["last"]},
            "types": {f.name: f.dataType.simpleString() for f in frame.schema.fields},
        }
    finally:
        spark.stop()


READERS = {
    "pyarrow": read_pyarrow,
    "pandas": read_pandas,
    "polars": read_polars,
    "duckdb-lts": read_duckdb_lts,
    "duckdb-current": read_duckdb_files,
    "spark": read_spark,
}

# The column types storage.md promises each reader (what it reads without a cast).
TYPES = {
    "pyarrow": {"municipality": "int64", "service": "int32", "ts": "timestamp[us, tz=UTC]", "terminal_ts": "timestamp[us, tz=UTC]", "face": "int8", "channel": "int16",
                "reason": "int16", "terminal": "int64", "misuse": "int16", "date": "date32[day]"},
    "pandas": {"municipality": "int64", "service": "int32", "ts": "datetime64[us, UTC]", "terminal_ts": "datetime64[us, UTC]", "face": "int8", "channel": "int16",
               "reason": "float64", "terminal": "int64", "misuse": "int16", "date": "object"},
    "polars": {"municipality": "Int64", "service": "Int32", "ts": "Datetime(time_unit='us', time_zone='UTC')", "terminal_ts": "Datetime(time_unit='us', time_zone='UTC')", "face": "Int8",
               "channel": "Int16", "reason": "Int16", "terminal": "Int64", "misuse": "Int16", "date": "Date"},
    "duckdb-lts": {"municipality": "BIGINT", "service": "INTEGER", "ts": "TIMESTAMP WITH TIME ZONE", "terminal_ts": "TIMESTAMP WITH TIME ZONE", "face": "TINYINT",
                   "channel": "SMALLINT", "reason": "SMALLINT", "terminal": "BIGINT", "misuse": "SMALLINT", "date": "DATE"},
    "duckdb-current": {"municipality": "UINTEGER", "service": "USMALLINT", "ts": "TIMESTAMP WITH TIME ZONE", "terminal_ts": "TIMESTAMP WITH TIME ZONE", "face": "TINYINT",
                       "channel": "UTINYINT", "reason": "UTINYINT", "terminal": "UINTEGER", "misuse": "UTINYINT", "date": "DATE"},
    "spark": {"municipality": "bigint", "service": "int", "ts": "timestamp", "terminal_ts": "timestamp", "face": "tinyint", "channel": "smallint",
              "reason": "smallint", "terminal": "bigint", "misuse": "smallint", "date": "date"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("faccia")
    parser.add_argument("--readers", default="pyarrow,pandas,polars,duckdb-lts")
    parser.add_argument("--duckdb-current", metavar="PYTHON", help="an interpreter whose duckdb is the current release")
    parser.add_argument("--spark", action="store_true", help="also read with pyspark (needs a JRE)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one reader, print JSON (for another interpreter)
    args = parser.parse_args()
    table = str(Path(args.data_dir).resolve() / "votes")
    if args.one:
        print(json.dumps(READERS[args.one](table)))
        return 0

    want = expected(args.faccia, args.data_dir)
    readers = [r for r in args.readers.split(",") if r]
    if args.spark:
        readers.append("spark")
    got = {}
    failures = 0
    for reader in readers:
        try:
            got[reader] = READERS[reader](table)
        except Exception as error:  # a reader that cannot read the files is the finding
            print(f"{reader}: cannot read the table: {short(str(error))}", file=sys.stderr)
            failures += 1
    if args.duckdb_current:
        out = subprocess.run([args.duckdb_current, __file__, args.data_dir, args.faccia, "--one", "duckdb-current"],
                             capture_output=True, text=True)
        if out.returncode == 0:
            got["duckdb-current"] = json.loads(out.stdout, object_hook=int_keys)
        else:
            print(f"duckdb-current: cannot read the table: {short(out.stderr.strip().splitlines()[-1])}", file=sys.stderr)
            failures += 1
    for reader, measures in got.items():
        wrong = [f"{name} = {short(measures[name])}, faccia sql says {short(value)}" for name, value in want.items() if measures[name] != value]
        wrong += [f"column {column} is {measures['types'].get(column)}, storage.md says {kind}"
                  for column, kind in TYPES[reader].items() if measures["types"].get(column) != kind]
        for line in wrong:
            print(f"{reader}: {line}", file=sys.stderr)
        failures += len(wrong)
        verdict = "agree with faccia sql, types as storage.md says" if not wrong else f"{len(wrong)} disagreements"
        print(f"{reader}: {measures['total']} votes, {len(measures['days'])} days, {len(measures['hours'])} hours, "
              f"sums, first and last instants: {verdict}")
    return 1 if failures else 0


def int_keys(mapping: dict) -> dict:
    """JSON object keys are text; hours are numbers."""
    return {int(k) if k.isdigit() and len(k) <= 2 else k: v for k, v in mapping.items()}


def short(value) -> str:
    text = repr(value)
    return text if len(text) < 300 else text[:300] + "…"


if __name__ == "__main__":
    sys.exit(main())
