#!/usr/bin/env python3
"""Bytes per vote of one vote file rewritten with other Parquet encodings (pyarrow), against the
file as faccia wrote it: the measurement behind the choice of encodings in src/storage/parquet.rs.

Usage: tools/parquet_encodings.py DATA_DIR/votes/date=YYYY-MM-DD/part-….parquet
"""
import io
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DICTIONARY = ["municipality", "service", "face", "channel", "reason", "terminal", "misuse"]


def main():
    path = sys.argv[1]
    table = pq.read_table(path)
    rows = table.num_rows

    def size(data, **options):
        buffer = io.BytesIO()
        pq.write_table(data, buffer, row_group_size=1 << 20, compression="zstd", **options)
        return buffer.tell() / rows

    print(f"{rows} votes; as written by faccia: {os.path.getsize(path) / rows:.2f} bytes per vote")
    print(f"every column dictionary-encoded (the earlier writer): {size(table, compression_level=3):.2f}")
    for level in (3, 9, 15):
        delta = size(table, compression_level=level, use_dictionary=DICTIONARY, column_encoding={"ts": "DELTA_BINARY_PACKED"})
        print(f"ts delta-binary-packed, zstd {level}: {delta:.2f}")
    split = size(table, compression_level=3, use_dictionary=DICTIONARY, column_encoding={"ts": "BYTE_STREAM_SPLIT"})
    print(f"ts byte-stream-split, zstd 3: {split:.2f}")
    seconds = table.set_column(2, "ts", pc.cast(pc.divide(pc.cast(table["ts"], pa.int64()), 1000), pa.int64()))
    print(f"ts in seconds instead of milliseconds (not done: it drops data), delta: "
          f"{size(seconds, compression_level=3, use_dictionary=DICTIONARY, column_encoding={'ts': 'DELTA_BINARY_PACKED'}):.2f}")


if __name__ == "__main__":
    main()
