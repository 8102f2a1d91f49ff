"""Where the time of greedy generation (generated-mode scoring) and of prompt-mode scoring goes, on one
model, measured side by side in one process.

    python benchmarks/profile_decode.py                   # SmolLM2-135M, CPU: ~3 min on 2 quiet cores
    python benchmarks/profile_decode.py --threads 1 2 --batch-size 8 --new-tokens 9

Prints a markdown section (results/generation-cpu.md keeps the latest one):
  1. a decode step's wall time by KV cache (static / dynamic) and thread count, at --batch-size rows of
     median-length FLAN CoT prompts, and with the LoRA adapter disabled (what the adapter's extra small
     matrix products cost);
  2. torch.profiler (record_shapes) over the decode steps of one generation (static cache): self time by
     operator, the matrix products split into the base weights', the LoRA adapter's and the LM head's by
     their shapes, and what is left outside any operator (Python, generate()'s own loop);
  3. prompt-mode scoring of the same batch: the decoder against the LM head and statistics
     (``chunked_token_statistics``) at its scored positions, and the plain matrix product of those
     positions with the head, the floor of any exact full-vocabulary statistic.
A decode step is timed as generate(n + 1 new tokens) minus generate(1 new token), the least of --repeats.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FLAN = REPO.parent / "shared" / "data" / "flan_v2_cot"


def _batch(args):
    from lightning_al.data.sources import FlanCoT
    from lightning_al.datamodule import ActiveLearningDataModule
    from lightning_al.module import LoRALanguageModel

    model = LoRALanguageModel(pretrained=args.model, score_source="prompt", max_new_tokens=args.new_tokens)
    model.configure_model()
    model.eval()
    dm = ActiveLearningDataModule(FlanCoT(path=args.flan), tokenizer=args.model, validation_size=0,
                                  max_pool_size=args.num_prompts, split_seed=0, max_length=512,
                                  eval_batch_size=args.batch_size)
    dm.setup("fit")
    indices = np.arange(len(dm.pool))
    order = indices[np.argsort(dm.prompt_lengths[indices], kind="stable")]
    middle = len(order) // 2
    chosen = np.resize(order[max(0, middle - args.batch_size // 2):][:args.batch_size], args.batch_size)
    return model, next(iter(dm.score_dataloader(chosen)))


def _generate(model, batch, new: int, cache: str) -> float:
    from transformers import GenerationConfig

    from lightning_al.model.inference import generate_greedy

    config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None,
                              pad_token_id=model.tokenizer.pad_token_id)
    start = time.perf_counter()
    generate_greedy(model.model, batch["input_ids"], batch["attention_mask"], config, cache)
    return time.perf_counter() - start


def _step_seconds(model, batch, steps: int, cache: str, repeats: int) -> float:
    _generate(model, batch, 2, cache)  # warm-up
    one = min(_generate(model, batch, 1, cache) for _ in range(repeats))
    many = min(_generate(model, batch, steps + 1, cache) for _ in range(repeats))
    return (many - one) / steps


def _matmul_kind(shapes, hidden: int, vocab: int, rank: int) -> str:
    """Which weights a matrix product of these input shapes multiplies by."""
    weight = shapes[1] if len(shapes) > 1 else []
    if vocab in weight:
        return "mm: LM head"
    if rank in weight:
        return "mm: LoRA A/B"
    return "mm: base weights"


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path.home() / ".cache" / "smollm2-135m-instruct"))
    parser.add_argument("--flan", default=str(DEFAULT_FLAN))
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=8, help="decode steps timed")
    parser.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1, 1])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads[0])
    model, batch = _batch(args)
    rows, width = batch["input_ids"].shape
    started = time.time()
    out = [f"### Where the time goes ({Path(args.model).name}, {rows} rows of {width}-token FLAN CoT prompts, "
           f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} at the start)", ""]

    # 1. decode step by cache, threads, adapter
    out += ["| decode step | threads | seconds per step | ms per row |", "|---|---:|---:|---:|"]
    for threads in args.threads:
        torch.set_num_threads(threads)
        for cache in ("static", "dynamic"):
            step = _step_seconds(model, batch, args.new_tokens, cache, args.repeats)
            out.append(f"| {cache} KV cache | {threads} | {step:.3f} | {step / rows * 1e3:.1f} |")
        with model.model.disable_adapter():
            step = _step_seconds(model, batch, args.new_tokens, "static", args.repeats)
        out.append(f"| static, LoRA adapter disabled | {threads} | {step:.3f} | {step / rows * 1e3:.1f} |")
    torch.set_num_threads(args.threads[0])

    # 2. profile of the decode steps
    from torch.profiler import ProfilerActivity, profile

    config = model.model.get_base_model().config
    hidden, vocab, rank = config.hidden_size, config.vocab_size, model.hparams.lora_r

    def profiled(new: int):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            start = time.perf_counter()
            _generate(model, batch, new, "static")
            wall = time.perf_counter() - start
        groups: dict[str, float] = defaultdict(float)
        for event in prof.key_averages(group_by_input_shape=True):
            name = event.key
            if name == "aten::mm" or name == "aten::addmm":
                name = _matmul_kind(event.input_shapes, hidden, vocab, rank)
            groups[name] += event.self_cpu_time_total / 1e6
        return wall, groups

    wall_one, one = profiled(1)
    wall_many, many = profiled(args.new_tokens + 1)
    steps = args.new_tokens
    per_step = {k: (many.get(k, 0.0) - one.get(k, 0.0)) / steps for k in many}
    step_wall = (wall_many - wall_one) / steps
    inside = sum(per_step.values())
    out += ["", f"Profile of a decode step (static cache, {args.threads[0]} threads; {step_wall:.3f} s a step under "
            f"the profiler): self time by operator", "", "| operator | ms per step | share |", "|---|---:|---:|"]
    for name, seconds in sorted(per_step.items(), key=lambda kv: -kv[1])[:12]:
        out.append(f"| {name} | {seconds * 1e3:.1f} | {seconds / step_wall:.0%} |")
    out.append(f"| (outside any operator: Python, generate()'s loop, the profiler) | "
               f"{(step_wall - inside) * 1e3:.1f} | {(step_wall - inside) / step_wall:.0%} |")

    # 3. prompt mode: decoder vs head + statistics
    from lightning_al.model.head import output_head
    from lightning_al.model.inference import decoder_hidden_states
    from lightning_al.scoring.passes import prompt_statistics
    from lightning_al.scoring.statistics import chunked_token_statistics

    base = model.model.get_base_model()

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    stats, positions, _ = prompt_statistics(base, batch, "prompt")
    scored = len(positions)
    states = decoder_hidden_states(base, batch["input_ids"], batch["attention_mask"])
    picked = states.reshape(-1, states.shape[-1])[:scored].contiguous()
    weight = output_head(base).module.weight
    budget = max(states.numel(), 1 << 18)
    decoder = best(lambda: decoder_hidden_states(base, batch["input_ids"], batch["attention_mask"]))
    scoring = best(lambda: prompt_statistics(base, batch, "prompt"))
    head = best(lambda: chunked_token_statistics(picked, output_head(base).module, None, 1024, max_elements=budget))
    product = best(lambda: picked @ weight.T)
    out += ["", f"Prompt-mode scoring of the same batch ({int(batch['attention_mask'].sum())} prompt tokens, {scored} "
            f"scored positions, {args.threads[0]} threads):", "",
            "| part | seconds | vs the decoder |", "|---|---:|---:|",
            f"| decoder forward (the bare forward) | {decoder:.3f} | 1.00 |",
            f"| prompt-mode scoring (decoder + head + statistics) | {scoring:.3f} | {decoder / scoring:.2f} (ratio) |",
            f"| LM head + statistics at the scored positions | {head:.3f} | {head / decoder:.2f} |",
            f"| of which the plain product with the head | {product:.3f} | {product / decoder:.2f} |",
            "", f"({time.time() - started:.0f} s; load average at the end {os.getloadavg()[0]:.1f})"]
    print("\n".join(out))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
