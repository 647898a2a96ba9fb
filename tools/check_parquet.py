#!/usr/bin/env python3
"""Reads a faccia vote dataset with pyarrow (a reader faccia did not write) and checks its size.

Usage: tools/check_parquet.py DATA_DIR/votes EXPECTED_VOTES

Prints the row count, the files and the partitions, and exits non-zero if the count differs
from EXPECTED_VOTES (the number of votes faccia acknowledged).
"""
import sys

import pyarrow.dataset as ds


def main() -> int:
    path, expected = sys.argv[1], int(sys.argv[2])
    dataset = ds.dataset(path, format="parquet", partitioning="hive")
    rows = dataset.count_rows()
    dates = sorted({str(fragment.partition_expression) for fragment in dataset.get_fragments()})
    print(f"pyarrow reads {rows} votes in {len(dataset.files)} files over {len(dates)} day partitions; expected {expected}")
    print(f"schema: {dataset.schema}")
    if expected <= 0:
        print("nothing was acknowledged", file=sys.stderr)
        return 1
    if rows != expected:
        print(f"pyarrow counts {rows} votes, faccia acknowledged {expected}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
