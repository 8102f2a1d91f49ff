"""Generated-mode scoring and chain-of-thought generation against their floor, in one run.

    python benchmarks/bench_generation.py                  # SmolLM2, 96 FLAN CoT prompts, CPU: ~6 min on 2 cores
    python benchmarks/bench_generation.py --device cuda --num-prompts 2000 --max-new-tokens 128

The floor of a generation pass over a set of prompts is what its two parts cost at their best,
measured in this same run: the prompts' prefill (the decoder over the project's length-sorted
batches) plus the tokens it generates, each at the best per-token decode cost found over batch
sizes (--decode-batch-sizes: a batch of prompts of the median length, timed over all its decode
steps, with every row kept generating). ``floor / pass`` is the share of the pass that is
necessary work: 1.0 means nothing is wasted on padding, finished rows or per-step overhead.

Variants, each in the same process, one after another:
  scoring-rows-<n>      ``LoRALanguageModel.predict_step`` (score_source=generated) over
                        ``score_dataloader`` with batches of n prompts (``data.eval_batch_size``)
  scoring-tokens-<t>    the same with ``data.score_batch_tokens = t``
  cot-rows-<n> / cot-tokens-<t>   ``greedy_generate`` (the evaluation sets' generation) over the same
                        batches with --cot-new-tokens
Results are written to ``benchmarks/results/generation-<device>.md``.
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
GET_SMOLLM2 = REPO.parent / "shared" / "tools" / "get-smollm2"


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


@torch.inference_mode()
def _timed(fn, batches, device) -> tuple[float, float]:
    """(seconds, generated tokens) of ``fn`` over the batches."""
    _sync(device)
    start = time.perf_counter()
    generated = 0.0
    for batch in batches:
        generated += fn({k: v.to(device) for k, v in batch.items()})
    _sync(device)
    return time.perf_counter() - start, generated


@torch.inference_mode()
def _decode_cost(model, dm, indices, batch_size: int, steps: int, device) -> float:
    """Seconds per generated token at ``batch_size``: a batch of median-length prompts, every row kept
    generating (no end-of-turn stop), the prefill subtracted."""
    from transformers import GenerationConfig

    order = indices[np.argsort(dm.prompt_lengths[indices], kind="stable")]
    middle = len(order) // 2
    chosen = order[max(0, middle - batch_size // 2):][:batch_size]
    chosen = np.resize(chosen, batch_size)  # fewer prompts than the batch: repeat them
    batch = next(iter(_loader(dm, chosen, batch_size, None, 0)))
    batch = {k: v.to(device) for k, v in batch.items()}
    pad = model.tokenizer.pad_token_id

    def run(new: int) -> float:
        config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None,
                                  pad_token_id=pad)
        _sync(device)
        start = time.perf_counter()
        model.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             generation_config=config)
        _sync(device)
        return time.perf_counter() - start

    run(2)  # warm-up
    # Each length timed on its own (least of 3), so that the prefill's noise does not land in the
    # difference; a difference at or below 0 (prefill noise larger than the decode steps) is no measurement.
    prefill_only = min(run(1) for _ in range(3))
    decoding = min(run(4 * steps + 1) for _ in range(3)) - prefill_only
    return decoding / (4 * steps * batch_size) if decoding > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generated scoring's continuation length")
    parser.add_argument("--cot-new-tokens", type=int, default=64, help="chain-of-thought generation length")
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 32], help="fixed batch sizes (eval_batch_size)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192], help="score_batch_tokens budgets")
    parser.add_argument("--decode-batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=str(Path.home() / ".cache" / "smollm2-135m-instruct"),
                        help="a causal LM folder or hub id (default: SmolLM2-135M-Instruct made by get-smollm2)")
    parser.add_argument("--flan", default=str(DEFAULT_FLAN))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--skip-cot", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    torch.set_num_threads(args.threads)
    if not (Path(args.model) / "config.json").is_file() and args.model.startswith("/"):
        subprocess.run(["bash", str(GET_SMOLLM2), args.model], check=True, stdout=subprocess.DEVNULL)
    device = torch.device(args.device)
    started = time.time()
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
    decode = {b: _decode_cost(model, dm, indices, b, args.max_new_tokens, device) for b in args.decode_batch_sizes}
    measured = [c for c in decode.values() if c == c]  # NaN: no measurement
    if not measured:
        raise SystemExit("no decode cost could be measured (prefill noise larger than the decode steps)")
    best_decode = min(measured)
    print(f"prefill {prefill:.1f} s; decode s/token by batch size: "
          + ", ".join(f"{b}: {c * 1e3:.2f} ms" for b, c in decode.items()), file=sys.stderr)

    def scoring(batch) -> float:
        return float(model.predict_step(batch)["num_tokens"].sum())

    stop_ids = model.stop_token_ids

    def cot(batch) -> float:
        texts = greedy_generate(model.model, model.tokenizer, batch["input_ids"], batch["attention_mask"],
                                args.cot_new_tokens, stop_ids)
        return float(sum(len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts))

    rows = []
    kinds = [("scoring", scoring, args.max_new_tokens)] + ([] if args.skip_cot else [("cot", cot, args.cot_new_tokens)])
    for kind, fn, extra in kinds:
        reference = None
        for label, n, t in [(f"rows-{n}", n, None) for n in args.rows] + [(f"tokens-{t}", None, t) for t in args.tokens]:
            batches = _loader(dm, indices, n, t, extra)
            seconds, generated = _timed(fn, batches, device)
            floor = prefill + generated * best_decode
            reference = reference or seconds
            rows.append((f"{kind}-{label}", len(batches), seconds, generated, floor / seconds, reference / seconds))
            print(f"{kind}-{label}: {len(batches)} batches, {seconds:.1f} s, {generated:.0f} generated, "
                  f"floor {floor:.1f} s", file=sys.stderr)

    hardware = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()}, {args.threads} threads"
    load = os.getloadavg()[0]
    lines = [
        f"# Generation benchmark ({args.device}: {hardware})", "",
        f"{Path(args.model).name}, {args.dtype}, {len(indices)} FLAN v2 CoT prompts ({prompt_tokens} prompt tokens, "
        f"seed {args.seed}); scoring {args.max_new_tokens} new tokens, CoT {args.cot_new_tokens}; torch "
        f"{torch.__version__}; load average at the end {load:.1f}; total {time.time() - started:.0f} s.", "",
        f"Floor parts: prefill {prefill:.2f} s; decode seconds per token by batch size: "
        + ", ".join(f"{b}: {c * 1e3:.2f} ms" for b, c in decode.items()) + f" (best {best_decode * 1e3:.2f} ms).", "",
        "| pass | batches | seconds | generated tokens | floor / pass (target ≥ 0.8) | speed-up vs first row |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {b} | {s:.1f} | {g:.0f} | {r:.2f} | {u:.2f}x |" for name, b, s, g, r, u in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    output = Path(args.output or REPO / "benchmarks" / "results" / f"generation-{args.device}.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)


if __name__ == "__main__":
    main()
