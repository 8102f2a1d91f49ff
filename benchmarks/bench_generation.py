"""Generated-mode scoring and chain-of-thought generation against their floor, in one run.

    python benchmarks/bench_generation.py                  # SmolLM2, 64 FLAN CoT prompts, CPU: ~12 min on 2 quiet cores
    python benchmarks/bench_generation.py --device cuda --num-prompts 2000 --max-new-tokens 128

The floor of a generation pass over a set of prompts is what its two parts cost at their best,
measured in this same run: the prompts' prefill (the decoder over the project's length-sorted
batches) plus the tokens it generates, each at the best per-token decode cost found over batch
sizes and KV caches (--decode-batch-sizes x --caches: a batch of prompts of the median length,
timed over all its decode steps, with every row kept generating). ``floor / pass`` is the share of
the pass that is necessary work: 1.0 means nothing is wasted on padding, finished rows or per-step
overhead.

Variants, each in the same process, one after another, each with every KV cache of --caches
(``model.generation_cache``: ``static``, the default, and ``dynamic``, transformers' default and
the project's before it):
  scoring-rows-<n>      ``LoRALanguageModel.predict_step`` (score_source=generated) over
                        ``score_dataloader`` with batches of n prompts (``data.eval_batch_size``)
  scoring-tokens-<t>    the same with ``data.score_batch_tokens = t``
  cot-rows-<n> / cot-tokens-<t>   ``greedy_generate`` (the evaluation sets' generation) over the same
                        batches with --cot-new-tokens
  bbh-<task>            the BBH evaluation's generation of --bbh-examples questions of one task (3-shot
                        chain of thought, ~900-token prompts for web_of_lies, the exemplars run once per
                        batch) in batches of --bbh-batch-size, --cot-new-tokens each; no floor (its
                        prefill is shared), the caches compared with each other
Results go to ``benchmarks/results/generation-<device>.md``; the file's earlier runs are kept below the
new one, under ``## Previous runs``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FLAN = REPO.parent / "shared" / "data" / "flan_v2_cot"
DEFAULT_BBH = REPO.parent / "shared" / "data" / "bbh"
GET_SMOLLM2 = REPO.parent / "shared" / "tools" / "get-smollm2"
PREVIOUS_RUNS = "## Previous runs"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _setup(args):
    from lightning_al.data.sources import FlanCoT
    from lightning_al.datamodule import ActiveLearningDataModule
    from lightning_al.module import LoRALanguageModel

    model = LoRALanguageModel(pretrained=args.model, score_source="generated", max_new_tokens=args.max_new_tokens,
                              dtype=args.dtype)
    model.configure_model()
    model.eval().to(args.device)
    dm = ActiveLearningDataModule(FlanCoT(path=args.flan), tokenizer=args.model, validation_size=0,
                                  max_pool_size=args.num_prompts, split_seed=args.seed, max_length=512,
                                  eval_batch_size=8, cache_dir=args.cache_dir)
    dm.setup("fit")
    return model, dm


def _loader(dm, indices, rows: int | None, tokens: int | None, extra: int):
    dm.eval_batch_size = rows or 8
    dm.score_batch_tokens = tokens
    return list(dm.score_dataloader(indices, extra_tokens=extra))


class Clock:
    """Wall seconds, and this process's CPU seconds (all its threads): with one thread on cores that other
    processes share, CPU time counts the work done, where wall time also counts the waiting."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> np.ndarray:
        return np.array([time.perf_counter() - self.wall, time.process_time() - self.cpu])


@torch.inference_mode()
def _timed(fn, batches, device) -> tuple[np.ndarray, float]:
    """([wall, CPU] seconds, generated tokens) of ``fn`` over the batches."""
    _sync(device)
    clock = Clock()
    generated = 0.0
    for batch in batches:
        generated += fn({k: v.to(device) for k, v in batch.items()})
    _sync(device)
    return clock.read(), generated


@torch.inference_mode()
def _decode_cost(model, dm, indices, batch_size: int, steps: int, device, cache: str) -> np.ndarray:
    """[wall, CPU] seconds per generated token at ``batch_size`` with the KV cache ``cache``: a batch of
    median-length prompts, every row kept generating (no end-of-turn stop), the prefill subtracted."""
    from transformers import GenerationConfig

    from lightning_al.model.inference import generate_greedy

    order = indices[np.argsort(dm.prompt_lengths[indices], kind="stable")]
    middle = len(order) // 2
    chosen = order[max(0, middle - batch_size // 2):][:batch_size]
    chosen = np.resize(chosen, batch_size)  # fewer prompts than the batch: repeat them
    batch = next(iter(_loader(dm, chosen, batch_size, None, 0)))
    batch = {k: v.to(device) for k, v in batch.items()}
    pad = model.tokenizer.pad_token_id

    def run(new: int) -> np.ndarray:
        config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None,
                                  pad_token_id=pad)
        _sync(device)
        clock = Clock()
        generate_greedy(model.model, batch["input_ids"], batch["attention_mask"], config, cache)
        _sync(device)
        return clock.read()

    run(1)  # warm-up
    # Each length timed on its own; a second pair only where the first difference is at or below 0 (prefill
    # noise larger than the decode steps), then the least of each (wall and CPU apart); still at or below 0:
    # no measurement.
    prefill_only, full = run(1), run(2 * steps + 1)
    if (full - prefill_only <= 0).any():
        prefill_only, full = np.minimum(prefill_only, run(1)), np.minimum(full, run(2 * steps + 1))
    decoding = full - prefill_only
    return np.where(decoding > 0, decoding / (2 * steps * batch_size), np.nan)


def _bbh_batches(args, model):
    from lightning_al.evaluation.bbh import BigBenchHard

    evaluation = BigBenchHard(path=args.bbh, tasks=[args.bbh_task], max_examples_per_task=args.bbh_examples,
                              max_new_tokens=args.cot_new_tokens)
    evaluation.prepare(model.tokenizer, None)
    return list(evaluation.dataloader(args.bbh_batch_size, 0, model.tokenizer.pad_token_id))


def _previous_runs(output: Path) -> str:
    """The output file's earlier runs: its ``## Previous runs`` section, with its latest run (the top of
    the file, headings one level down) first in it."""
    if not output.exists():
        return ""
    earlier = output.read_text()
    top, _, older = earlier.partition(PREVIOUS_RUNS)
    top = "\n".join("##" + line if line.startswith("#") else line for line in top.strip().splitlines())
    return f"{PREVIOUS_RUNS}\n\n{top}\n\n{older.strip()}\n".replace("\n\n\n", "\n\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generated scoring's continuation length")
    parser.add_argument("--cot-new-tokens", type=int, default=48, help="chain-of-thought generation length")
    parser.add_argument("--rows", type=int, nargs="*", default=[8], help="fixed batch sizes (eval_batch_size)")
    parser.add_argument("--tokens", type=int, nargs="*", default=[4096, 8192], help="score_batch_tokens budgets")
    parser.add_argument("--cot-batches", nargs="*", default=["rows-8", "tokens-8192"],
                        help="the batchings (rows-<n> / tokens-<t>) that CoT generation runs with")
    parser.add_argument("--caches", nargs="+", default=["static", "dynamic"], choices=["static", "dynamic", "compile"],
                        help="KV caches (model.generation_cache); the first is the one compared with the others")
    parser.add_argument("--decode-batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=str(Path.home() / ".cache" / "smollm2-135m-instruct"),
                        help="a causal LM folder or hub id (default: SmolLM2-135M-Instruct made by get-smollm2)")
    parser.add_argument("--flan", default=str(DEFAULT_FLAN))
    parser.add_argument("--bbh", default=str(DEFAULT_BBH), help="BBH folder ('' : no BBH variant)")
    parser.add_argument("--bbh-task", default="web_of_lies")
    parser.add_argument("--bbh-examples", type=int, default=16)
    parser.add_argument("--bbh-batch-size", type=int, default=16)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--skip-cot", action="store_true")
    parser.add_argument("--note", default="", help="a line for the report (e.g. the machine's load)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    torch.set_num_threads(args.threads)
    if not (Path(args.model) / "config.json").is_file() and args.model.startswith("/"):
        subprocess.run(["bash", str(GET_SMOLLM2), args.model], check=True, stdout=subprocess.DEVNULL)
    device = torch.device(args.device)
    started = time.time()
    load_before = os.getloadavg()[0]
    model, dm = _setup(args)
    indices = np.arange(len(dm.pool))
    from lightning_al.model.inference import greedy_generate

    prompt_tokens = int(dm.prompt_lengths[indices].sum())
    decoder = model.model.get_base_model().get_decoder()
    prefill_batches = _loader(dm, indices, 8, None, 0)
    _timed(lambda b: decoder(input_ids=b["input_ids"][:1], attention_mask=b["attention_mask"][:1]) and 0,
           prefill_batches[:1], device)  # warm-up
    prefill, _ = _timed(lambda b: decoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"]) and 0,
                        prefill_batches, device)
    decode = {(b, c): _decode_cost(model, dm, indices, b, args.max_new_tokens, device, c)
              for b in args.decode_batch_sizes for c in args.caches}
    costs = np.array(list(decode.values()))  # [setting, (wall, CPU)]; NaN: no measurement
    if np.isnan(costs).all(0).any():
        raise SystemExit("no decode cost could be measured (prefill noise larger than the decode steps)")
    best_decode = np.nanmin(costs, axis=0)  # wall and CPU apart
    decode_text = "; ".join(f"{c}: " + ", ".join(f"{b}: {decode[b, c][0] * 1e3:.2f} ms ({decode[b, c][1] * 1e3:.2f})"
                                                 for b in args.decode_batch_sizes) for c in args.caches)
    print(f"prefill {prefill[0]:.1f} s ({prefill[1]:.1f} CPU); decode s/token (CPU) by cache and batch size: "
          f"{decode_text}", file=sys.stderr)

    def scoring(batch) -> float:
        return float(model.predict_step(batch)["num_tokens"].sum())

    stop_ids = model.stop_token_ids
    cache_of = {"cache": args.caches[0]}

    def cot(batch, stop_strings=()) -> float:
        texts = greedy_generate(model.model, model.tokenizer, batch["input_ids"], batch["attention_mask"],
                                args.cot_new_tokens, stop_ids, stop_strings, cache=cache_of["cache"])
        return float(sum(len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts))

    batchings = [(f"rows-{n}", n, None) for n in args.rows] + [(f"tokens-{t}", None, t) for t in args.tokens]
    runs = [("scoring", scoring, args.max_new_tokens, batchings)]
    if not args.skip_cot:
        runs.append(("cot", cot, args.cot_new_tokens, [b for b in batchings if b[0] in args.cot_batches]))
    rows = []
    first, last = args.caches[0], args.caches[-1]
    for kind, fn, extra, kind_batchings in runs:
        for label, n, t in kind_batchings:
            batches = _loader(dm, indices, n, t, extra)
            seconds = {}
            for cache in args.caches:
                model.hparams["generation_cache"] = cache_of["cache"] = cache
                seconds[cache], generated = _timed(fn, batches, device)
                floor = prefill + generated * best_decode
                rows.append([f"{kind}-{label}", cache, len(batches), seconds[cache], generated, floor / seconds[cache],
                             None])
                print(f"{kind}-{label} {cache}: {len(batches)} batches, {seconds[cache][0]:.1f} s "
                      f"({seconds[cache][1]:.1f} CPU), {generated:.0f} generated, floor {floor[0]:.1f} s "
                      f"({floor[1]:.1f} CPU)", file=sys.stderr)
            if len(args.caches) > 1:  # the first cache's speed-up over the last one's
                rows[-len(args.caches)][6] = seconds[last] / seconds[first]
    bbh = []
    if args.bbh and not args.skip_cot:
        from lightning_al.evaluation.bbh import BBH_STOP_STRINGS

        batches = _bbh_batches(args, model)
        width = max(int(b["attention_mask"].sum(1).max()) for b in batches)
        for cache in args.caches:
            cache_of["cache"] = cache
            seconds, generated = _timed(lambda b: cot(b, BBH_STOP_STRINGS), batches, device)
            bbh.append((cache, len(batches), seconds, generated))
            print(f"bbh-{args.bbh_task} {cache}: {seconds[0]:.1f} s ({seconds[1]:.1f} CPU), {generated:.0f} generated",
                  file=sys.stderr)
    model.hparams["generation_cache"] = "static"

    hardware = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()}, {args.threads} threads"
    lines = [
        f"# Generation benchmark ({args.device}: {hardware})", "",
        f"{Path(args.model).name}, {args.dtype}, {len(indices)} FLAN v2 CoT prompts ({prompt_tokens} prompt tokens, "
        f"seed {args.seed}); scoring {args.max_new_tokens} new tokens, CoT {args.cot_new_tokens}; torch "
        f"{torch.__version__}; load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
        f"total {time.time() - started:.0f} s." + (f" {args.note}" if args.note else ""), "",
        "Seconds are wall time, with this process's CPU time in brackets; on cores that other processes share, "
        "run with --threads 1 and read the CPU-time ratios (wall time then also counts the waiting).", "",
        f"Floor parts: prefill {prefill[0]:.2f} s ({prefill[1]:.2f}); decode seconds per token by KV cache and batch "
        f"size: {decode_text} (best {best_decode[0] * 1e3:.2f} ms ({best_decode[1] * 1e3:.2f})).", "",
        f"| pass | KV cache | batches | seconds (CPU) | generated tokens | floor / pass, wall (target ≥ 0.8) | "
        f"floor / pass, CPU | {f'{first} vs {last}: speed-up, wall (CPU)' if first != last else 'one KV cache'} |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {cache} | {b} | {s[0]:.1f} ({s[1]:.1f}) | {g:.0f} | {r[0]:.2f} | {r[1]:.2f} | "
              f"{'' if u is None else f'{u[0]:.2f}x ({u[1]:.2f}x)'} |" for name, cache, b, s, g, r, u in rows]
    if bbh:
        lines += ["", f"BBH {args.bbh_task}, {args.bbh_examples} questions (prompts up to {width} tokens, the 3-shot "
                  f"exemplars run once per batch), batches of {args.bbh_batch_size}, up to {args.cot_new_tokens} new "
                  "tokens:", "", f"| KV cache | batches | seconds (CPU) | generated tokens | {first} vs this: speed-up, "
                  "wall (CPU) |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {cache} | {b} | {s[0]:.1f} ({s[1]:.1f}) | {g:.0f} | {s[0] / bbh[0][2][0]:.2f}x "
                  f"({s[1] / bbh[0][2][1]:.2f}x) |" for cache, b, s, g in bbh]
    text = "\n".join(lines) + "\n"
    print(text)
    output = Path(args.output or REPO / "benchmarks" / "results" / f"generation-{args.device}.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    previous = _previous_runs(output)
    output.write_text(text + ("\n" + previous if previous else ""))


if __name__ == "__main__":
    main()
