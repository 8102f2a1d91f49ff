"""The first run of the project's CUDA paths: one prepared script, under 8 minutes on one H200-class GPU.

    python benchmarks/gpu_check.py                                # CUDA: writes benchmarks/results/gpu-check-cuda.md
    python benchmarks/gpu_check.py --tiny --device cpu --output /tmp/gpu-check-cpu.md   # the suite's smoke test

What it measures, on the Llama-3.2-1B architecture with random weights (no download; ``--tiny``: a
4-layer toy of the same shape family), in bf16 on CUDA:
  1. prompt-mode scoring (``predict_step``, score_source=prompt): prompt tokens/s, peak memory, and the
     ratio to a bare decoder forward over the same batches (the floor scoring cannot beat);
  2. generated-mode scoring (greedy continuation, KV cache): prompt + generated tokens/s, peak memory, with
     the default static KV cache (``model.generation_cache=static``), transformers' dynamic cache, and on
     CUDA the static cache with ``torch.compile`` (``compile``; its first batches compile, so its rate
     includes compilation), each row's speed-up over the dynamic cache and its scores' largest difference
     from the default's;
  3. LoRA training steps (forward, backward, AdamW): tokens/s and model FLOPs utilisation
     (6 x non-embedding parameters x tokens / s, over the GPU's dense bf16 peak given by --peak-tflops);
  4. a 2-round active-learning run end to end through the CLI (tiny random Llama, synthetic pool,
     entropy acquisition), checked by its metrics.jsonl.
Each figure is a ratio or a rate from this one run; every check prints PASS or FAIL and the exit
status is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

LLAMA_1B = dict(
    model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096, rope_theta=500000.0,
    tie_word_embeddings=True,
)
TINY = dict(LLAMA_1B, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=4096)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _peak_mib(device: torch.device, before: int) -> float | None:
    if device.type != "cuda":
        return None  # the CPU figures of bench_scoring.py measure the resident set properly
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _prompt_batches(num_batches: int, batch_size: int, min_len: int, max_len: int, vocab: int, seed: int = 0):
    """Left-padded batches of random prompts of mixed lengths, as ``score_dataloader`` serves them."""
    from lightning_al.data.batching import CausalLMCollator

    generator = torch.Generator().manual_seed(seed)
    collate = CausalLMCollator(0, padding_side="left", prompt_only=True)
    batches = []
    for b in range(num_batches):
        rows = []
        for i in range(batch_size):
            length = int(torch.randint(min_len, max_len + 1, (1,), generator=generator))
            ids = torch.randint(5, vocab, (length,), generator=generator).tolist()
            rows.append({"input_ids": ids, "index": b * batch_size + i, "prompt_length": length,
                         "content_start": 0, "content_end": length})
        batches.append(collate(rows))
    return batches


def _module(config: dict, source: str, dtype: str, device: torch.device, max_new_tokens: int, cache: str = "static"):
    from lightning_al.module import LoRALanguageModel

    module = LoRALanguageModel(config=config, tokenizer="char", dtype=dtype, score_source=source,
                               max_new_tokens=max_new_tokens, lora_r=16, lora_dropout=0.0, generation_cache=cache)
    module.configure_model()
    return module.to(device).eval()


@torch.inference_mode()
def check_scoring(args, device: torch.device, config: dict) -> list[dict]:
    batches = _prompt_batches(args.batches, args.batch_size, args.min_len, args.max_len, config["vocab_size"])
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    prompt_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    rows = []
    decoder_seconds = None
    # The default (static KV cache) first: the others are compared with it.
    variants = [("prompt", "static"), ("generated", "static"), ("generated", "dynamic")]
    variants += [("generated", "compile")] if device.type == "cuda" else []
    scores: dict[str, torch.Tensor] = {}
    seconds_of: dict[str, float] = {}
    for source, cache in variants:
        torch.manual_seed(0)  # the same random weights for every variant: comparable scores
        module = _module(config, source, args.dtype, device, args.max_new_tokens, cache)
        try:
            module.predict_step(batches[0])  # warm-up (kernels, allocator; compile's first graphs)
        except Exception as error:  # noqa: BLE001 - the optional compiled path: reported, the others go on
            if cache != "compile":
                raise
            print(f"scoring with {CACHE_NAMES[cache]} FAILED: {type(error).__name__}: {error}")
            rows.append({"check": f"scoring, {source} ({CACHE_NAMES[cache]}): FAILED, {type(error).__name__}",
                         "seconds": float("nan"), "prompt tok/s": float("nan"), "generated tok/s": None,
                         "peak MiB": None, "vs decoder forward": None, "failed": True})
            continue
        if source == "prompt":
            decoder = module.model.get_base_model().get_decoder()
            _sync(device)
            start = time.perf_counter()
            for b in batches:
                decoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            _sync(device)
            decoder_seconds = time.perf_counter() - start
        before = _reset_peak(device)
        _sync(device)
        start = time.perf_counter()
        generated = 0
        entropies = []
        for b in batches:
            out = module.predict_step(b)
            generated += int(out["num_tokens"].sum()) if source == "generated" else 0
            bad = ~torch.isfinite(out["entropy"]) & (out["num_tokens"] > 0)
            if bad.any():
                raise AssertionError(f"{source} ({cache} cache): non-finite scores on {args.device}")
            entropies.append(out["entropy"].float().cpu())
        _sync(device)
        seconds = time.perf_counter() - start
        name = f"scoring, {source}" + ("" if cache == "static" else f" ({CACHE_NAMES[cache]})")
        if source == "generated":
            scores[cache], seconds_of[cache] = torch.cat(entropies), seconds
        rows.append({
            "check": name, "seconds": seconds, "prompt tok/s": prompt_tokens / seconds,
            "generated tok/s": generated / seconds if generated else None, "peak MiB": _peak_mib(device, before),
            "vs decoder forward": (decoder_seconds / seconds) if source == "prompt" else None,
        })
        del module
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for row in rows:
        if row.get("failed"):
            continue
        cache = next((c for c, n in CACHE_NAMES.items() if row["check"].endswith(f"({n})")), "static")
        if row["check"].startswith("scoring, generated") and "dynamic" in seconds_of:
            row["vs dynamic"] = seconds_of["dynamic"] / seconds_of[cache]
            # Same weights, same prompts: the caches differ only in rounding (float32: ~1e-6; bf16 more, and a
            # greedy near-tie may then take another token).
            row["max |d entropy|"] = float((scores[cache] - scores["static"]).abs().nan_to_num().max())
    return rows


#: How the table names the KV caches of generated scoring (``model.generation_cache``).
CACHE_NAMES = {"static": "static cache", "dynamic": "dynamic cache", "compile": "static cache + torch.compile"}


def check_training(args, device: torch.device, config: dict) -> dict:
    module = _module(config, "prompt", args.dtype, device, 1).train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, config["vocab_size"], (args.train_batch, args.train_len), generator=generator).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def step() -> None:
        loss = module(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    before = _reset_peak(device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    tokens = args.train_steps * ids.numel()
    base = module.model.get_base_model()
    embedding = base.get_input_embeddings().weight.numel()
    non_embedding = sum(p.numel() for p in base.parameters()) - embedding
    # The head (tied to the embedding here) does real matmuls: count it, as PaLM's MFU does.
    flops = 6 * (non_embedding + embedding) * tokens / seconds
    mfu = flops / (args.peak_tflops * 1e12) if device.type == "cuda" else None
    return {"check": "LoRA training", "seconds": seconds, "prompt tok/s": tokens / seconds, "generated tok/s": None,
            "peak MiB": _peak_mib(device, before), "vs decoder forward": None, "MFU": mfu}


def check_active_learning_run(args) -> dict:
    """Two rounds of entropy acquisition, retraining and evaluation, through the CLI, in a temp folder."""
    config = {k: TINY[k] for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "num_key_value_heads", "max_position_embeddings")}
    options = {
        "seed_everything": 0, "run_name": "gpu-check", "model.config": json.dumps(config), "model.tokenizer": "char",
        "model.max_new_tokens": 8, "model.dtype": "float32", "model.score_source": "generated",
        "data.pool": "lightning_al.data.sources.SyntheticTasks",
        "data.pool.init_args.num_examples": 60 if args.tiny else 400, "data.pool.init_args.max_length": 8,
        "data.validation_size": 8 if args.tiny else 32, "data.max_length": 64, "data.batch_size": 16,
        "data.eval_batch_size": 32, "loop.budget": 16 if args.tiny else 128, "loop.rounds": 2,
        "loop.epochs_per_round": 1 if args.tiny else 2,
        "loop.strategy": "lightning_al.strategies.EntropySampling",
        # The held-out answers' default length (256 new tokens) is most of a tiny run's time and adds nothing
        # to a check that the run goes end to end.
        "data.evaluations": json.dumps([{"class_path": "lightning_al.evaluation.HeldOutAnswers",
                                         "init_args": {"max_new_tokens": 8 if args.tiny else 64}}]),
        "trainer.accelerator": "cuda" if args.device == "cuda" else "cpu", "trainer.devices": 1,
        "trainer.enable_progress_bar": False, "trainer.num_sanity_val_steps": 0,
    }
    from lightning_al.cli import main as cli

    here = Path.cwd()
    with tempfile.TemporaryDirectory() as folder:
        # In this process (the CLI's own entry, as `lightning-al fit` runs it): outputs go under the temp folder.
        os.chdir(folder)
        start = time.perf_counter()
        try:
            cli(["fit", *(f"--{k}={v}" for k, v in options.items()), f"--data.cache_dir={folder}/cache"])
            error = None
        except Exception as failure:  # noqa: BLE001 - reported as a failed check, with its message
            error = failure
        finally:
            os.chdir(here)
        seconds = time.perf_counter() - start
        metrics = Path(folder) / "checkpoints" / "gpu-check" / "metrics.jsonl"
        rounds = sorted({json.loads(line)["round"] for line in metrics.read_text().splitlines()}) if metrics.exists() else []
        ok = error is None and rounds == [0, 1]
        if error is not None:
            print(f"2-round AL run failed: {type(error).__name__}: {error}")
    return {"check": "2-round AL run (CLI)", "seconds": seconds, "passed": ok, "rounds": rounds}


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a toy model and a few batches: the CPU smoke test")
    parser.add_argument("--dtype", default=None, help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--batches", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200: 989)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    tiny = args.tiny
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.batches = args.batches or (2 if tiny else 16)
    args.batch_size = args.batch_size or (4 if tiny else 32)
    args.max_new_tokens = args.max_new_tokens or (4 if tiny else 128)
    args.min_len, args.max_len = (8, 24) if tiny else (64, 512)
    args.train_batch, args.train_len, args.train_steps = (2, 32, 2) if tiny else (8, 1024, 10)
    args.output = args.output or REPO / "benchmarks" / "results" / f"gpu-check-{args.device}.md"
    device = torch.device(args.device)
    config = TINY if tiny else LLAMA_1B

    rows = check_scoring(args, device, config)
    rows.append(check_training(args, device, config))
    run = check_active_learning_run(args)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    lines = [
        f"# GPU check: {'tiny smoke test' if tiny else 'Llama-3.2-1B architecture, random weights'} on {name}",
        "",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, dtype {args.dtype}; scoring: {args.batches} batches "
        f"of {args.batch_size} prompts of {args.min_len}-{args.max_len} tokens, {args.max_new_tokens} new tokens; "
        f"training: batches of {args.train_batch} x {args.train_len} tokens. Produced by `benchmarks/gpu_check.py`.",
        "",
        "| check | seconds | prompt tok/s | generated tok/s | peak MiB | ratio to decoder forward | MFU "
        "| speed-up vs dynamic cache | max abs entropy difference vs default |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['check']} | {r['seconds']:.2f} | {r['prompt tok/s']:.0f} | {_fmt(r['generated tok/s'], '.0f')} "
                     f"| {_fmt(r['peak MiB'], '.0f')} | {_fmt(r['vs decoder forward'], '.2f')} | {_fmt(r.get('MFU'), '.1%')} "
                     f"| {_fmt(r.get('vs dynamic'), '.2f')} | {_fmt(r.get('max |d entropy|'), '.1e')} |")
    lines += ["", f"2-round active-learning run through the CLI: {'PASS' if run['passed'] else 'FAIL'} "
              f"({run['seconds']:.0f} s, rounds {run['rounds']})", ""]
    text = "\n".join(lines)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    failed = [r["check"] for r in rows if r.get("failed")]
    if failed:
        print("FAILED: " + "; ".join(failed))
    return 0 if run["passed"] and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
