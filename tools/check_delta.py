#!/usr/bin/env python3
"""Reads faccia's three Delta tables with three readers faccia did not write — the deltalake
package (pyarrow), Polars (scan_delta) and DuckDB 1.4 with its delta extension — and checks
that each gets the counts `faccia sql` gives.

Usage: tools/check_delta.py DATA_DIR FACCIA_BINARY

For each table: rows (votes) or summed counts (rollups), votes per day, and the votes of the
most-voted municipality (a filter on an unsigned column the table declares as a wider signed
one). Exits non-zero on the first disagreement, naming the reader, the table and both numbers.
"""
import csv
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
from deltalake import DeltaTable


def faccia_sql(faccia: str, data_dir: str, sql: str) -> list[dict]:
    out = subprocess.run([faccia, "sql", "--data-dir", data_dir, "--format", "csv", sql], check=True, capture_output=True, text=True)
    return list(csv.DictReader(io.StringIO(out.stdout)))


def duckdb_connection() -> "duckdb.DuckDBPyConnection":
    connection = duckdb.connect()
    # Offline: the extension the duckdb-ext-delta wheel ships (pinned to duckdb 1.4.4); otherwise
    # DuckDB's own repository.
    spec = importlib.util.find_spec("duckdb_ext")
    bundled = [Path(p) / "extensions" for p in (spec.submodule_search_locations if spec else [])]
    bundled = [p for p in bundled if p.is_dir()]
    if bundled:
        connection.execute(f"SET extension_directory = '{bundled[0]}'")
    else:
        connection.execute("INSTALL delta")
    connection.execute("LOAD delta")
    return connection


def main() -> int:
    data_dir, faccia = sys.argv[1], sys.argv[2]
    root = Path(data_dir).resolve()
    failures = 0
    connection = duckdb_connection()
    for table, measure in [("votes", None), ("vote_counts", "votes"), ("municipality_service_counts", "votes")]:
        path = str(root / table)
        total_sql = f"CAST(sum({measure}) AS BIGINT)" if measure else "count(*)"
        expected = {
            "total": int(faccia_sql(faccia, data_dir, f"SELECT {total_sql} AS n FROM {table}")[0]["n"] or 0),
            "days": {r["date"]: int(r["n"]) for r in faccia_sql(faccia, data_dir, f"SELECT CAST(date AS VARCHAR) AS date, {total_sql} AS n FROM {table} GROUP BY date")},
        }
        if table != "vote_counts":
            top = faccia_sql(faccia, data_dir, f"SELECT municipality, {total_sql} AS n FROM {table} GROUP BY municipality ORDER BY n DESC, municipality LIMIT 1")
            expected["municipality"] = (int(top[0]["municipality"]), int(top[0]["n"])) if top else None

        delta = DeltaTable(path)
        frame = pl.from_arrow(delta.to_pyarrow_table())
        lazy = pl.scan_delta(path)
        total_expr = pl.col(measure).sum() if measure else pl.len()
        got = {
            "deltalake": {
                "total": int(frame.select(total_expr).item() or 0),
                "days": {str(d): int(n) for d, n in frame.group_by("date").agg(total_expr.alias("n")).iter_rows()},
            },
            "polars": {
                "total": int(lazy.select(total_expr).collect().item() or 0),
                "days": {str(d): int(n) for d, n in lazy.group_by("date").agg(total_expr.alias("n")).collect().iter_rows()},
            },
            "duckdb": {
                "total": int(connection.execute(f"SELECT {total_sql} FROM delta_scan('{path}')").fetchone()[0] or 0),
                "days": {str(d): int(n) for d, n in connection.execute(f"SELECT date, {total_sql} FROM delta_scan('{path}') GROUP BY date").fetchall()},
            },
        }
        if expected.get("municipality"):
            code, n = expected["municipality"]
            got["deltalake"]["municipality"] = (code, int(frame.filter(pl.col("municipality") == code).select(total_expr).item()))
            got["polars"]["municipality"] = (code, int(lazy.filter(pl.col("municipality") == code).select(total_expr).collect().item()))
            row = connection.execute(f"SELECT {total_sql} FROM delta_scan('{path}') WHERE municipality = {code}").fetchone()
            got["duckdb"]["municipality"] = (code, int(row[0]))
        for reader, counts in got.items():
            for key, value in counts.items():
                if value != expected[key]:
                    print(f"{reader} reads {table} {key} = {value}, faccia sql says {expected[key]}", file=sys.stderr)
                    failures += 1
        print(f"{table}: version {delta.version()}, {len(delta.file_uris())} files, {expected['total']} "
              f"{'votes' if not measure else 'counted votes'} over {len(expected['days'])} days: deltalake, polars and duckdb agree with faccia sql")
    if failures:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
