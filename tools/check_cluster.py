#!/usr/bin/env python3
"""The analyst queries on a running `faccia cluster` answer like `faccia sql` on one machine.

Usage: tools/check_cluster.py --data-dir DIR --faccia target/debug/faccia --cluster HOST:PORT
       [--repeat N]

For each of the five analyst queries of tools/bench_sql.py, and `count(*)` over the votes:
`faccia sql --format csv` here and with `--cluster`, rows compared (sorted; numbers to nine
significant digits, since partial sums add up in another order on the cluster). With --repeat,
also the median time of each side measured inside faccia (`--repeat`: after the context is
open), as a table: what BENCHMARKS.md quotes. Exits non-zero on the first difference.
"""
import argparse
import csv
import io
import statistics
import subprocess
import sys

from bench_sql import QUERIES


def run(args, sql, cluster=None, repeat=1):
    """(rows, median ms) of `faccia sql` here, or on the cluster at `cluster`."""
    command = [args.faccia, "sql", "--data-dir", args.data_dir, "--format", "csv", "--repeat", str(repeat)]
    if cluster:
        command += ["--cluster", cluster, "--partitions", str(args.partitions)]
    proc = subprocess.run(command + [sql], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"faccia sql {'--cluster ' + cluster if cluster else ''} failed on {sql!r}:\n{proc.stderr}")
    # The first run warms the caches: the median is of the others.
    runs = [float(x) for x in proc.stderr.split("runs ")[-1].split()][1:] if repeat > 1 else [float("nan")]
    return list(csv.reader(io.StringIO(proc.stdout)))[1:], statistics.median(runs)


def comparable(rows):
    def field(value):
        try:
            return f"{float(value):.9e}" if "." in value else value
        except ValueError:
            return value

    return sorted(tuple(field(v) for v in row) for row in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--faccia", required=True)
    parser.add_argument("--cluster", required=True, help="the scheduler's HOST:PORT")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    days, _ = run(args, "SELECT max(date) FROM votes")
    end = days[0][0]
    busiest, _ = run(args, f"SELECT municipality FROM votes WHERE date = DATE '{end}' GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
    params = {"end": end, "municipality": busiest[0][0], "day": end}
    queries = [(name, sql.format(**params)) for name, sql, *_ in QUERIES]
    queries.append(("every vote", "SELECT count(*), sum(face), sum(municipality) FROM votes"))
    timed = args.repeat > 1
    print("| query | rows | here, ms | cluster, ms | cluster / here |" if timed else "| query | rows |")
    print("|---|---:|---:|---:|---:|" if timed else "|---|---:|")
    for name, sql in queries:
        repeat = args.repeat + 1 if args.repeat > 1 else 1
        here, here_ms = run(args, sql, repeat=repeat)
        there, there_ms = run(args, sql, cluster=args.cluster, repeat=repeat)
        if comparable(here) != comparable(there):
            sys.exit(f"{name}: the cluster answers differently\nhere:    {here[:5]}\ncluster: {there[:5]}")
        if timed:
            print(f"| {name} | {len(here)} | {here_ms:.1f} | {there_ms:.1f} | {there_ms / here_ms:.2f} |")
        else:
            print(f"| {name} | {len(here)} |")
    print(f"the cluster at {args.cluster} answered {len(queries)} queries like faccia sql")


if __name__ == "__main__":
    main()
