"""Wall time and peak memory of the acquisition strategies' ``select`` on synthetic pools.

    OMP_NUM_THREADS=2 python benchmarks/bench_selection.py                  # 10K and 90K, ~10 min on 2 cores
    python benchmarks/bench_selection.py --pools 10000 --strategies kcenter facility
    python benchmarks/bench_selection.py --full                             # no extrapolation at 90K (slow)

Inputs, as the loop will hold them: unit prompt embeddings of dimension --dim stored in float16 (random
Gaussian directions, seeded), per-candidate scores (entropy, confidence, margin, ...) and task names
(--tasks tasks of Zipf-like sizes); nothing labeled (round 0); k = --k-fraction of the pool.

Each (pool, strategy) runs in a fresh subprocess, so its peak memory is its own: the resident-set
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident set just before
``select``, with glibc mapping every allocation of 64 KiB or more on its own (freed arrays leave the
resident set). The inputs themselves (float16 embeddings) are not counted.

The diversity strategies cost O(N k d) (k-center) and O(N² d) (the facility-location kNN graph). Above
--full-up-to candidates, unless --full, they are measured on a part and scaled: k-center runs the first
--fraction of its k picks (the greedy is incremental, so these are the first picks of the full run) and
its time is scaled by k / picks; facility location times the first --fraction of the kNN graph's
similarity blocks (scaled by all blocks / blocks timed) plus the lazy greedy on the graph of the same pool built from the first --proxy-dim
coordinates of the embeddings (same N, k and knn; the greedy's cost does not depend on d). The table says which.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("random", "entropy", "confidence", "power-entropy", "softmax-entropy", "softrank-entropy",
              "task-balanced", "task-balanced-confidence", "kcenter", "facility")


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakMemory:
    """Extra resident memory of a block: VmHWM after minus RSS before (Linux)."""

    def __enter__(self) -> PeakMemory:
        import gc

        gc.collect()
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        self.base = _status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.extra = _status("VmHWM") - self.base


def make_pool(n: int, dim: int, tasks: int, seed: int):
    """Seeded inputs of an n-candidate pool: float16 unit embeddings, scores, task names."""
    import numpy as np

    rng = np.random.default_rng([seed, n])
    embeddings = np.empty((n, dim), dtype=np.float16)
    for r in range(0, n, 8192):  # in chunks: a float64 [n, d] draw would need 1.5 GB at 90K
        block = rng.standard_normal((min(8192, n - r), dim), dtype=np.float32)
        embeddings[r : r + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    sizes = 1.0 / np.arange(1, tasks + 1)
    task_names = np.array([f"task{t:02d}" for t in range(tasks)])[rng.choice(tasks, size=n, p=sizes / sizes.sum())]
    scores = {"entropy": rng.uniform(0.0, 3.0, n), "confidence": -rng.uniform(0.0, 3.0, n),
              "margin": rng.uniform(0.0, 1.0, n), "min_margin": rng.uniform(0.0, 1.0, n),
              "max_entropy": rng.uniform(0.0, 6.0, n)}
    return embeddings, scores, task_names


# ---------------------------------------------------------------------------- worker: one (pool, strategy)
def worker(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from lightning_al.strategies import FacilityLocation, strategy_from_name
    from lightning_al.strategies.embeddings import unit_float32
    from lightning_al.strategies.facility import knn_graph, lazy_greedy

    torch.set_num_threads(args.threads)
    n, k = args.pool, int(args.pool * args.k_fraction)
    embeddings, scores, tasks = make_pool(n, args.dim, args.tasks, args.seed)
    candidates = np.arange(n)
    strategy = strategy_from_name(args.strategy)
    partial = not args.full and n > args.full_up_to and args.strategy in ("kcenter", "facility")
    row = {"pool": n, "k": k, "strategy": args.strategy, "how": "measured", "seconds": None, "peak_mib": None}
    rng = np.random.default_rng([args.seed, 0])
    inputs = {"embeddings": embeddings, "labeled_embeddings": np.zeros((0, args.dim), np.float16), "tasks": tasks}
    if not partial:
        with PeakMemory() as memory:
            start = time.perf_counter()
            chosen = strategy.select(candidates, scores.get(strategy.score), k, rng, **inputs)
            row["seconds"] = time.perf_counter() - start
        assert len(chosen) == k
        row["peak_mib"] = memory.extra / 2**20
    elif args.strategy == "kcenter":
        picks = max(1, round(k * args.fraction))
        with PeakMemory() as memory:
            start = time.perf_counter()
            strategy.select(candidates, None, picks, rng, **inputs)
            measured = time.perf_counter() - start
        row.update(seconds=measured * k / picks, peak_mib=memory.extra / 2**20,
                   how=f"first {picks} picks: {measured:.1f} s, x k/picks")
    else:  # facility location: part of the kNN graph, then the greedy on a cheaper graph of the same size
        assert isinstance(strategy, FacilityLocation)
        blocks = math.ceil(n / 4096)  # knn_graph's default block_rows
        total = blocks * (blocks + 1) // 2  # blocks on and above the diagonal
        pairs = max(1, round(total * args.fraction))
        with PeakMemory() as memory, torch.inference_mode():
            start = time.perf_counter()
            knn_graph(unit_float32(embeddings), strategy.knn, pair_limit=pairs)
            graph = time.perf_counter() - start
        with PeakMemory() as greedy_memory, torch.inference_mode():
            pointers, graph_rows, vals = knn_graph(unit_float32(embeddings[:, : args.proxy_dim]), strategy.knn)
            start = time.perf_counter()
            vals = vals.astype(np.float64)
            lazy_greedy(lambda j: (graph_rows[pointers[j] : pointers[j + 1]], vals[pointers[j] : pointers[j + 1]]),
                        n, k, np.zeros(n))
            greedy = time.perf_counter() - start
        row.update(seconds=graph * total / pairs + greedy, peak_mib=max(memory.extra, greedy_memory.extra) / 2**20,
                   how=f"graph: {pairs} of {total} similarity blocks {graph:.1f} s, x {total}/{pairs}; greedy on a "
                       f"{args.proxy_dim}-dim graph: {greedy:.1f} s")
    return row


# ---------------------------------------------------------------------------- driver
def table(rows: list[dict]) -> str:
    lines = ["| pool N | k | strategy | seconds | peak extra MiB | how |", "|---:|---:|---|---:|---:|---|"]
    for r in rows:
        seconds = "failed" if r["seconds"] is None else f"{r['seconds']:,.2f}"
        peak = "" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}"
        lines.append(f"| {r['pool']:,} | {r['k']:,} | {r['strategy']} | {seconds} | {peak} | {r['how']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", type=int, nargs="+", default=[10_000, 90_000], help="Pool sizes N.")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), help="Registry names.")
    parser.add_argument("--dim", type=int, default=2048, help="Embedding dimension (Llama 3.2 1B: 2048).")
    parser.add_argument("--k-fraction", type=float, default=0.5, help="k as a fraction of the pool.")
    parser.add_argument("--tasks", type=int, default=60, help="Number of tasks in the pool.")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--full", action="store_true", help="Run k-center and facility location whole at every N.")
    parser.add_argument("--full-up-to", type=int, default=20_000, help="Larger pools measure part and scale.")
    parser.add_argument("--fraction", type=float, default=0.1, help="The part measured above --full-up-to.")
    parser.add_argument("--proxy-dim", type=int, default=64, help="Dimension of the graph the 90K greedy runs on.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "selection-cpu.md"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    rows, started, loads = [], time.perf_counter(), [os.getloadavg()[0]]
    passthrough = ["--dim", str(args.dim), "--k-fraction", str(args.k_fraction), "--tasks", str(args.tasks),
                   "--threads", str(args.threads), "--full-up-to", str(args.full_up_to), "--fraction",
                   str(args.fraction), "--proxy-dim", str(args.proxy_dim), "--seed", str(args.seed)]
    for pool in args.pools:
        for name in args.strategies:
            command = [sys.executable, __file__, "--worker", "--pool", str(pool), "--strategy", name, *passthrough]
            if args.full:
                command.append("--full")
            result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
            lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
            if result.returncode or not lines:
                print(result.stderr[-2000:], file=sys.stderr)
                row = {"pool": pool, "k": int(pool * args.k_fraction), "strategy": name, "how": "failed",
                       "seconds": None, "peak_mib": None}
            else:
                row = json.loads(lines[-1][len("RESULT "):])
            rows.append(row)
            loads.append(os.getloadavg()[0])
            print(f"N={pool:,} {name}: {row['seconds']} s, {row['peak_mib']} MiB ({row['how']})", flush=True)
    import torch

    header = (
        f"# Selection benchmark ({platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
        f"torch {torch.__version__})\n\n"
        f"`python benchmarks/bench_selection.py {' '.join(sys.argv[1:])}`: {time.perf_counter() - started:,.0f} s "
        f"in all. Embeddings [N, {args.dim}] float16 (unit random directions), k = {args.k_fraction:g} N, "
        f"nothing labeled, {args.tasks} tasks. Peak extra MiB: VmHWM minus RSS before `select` (inputs not "
        f"counted). The machine is shared with other jobs: the 1-minute load average, read after each case, went "
        f"from {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores, so the timings are those of a busy "
        "machine and move by tens of percent between runs.\n\n"
    )
    text = header + table(rows) + "\n"
    print("\n" + table(rows))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
