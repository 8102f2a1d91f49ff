"""Speed and memory of pool scoring: the project's passes against a naive baseline, in one run.

    python benchmarks/bench_scoring.py                       # both setups, CPU, ~10 min on 2 cores
    python benchmarks/bench_scoring.py --device cuda --num-prompts 2000 --naive-prompts 256

Variants, each measured in a fresh subprocess (so that peak memory is its own):
  project-prompt     ``LoRALanguageModel.predict_step`` (score_source=prompt) over
                     ``ActiveLearningDataModule.score_dataloader`` (length-sorted batches, chunked LM head)
  project-generated  the same with score_source=generated (greedy continuation, the default static KV cache)
  project-generated-dynamic   the same with ``model.generation_cache=dynamic`` (transformers' dynamic cache,
                     the project's before the static one), for the speed-up of the static cache in this run
  naive-prompt       every prompt right-padded to --pad-to, full fp32 logits at every position of the
                     batch, softmax statistics over all positions (masked mean)
  naive-generated    every prompt left-padded to --pad-to, ``generate`` keeping every step's full
                     logits (output_logits), softmax statistics over all steps (masked)
  decoder-only       the decoder (``model.get_decoder()``) over the project's batches, keeping no
                     logits: the memory floor that scoring is compared with
  forward            the model's plain forward (LoRA included) over the project's batches, logits at every
                     position and nothing computed from them: the bare forward a score cannot be cheaper than
                     by more than the LM head it skips at unscored positions

Setups: ``smollm2`` (SmolLM2-135M-Instruct, vocab 49152) and ``random-llama`` (a randomly
initialised Llama with vocab 128256 and a few small layers, where the LM head dominates), both on a
seeded sample of FLAN v2 CoT prompts tokenized with SmolLM2's tokenizer and chat template.

Tokens/s: real (unpadded) prompt tokens per second of a timed pass over all the variant's prompts,
after a one-prompt warm-up. The naive passes cost the same for every prompt (all are padded to the same
width), so they run on a seeded subset (--naive-prompts) and their rate stands for the whole sample.
The ratios are also given in CPU time (the worker process's, in brackets): on cores that other processes
share, run with --threads 1 and read those, since wall time then also counts the waiting.

Peak extra memory: the most memory a pass holds beyond what was live before it. On CUDA,
``torch.cuda.max_memory_allocated`` minus the memory allocated before. On CPU, the resident-set
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident set before,
measured with glibc set to map every allocation of 64 KiB or more on its own (so that freed tensors
leave the resident set), on one thread, with the weights copied out of the memory-mapped checkpoint,
over the widest batch, the least of --memory-repeats passes. The naive passes' peaks (gigabytes) are
read on their timed pass.

The report replaces the output file's latest run and keeps the earlier ones below it, under ``## Previous
runs``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FLAN = REPO.parent / "shared" / "data" / "flan_v2_cot"
GET_SMOLLM2 = REPO.parent / "shared" / "tools" / "get-smollm2"

RANDOM_LLAMA = dict(
    model_type="llama", vocab_size=128256, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
)
VARIANTS = ("decoder-only", "forward", "project-prompt", "project-generated", "project-generated-dynamic", "naive-prompt",
            "naive-generated")
PREVIOUS_RUNS = "## Previous runs"


# ---------------------------------------------------------------------------- worker (one variant)
def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


class PeakMemory:
    """Peak extra memory of a block: CUDA allocator statistics, or the RSS high-water mark on CPU."""

    def __init__(self, device):
        self.device = device

    def start(self, fixed_threshold: bool = True) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            # Every allocation of 64 KiB or more gets its own mapping, unmapped when freed: the
            # resident set then follows the live tensors rather than what the heap keeps for reuse.
            if fixed_threshold:
                libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
            libc.malloc_trim(0)  # hand back the heap's free pages: the baseline is the live memory
        except OSError:
            pass
        with open("/proc/self/clear_refs", "w") as handle:  # resets VmHWM to the current RSS
            handle.write("5")
        self.base = _status("VmRSS")

    def stop(self) -> int:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return _status("VmHWM") - self.base


def _build(spec: dict):
    import torch

    from lightning_al.data.sources import FlanCoT
    from lightning_al.datamodule import ActiveLearningDataModule
    from lightning_al.module import LoRALanguageModel

    source = "generated" if "generated" in spec["variant"] else "prompt"
    cache = "dynamic" if spec["variant"].endswith("-dynamic") else "static"
    kwargs = dict(tokenizer=spec["tokenizer"], score_source=source, max_new_tokens=spec["max_new_tokens"],
                  generation_cache=cache)
    if spec["logits_chunk_size"]:
        kwargs["logits_chunk_size"] = spec["logits_chunk_size"]
    if spec["setup"] == "smollm2":
        model = LoRALanguageModel(pretrained=spec["tokenizer"], **kwargs)
    else:
        model = LoRALanguageModel(config=RANDOM_LLAMA, **kwargs)
    model.configure_model()
    model.eval().to(spec["device"])
    with torch.no_grad():
        # Weights in anonymous memory: the safetensors file is memory-mapped, and pages of it that the
        # kernel drops while they are cold (the embedding rows no prompt uses) would count as new
        # resident memory when the LM head touches them again.
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    dm = ActiveLearningDataModule(
        FlanCoT(path=spec["flan"]), tokenizer=spec["tokenizer"], validation_size=0, max_pool_size=spec["num_prompts"],
        split_seed=spec["seed"], max_length=512, eval_batch_size=spec["batch_size"], cache_dir=spec["cache_dir"],
    )
    dm.setup("fit")
    return model, dm


def _naive_batches(dm, indices, batch_size, width, side):
    """Pool-order batches, each prompt padded to ``width`` (right for teacher forcing, left for generate)."""
    import torch

    pad = dm.tokenizer.pad_token_id
    for start in range(0, len(indices), batch_size):
        rows = [dm.pool[int(i)] for i in indices[start : start + batch_size]]
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            prompt = row["input_ids"][: row["prompt_length"]][-width:]
            span = slice(0, len(prompt)) if side == "right" else slice(width - len(prompt), width)
            ids[r, span] = torch.tensor(prompt)
            mask[r, span] = 1
        yield {"input_ids": ids, "attention_mask": mask}


def _naive_statistics(logits, next_tokens, valid):
    """Full-vocabulary statistics at every position, then masked means (the naive way)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    top2 = p.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    logprob = logp.gather(-1, next_tokens.unsqueeze(-1)).squeeze(-1)
    valid = valid.to(entropy.dtype)
    count = valid.sum(1)
    return {
        "entropy": (entropy * valid).sum(1) / count,
        "confidence": (logprob * valid).sum(1) / count,
        "margin": (margin * valid).sum(1) / count,
    }


def _run_batch(variant, model, batch, stop_ids, spec):
    """One batch of one variant; returns (processed prompt positions, scored positions, mean entropy)."""
    import torch
    from transformers import GenerationConfig

    if variant.startswith("project"):
        out = model.predict_step(batch)
        return batch["input_ids"].numel(), float(out["num_tokens"].sum()), float(out["entropy"].nanmean())
    if variant == "decoder-only":
        model.model.get_base_model().get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return batch["input_ids"].numel(), 0.0, float("nan")
    if variant == "forward":
        model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return batch["input_ids"].numel(), 0.0, float("nan")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if variant == "naive-prompt":
        logits = model.model(input_ids=ids, attention_mask=mask).logits
        stats = _naive_statistics(logits[:, :-1], ids[:, 1:], mask[:, 1:])
        return ids.numel(), float(mask[:, 1:].sum()), float(stats["entropy"].mean())
    config = GenerationConfig(
        max_new_tokens=spec["max_new_tokens"], do_sample=False, num_beams=1, eos_token_id=stop_ids,
        pad_token_id=model.tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True,
    )
    out = model.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    logits = torch.stack(out.logits, dim=1)  # [batch, steps, vocab], all kept
    tokens = out.sequences[:, ids.shape[1] :]
    stopped = torch.isin(tokens, torch.tensor(stop_ids, device=tokens.device)).long()
    valid = (stopped.cumsum(1) - stopped) == 0  # up to and including the first end-of-turn token
    stats = _naive_statistics(logits, logits.argmax(-1), valid)
    return ids.numel(), float(valid.sum()), float(stats["entropy"].mean())


def worker(spec: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    model, dm = _build(spec)
    stop_ids = model.stop_token_ids
    variant = spec["variant"]
    indices = np.arange(len(dm.pool))
    if variant.startswith("naive"):
        # The naive passes cost the same per prompt whatever its length: a seeded subset measures their rate.
        indices = np.sort(np.random.default_rng(spec["seed"]).permutation(len(indices))[: spec["naive_prompts"]])

        def batches():
            side = "right" if variant == "naive-prompt" else "left"
            return _naive_batches(dm, indices, spec["batch_size"], spec["pad_to"], side)
    else:

        def batches():
            return iter(dm.score_dataloader(indices))

    def to_device(batch):
        return {k: v.to(device) for k, v in batch.items()}

    def run(batch_list):
        real = processed = scored = 0
        entropies = []
        for batch in batch_list:
            batch = to_device(batch)
            real += int(batch["attention_mask"].sum())
            p, s, e = _run_batch(variant, model, batch, stop_ids, spec)
            processed += p
            scored += s
            entropies.append(e)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return real, processed, scored, entropies

    naive = variant.startswith("naive")
    meter = PeakMemory(device)
    with torch.inference_mode():
        # Warm-up on one prompt: pages the weights in and sets the kernels up.
        run([{k: v[:1] for k, v in next(batches()).items()}])
        if naive:  # its peak is gigabytes: measured on the timed pass itself
            meter.start(fixed_threshold=False)
        start, start_cpu = time.perf_counter(), time.process_time()
        real, processed, scored, entropies = run(batches())
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        if naive:
            peak = meter.stop()
        else:
            # Peak memory on the widest batches (the first ones), in passes of their own: on CPU they
            # run with a fixed mmap threshold, which would slow the timed pass, and on one thread,
            # since worker threads allocate from heaps of their own that make the figure noisy. The
            # least of a few repeats: the first passes still fill caches (allocator, oneDNN) that stay.
            torch.set_num_threads(1)
            widest = [to_device(batch) for batch in itertools.islice(batches(), spec["memory_batches"])]
            peaks = []
            for _ in range(spec["memory_repeats"]):
                meter.start()
                run(widest)
                peaks.append(meter.stop())
            peak = min(peaks)
    return {
        "variant": variant, "setup": spec["setup"], "prompts": len(indices), "seconds": seconds,
        "cpu_seconds": cpu_seconds, "real_tokens": real,
        "processed_tokens": processed, "scored_positions": scored, "peak_extra_bytes": peak,
        "mean_entropy": float(np.nanmean(entropies)),
    }


# ---------------------------------------------------------------------------- orchestration
def _run_worker(spec: dict) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("MKL_DISABLE_FAST_MM", "1")  # MKL's buffer cache would count in whichever pass fills it
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['setup']}/{spec['variant']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _prepare(args) -> str:
    tokenizer = Path(args.smollm2)
    if not (tokenizer / "config.json").is_file():
        print(f"making SmolLM2 in {tokenizer} ...", file=sys.stderr)
        subprocess.run(["bash", str(GET_SMOLLM2), str(tokenizer)], check=True, stdout=subprocess.DEVNULL)
    return str(tokenizer)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def _cpu(run: dict) -> float:
    """CPU seconds per real token of a run (its process's CPU time of the timed pass)."""
    return run.get("cpu_seconds", run["seconds"]) / run["real_tokens"]


def table(results: dict, args) -> str:
    columns = [
        "setup", "scoring", "project tok/s", "naive tok/s", "speed-up", "decoder-only tok/s",
        "project / bare forward (prompt: ≥ 0.9), wall (CPU)", "project / decoder-only, wall (CPU)", "static vs dynamic KV cache, wall (CPU)",
        "project peak extra MiB",
        "decoder-only peak extra MiB", "memory ratio (≤ 1.3)", "naive peak extra MiB",
        "real/processed project (≥ 0.9)", "real/processed naive",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]
    for setup, runs in results.items():
        floor = runs["decoder-only"]
        rows = [(source, f"project-{source}") for source in args.sources]
        if "generated" in args.sources and "project-generated-dynamic" in runs:
            rows.insert(rows.index(("generated", "project-generated")) + 1, ("generated, dynamic cache",
                                                                              "project-generated-dynamic"))
        for source, variant in rows:
            ours, naive = runs[variant], runs[f"naive-{source.split(',')[0]}"]
            ours_rate = ours["real_tokens"] / ours["seconds"]
            naive_rate = naive["real_tokens"] / naive["seconds"]
            ratio = ours["peak_extra_bytes"] / max(floor["peak_extra_bytes"], 1)
            floor_rate = floor["real_tokens"] / floor["seconds"]
            dynamic = runs.get("project-generated-dynamic") if variant == "project-generated" else None
            versus = (f"{dynamic['seconds'] / ours['seconds']:.2f}x ({_cpu(dynamic) / _cpu(ours):.2f}x)"
                      if dynamic else "")
            # The same real tokens on both sides: the ratio of rates is the inverse ratio of times.
            cpu_ratio = _cpu(floor) / _cpu(ours)
            bare = runs.get("forward")
            versus_bare = (f"{ours_rate / (bare['real_tokens'] / bare['seconds']):.2f} ({_cpu(bare) / _cpu(ours):.2f})"
                           if bare else "")
            lines.append(
                f"| {setup} | {source} | {ours_rate:,.0f} | {naive_rate:,.0f} | {ours_rate / naive_rate:.1f}x | "
                f"{floor_rate:,.0f} | {versus_bare} | {ours_rate / floor_rate:.2f} ({cpu_ratio:.2f}) | {versus} | "
                f"{_mib(ours['peak_extra_bytes'])} | "
                f"{_mib(floor['peak_extra_bytes'])} | {ratio:.2f} | "
                f"{_mib(naive['peak_extra_bytes'])} | {ours['real_tokens'] / ours['processed_tokens']:.3f} | "
                f"{naive['real_tokens'] / naive['processed_tokens']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--setups", nargs="+", default=["smollm2", "random-llama"], choices=["smollm2", "random-llama"])
    parser.add_argument("--sources", nargs="+", default=["prompt", "generated"], choices=["prompt", "generated"])
    parser.add_argument("--num-prompts", type=int, default=192, help="prompts scored by the project's passes")
    parser.add_argument("--naive-prompts", type=int, default=16, help="prompts scored by the naive passes (a rate)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16, help="continuation length in generated scoring")
    parser.add_argument("--pad-to", type=int, default=512, help="padded width of the naive passes")
    parser.add_argument("--memory-batches", type=int, default=1, help="batches (the widest first) of the memory pass")
    parser.add_argument("--memory-repeats", type=int, default=2, help="memory passes; the least peak is reported")
    parser.add_argument("--logits-chunk-size", type=int, default=0, help="0: the module's default")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt sample")
    parser.add_argument("--smollm2", default="/tmp/smollm2", help="SmolLM2-135M-Instruct folder (made if missing)")
    parser.add_argument("--flan", default=str(DEFAULT_FLAN))
    parser.add_argument("--cache-dir", default=None, help="tokenized-pool cache (default: the datasets cache)")
    parser.add_argument("--no-dynamic", action="store_true", help="no project-generated-dynamic variant")
    parser.add_argument("--note", default="", help="a line for the report (e.g. the machine's load)")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/scoring-<device>.md")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = _prepare(args)
    base = dict(
        tokenizer=tokenizer, flan=args.flan, num_prompts=args.num_prompts, naive_prompts=args.naive_prompts,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, pad_to=args.pad_to, device=device,
        threads=args.threads, seed=args.seed, cache_dir=args.cache_dir, logits_chunk_size=args.logits_chunk_size,
        memory_batches=args.memory_batches, memory_repeats=args.memory_repeats,
    )
    variants = ["decoder-only", "forward"] + [f"{kind}-{source}" for source in args.sources for kind in ("project", "naive")]
    if "generated" in args.sources and not args.no_dynamic:
        variants.insert(variants.index("project-generated") + 1, "project-generated-dynamic")
    variants = [v for v in variants if not args.only or v in args.only]
    results: dict[str, dict] = {}
    started = time.time()
    load_before = os.getloadavg()[0]
    for setup in args.setups:
        for variant in variants:
            t0 = time.time()
            out = _run_worker(dict(base, setup=setup, variant=variant))
            results.setdefault(setup, {})[variant] = out
            print(
                f"{setup:13s} {variant:18s} {out['prompts']:5d} prompts {out['seconds']:7.1f} s "
                f"peak extra {_mib(out['peak_extra_bytes']):>7s} MiB  mean entropy {out['mean_entropy']:.3f}  "
                f"(wall {time.time() - t0:.0f} s)",
                file=sys.stderr, flush=True,
            )
    if device == "cuda":
        hardware = torch.cuda.get_device_name()
    else:
        hardware = f"{platform.processor() or platform.machine()}, {args.threads} threads"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (
        f"# Scoring benchmark ({device}: {hardware})\n\n"
        f"{args.num_prompts} FLAN v2 CoT prompts (seed {args.seed}; naive passes on {args.naive_prompts} of them), "
        f"batch size {args.batch_size}, max_new_tokens {args.max_new_tokens}, naive width {args.pad_to}, "
        f"fp32; torch {torch.__version__}; load average {load_before:.1f} at the start, {load:.1f} at the end; "
        f"total {time.time() - started:.0f} s." + (f" {args.note}" if args.note else "") + "\n\n"
    )
    details = "\n".join(
        f"- {setup}/{name}: {r['prompts']} prompts, {r['real_tokens']} real prompt tokens, "
        f"{r['processed_tokens']} processed, {r['scored_positions']:.0f} scored positions, {r['seconds']:.1f} s, "
        f"({r.get('cpu_seconds', float('nan')):.1f} s CPU), peak extra {_mib(r['peak_extra_bytes'])} MiB, "
        f"mean entropy {r['mean_entropy']:.3f}"
        for setup, runs in results.items() for name, r in runs.items()
    )
    report = header + table(results, args) + "\n\nRaw measurements:\n\n" + details + "\n"
    print(report)
    output = Path(args.output or REPO / "benchmarks" / "results" / f"scoring-{device}.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    previous = ""
    if output.exists():  # the latest run (headings one level down) joins the earlier ones
        top, _, older = output.read_text().partition(PREVIOUS_RUNS)
        top = "\n".join("##" + line if line.startswith("#") else line for line in top.strip().splitlines())
        previous = f"\n{PREVIOUS_RUNS}\n\n{top}\n\n{older.strip()}\n".replace("\n\n\n", "\n\n")
    output.write_text(report + previous)
    print(f"written to {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
