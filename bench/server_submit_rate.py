"""Submission rate through CreateService against a plain `sbatch` loop on the same cluster.

    .venv/bin/python bench/server_submit_rate.py [--count 50]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from _server import ensure_slurm, sleeper_request, slurm_server


def sbatch_loop(count: int) -> float:
    work = Path(tempfile.mkdtemp(prefix="aifb-bench-sbatch-"))
    ids = []
    t0 = time.perf_counter()
    for i in range(count):
        out = subprocess.run(
            ["sbatch", "--parsable", "--job-name", f"plain-{i}", "--cpus-per-task=1",
             "--mem=32M", "--time=15", f"--output={work}/%j.out", "--wrap", "sleep 600"],
            capture_output=True, text=True, check=True).stdout
        ids.append(out.strip().split(";")[0])
    elapsed = time.perf_counter() - t0
    subprocess.run(["scancel", *ids], check=False)
    return count / elapsed


def create_loop(count: int) -> float:
    srv = slurm_server()
    try:
        stub = srv.stub()
        t0 = time.perf_counter()
        for _ in range(count):
            stub.CreateService(sleeper_request(), timeout=60)
        elapsed = time.perf_counter() - t0
        srv.cancel_all(wait=0)
        return count / elapsed
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=50)
    args = ap.parse_args()
    ensure_slurm()
    # Ours first: each loop ends by cancelling its jobs, which keeps slurmctld busy for a while.
    ours = create_loop(args.count)
    time.sleep(5)
    plain = sbatch_loop(args.count)
    print(f"{'method':<28} {'submits/s':>10}")
    print(f"{'sbatch loop (peer)':<28} {plain:>10.1f}")
    print(f"{'CreateService (aifb)':<28} {ours:>10.1f}")
    print(f"{'ratio aifb / sbatch':<28} {ours / plain:>10.2f}")


if __name__ == "__main__":
    main()
