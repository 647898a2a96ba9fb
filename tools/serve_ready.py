#!/usr/bin/env python3
"""How long `faccia serve` takes from its start to "faccia serving" (recovery, the tables opened,
the listeners bound) on an existing data directory, whole process.

Usage: tools/serve_ready.py --faccia target/release/faccia --data-dir DIR [--repeat 5]

Each run starts the server on loopback with ports the system picks, waits for the line
"faccia serving" on its log, stops it with SIGTERM and waits for it to exit. Prints each run and
the median, in milliseconds.
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

START_TIMEOUT_S = 120


def ready_ms(faccia, data_dir):
    started = time.perf_counter()
    env = dict(os.environ, RUST_LOG="info")
    server = subprocess.Popen(
        [faccia, "serve", "--data-dir", data_dir, "--listen", "127.0.0.1:0", "--flight-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        for line in server.stderr:
            if "faccia serving" in line:
                return (time.perf_counter() - started) * 1000
            if time.perf_counter() - started > START_TIMEOUT_S:
                break
        raise RuntimeError(f"the server did not report serving within {START_TIMEOUT_S} s")
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=START_TIMEOUT_S)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faccia", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = [ready_ms(args.faccia, args.data_dir) for _ in range(args.repeat)]
    print(" ".join(f"{ms:.0f}" for ms in runs), "ms")
    print(f"ready after start: median {statistics.median(runs):.0f} ms, min {min(runs):.0f}, max {max(runs):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
