"""Set-up at scale: time and peak memory from a pool file to a tokenized, split DataModule.

Measures, in one run and side by side, ``ActiveLearningDataModule.prepare_data() + setup("fit")`` over a
synthetic pool (default 100,000 rows of about 900 tokens, max_length 1024, SmolLM2's tokenizer) against
the floor: a bare ``datasets.load_dataset("json") + Dataset.map(tokenizer, batched=True)`` of the same
text with the same tokenizer and the same number of processes. Each variant runs in a fresh subprocess
with an empty cache; the figure that counts is the ratio (target: within 1.5x).

    python benchmarks/bench_setup.py [--tokenizer DIR] [--rows 100000] [--num-proc 2]

The tokenizer folder defaults to ``$SMOLLM2_DIR`` or ``~/.cache/smollm2-135m-instruct`` (as in the tests),
made with ``../shared/tools/get-smollm2`` when missing. The report replaces the output file but keeps its
``## Previous runs`` section, if any.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GET_SMOLLM2 = REPO.parent / "shared" / "tools" / "get-smollm2"
SMOLLM2 = os.environ.get("SMOLLM2_DIR", str(Path.home() / ".cache" / "smollm2-135m-instruct"))
PREVIOUS_RUNS = "## Previous runs"

# Common English words: SmolLM2's tokenizer maps most to one token, so word counts set token counts.
_WORDS = (  # noqa: SIM905 - a sentence of words reads better than 80 quoted ones
    "the of and to in is was for on that with as by at from his her it an were are which this be or has had "
    "not but their also its one new first two after who they been have more other all into three time some "
    "can there would when school year world city state water river number answer question people house "
    "music system between during many before under where because through while about most each these over"
).split()


def write_pool(path: Path, rows: int, seed: int) -> None:
    """A JSONL pool whose examples fill most of max_length 1024: ~450-650 prompt words, ~100-200 answer words."""
    rng = random.Random(seed)
    with path.open("w") as out:
        for i in range(rows):
            prompt = " ".join(rng.choices(_WORDS, k=rng.randint(450, 650)))
            response = " ".join(rng.choices(_WORDS, k=rng.randint(100, 200)))
            out.write(json.dumps({"id": f"ex-{i}", "task": f"task{i % 20}", "prompt": prompt, "response": response}) + "\n")


def _peak_mib(imports_mib: float) -> dict[str, float]:
    # ru_maxrss is in KiB on Linux; children: the largest tokenizing worker (datasets.map num_proc).
    return {"peak_rss_mib": _max_rss_mib(), "imports_rss_mib": imports_mib,
            "peak_rss_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_project(pool: str, tokenizer: str, num_proc: int, cache: str, max_length: int) -> dict:
    from lightning_al.data.sources import LocalFile
    from lightning_al.datamodule import ActiveLearningDataModule

    imports_mib = _max_rss_mib()  # (torch and Lightning: the DataModule is a LightningDataModule)
    start = time.perf_counter()
    dm = ActiveLearningDataModule(LocalFile(pool), tokenizer=tokenizer, validation_size=0.02, max_length=max_length,
                                  num_proc=num_proc, cache_dir=cache, evaluations=[])
    dm.prepare_data()
    dm.setup("fit")
    seconds = time.perf_counter() - start
    tokens = int(dm.pool_lengths.sum())
    return {"seconds": seconds, "rows": len(dm.pool), "tokens": tokens,
            "truncated": float(sum(dm.pool["truncated"]) / len(dm.pool)), **_peak_mib(imports_mib)}


def run_bare(pool: str, tokenizer: str, num_proc: int, cache: str, max_length: int) -> dict:
    import datasets
    from transformers import AutoTokenizer

    imports_mib = _max_rss_mib()
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(tokenizer)
    raw = datasets.load_dataset("json", data_files=pool, split="train", cache_dir=cache)

    def encode(batch):
        texts = [p + "\n" + r for p, r in zip(batch["prompt"], batch["response"])]
        return tok(texts, truncation=True, max_length=max_length)

    out = raw.map(encode, batched=True, num_proc=num_proc if num_proc > 1 else None, remove_columns=raw.column_names)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": len(out), "tokens": None, "truncated": None, **_peak_mib(imports_mib)}


def child(args: argparse.Namespace) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the same for both: parallelism comes from num_proc
    fn = run_project if args.variant == "project" else run_bare
    print(json.dumps(fn(args.pool, args.tokenizer, args.num_proc, args.cache, args.max_length)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default=SMOLLM2, help="SmolLM2 folder (made by get-smollm2 if missing)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="tokenizing processes, both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where the pool file and caches go (default: a temp folder)")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "setup-cpu.md"))
    parser.add_argument("--variant", choices=["project", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return child(args)
    if not (Path(args.tokenizer) / "tokenizer.json").is_file():
        subprocess.run(["bash", str(GET_SMOLLM2), args.tokenizer], check=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-setup-"))
    work.mkdir(parents=True, exist_ok=True)
    pool = work / f"pool-{args.rows}.jsonl"
    start = time.perf_counter()
    if not pool.exists():
        write_pool(pool, args.rows, args.seed)
    print(f"pool: {pool} ({pool.stat().st_size / 2**20:.0f} MiB, written in {time.perf_counter() - start:.0f} s)")
    results = {"load_before": os.getloadavg()[0]}
    for variant in ("bare", "project"):
        cache = work / f"cache-{variant}-{time.time_ns()}"
        command = [sys.executable, __file__, "--variant", variant, "--pool", str(pool), "--cache", str(cache),
                   "--tokenizer", args.tokenizer, "--num-proc", str(args.num_proc), "--max-length", str(args.max_length)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)  # (stderr shown)
        if done.returncode:
            sys.exit(f"{variant} failed:\n{done.stderr[-4000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(variant, results[variant], flush=True)
    results["load_after"] = os.getloadavg()[0]
    write_report(args, pool, results)


def write_report(args: argparse.Namespace, pool: Path, results: dict) -> None:
    project, bare = results["project"], results["bare"]
    rows = [
        ("wall seconds", project["seconds"], bare["seconds"]),
        ("peak RSS, main process (MiB)", project["peak_rss_mib"], bare["peak_rss_mib"]),
    ]
    if args.num_proc > 1:  # (with one process nothing is tokenized in a worker)
        rows.append(("peak RSS, largest tokenizing worker (MiB)", project["peak_rss_worker_mib"],
                     bare["peak_rss_worker_mib"]))
    rows.append(("RSS after imports, main process (MiB)", project["imports_rss_mib"], bare["imports_rss_mib"]))
    rows.append(("peak RSS above it: the set-up's own (MiB)", project["peak_rss_mib"] - project["imports_rss_mib"],
                 bare["peak_rss_mib"] - bare["imports_rss_mib"]))
    lines = [
        "# Set-up at scale (CPU)",
        "",
        (f"`python benchmarks/bench_setup.py --rows {args.rows} --max-length {args.max_length}"
         f" --num-proc {args.num_proc}` — {args.rows:,} synthetic rows ({pool.stat().st_size / 2**20:.0f} MiB JSONL),"
         f" SmolLM2-135M-Instruct's tokenizer, {os.cpu_count()} CPU cores, fresh cache on both sides. 1-minute load"
         f" average {results['load_before']:.1f} before and {results['load_after']:.1f} after the run (other jobs"
         " share the cores): absolute times are slow and noisy, the ratio within this one run is what counts."),
        "",
        "| measure | project set-up | bare `datasets.map` | ratio (target ≤ 1.5) |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {a:,.1f} | {b:,.1f} | {a / b:.2f} |" for name, a, b in rows),
        "",
        (f"Project: `ActiveLearningDataModule(LocalFile(pool), max_length={args.max_length},"
         f" num_proc={args.num_proc})` `.prepare_data()` + `.setup('fit')`: validates the JSONL line by line,"
         " streamed into a memory-mapped Arrow file in chunks, chat template (SmolLM2's), prompt and response"
         f" tokenized apart with offsets, truncation, the held-out split; {project['rows']:,} rows,"
         f" {project['tokens']:,} tokens kept, {100 * project['truncated']:.1f}% truncated. Its imports include"
         " torch and Lightning."),
        ("Bare: `load_dataset('json')` + `map(tokenizer(prompt + response, truncation=True), batched=True,"
         f" num_proc={args.num_proc})` of the same file, nothing else."),
        "",
    ]
    output = Path(args.output)
    earlier = output.read_text() if output.exists() else ""
    previous = earlier[earlier.index(PREVIOUS_RUNS):] if PREVIOUS_RUNS in earlier else ""
    output.write_text("\n".join(lines) + ("\n" + previous if previous else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
