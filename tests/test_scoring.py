"""Uncertainty scores (BRIEF §2), checked against a naive reference written independently here.

The reference runs one example at a time (no padding), takes the full logits of the whole sequence
from a float64 copy of the model, and applies the definitions literally; the module's batched,
left-padded, chunked ``predict_step`` must agree with it to 1e-5.
"""

import copy
import json
import math

import numpy as np
import pytest
import torch

from lightning_al.data.sources import LocalFile, SyntheticTasks
from lightning_al.datamodule import ActiveLearningDataModule
from lightning_al.module import LoRALanguageModel
from lightning_al.scoring import SCORE_NAMES, chunked_token_statistics, per_example_scores, token_statistics
from lightning_al.strategies import (
    ConfidenceSampling,
    EntropySampling,
    MarginSampling,
    MinMarginSampling,
    top_k,
)

ATOL = 1e-5
MAX_NEW_TOKENS = 10
# A wide init (0.3 rather than 0.02) makes the distributions far from uniform; seeded so that no
# greedy step is a near tie (checked in `reference_scores`). Larger weights (init 0.5, LoRA 0.5)
# saturate the attention and float32 itself drifts ~1e-5 from float64: these keep it near 2e-6.
INIT_SEED = 3
LORA_STD = 0.1
MODEL_CONFIG = {
    "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 256, "initializer_range": 0.3,
}
# Absolute position embeddings: left padding must not shift a prompt's positions.
GPT2_CONFIG = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256, "initializer_range": 0.1}
# A token the random model often produces greedily, made an extra end-of-turn token so that the
# continuations of one batch stop at different steps (the char tokenizer's own <|im_end|> is rare).
EXTRA_STOP_TOKEN = 52


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(
    source: str, chunk: int = 7, extra_stop: bool = True, config: dict | None = None, modules_to_save=None,
    init_seed: int = INIT_SEED,
) -> LoRALanguageModel:
    model = LoRALanguageModel(
        config=config or MODEL_CONFIG, tokenizer="char", score_source=source, max_new_tokens=MAX_NEW_TOKENS,
        logits_chunk_size=chunk, init_seed=init_seed, lora_modules_to_save=modules_to_save,
    )
    model.configure_model()
    # LoRA B starts at zero; random adapter weights make a wrongly bypassed adapter visible (and a
    # module trained in full, when there is one, differ from its original).
    generator = torch.Generator().manual_seed(init_seed)
    with torch.no_grad():
        for name, param in model.adapter_state().items():
            noise = torch.randn(param.shape, generator=generator)
            if "modules_to_save" in name:
                param.add_(noise * 0.1)  # a trained copy: near its original, whose scale keeps float32 accurate
            else:
                param.copy_(noise * LORA_STD)
    if extra_stop:
        model.model.get_base_model().generation_config.eos_token_id = [model.tokenizer.eos_token_id, EXTRA_STOP_TOKEN]
    return model.eval()


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    dm = ActiveLearningDataModule(
        SyntheticTasks(num_examples=30, min_length=1, max_length=24, seed=3), tokenizer="char", validation_size=0,
        eval_batch_size=10, score_batch_tokens=None, cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def mixed_indices(datamodule):
    """20 pool indices that span the range of prompt lengths: two batches of mixed lengths."""
    order = np.argsort(datamodule.prompt_lengths, kind="stable")
    return np.sort(order[np.linspace(0, len(order) - 1, 20).round().astype(int)])


def module_scores(
    model: LoRALanguageModel, dm, indices, mixed: bool = True, whole_prompt: bool = False
) -> dict[str, np.ndarray]:
    """predict_step over the score dataloader, as float64 arrays aligned with sorted ``indices``.
    ``whole_prompt``: set each prompt's content span to all of it, as when there is no chat template."""
    parts = []
    with torch.no_grad():
        for batch in dm.score_dataloader(indices):
            if whole_prompt:
                batch["content_start"] = torch.zeros_like(batch["content_start"])
                batch["content_end"] = batch["attention_mask"].sum(1)
            widths = batch["attention_mask"].sum(1)
            if mixed:
                assert len(torch.unique(widths)) >= 3, "the batch should hold prompts of mixed lengths"
                mask = batch["attention_mask"]
                assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any(), "left padding"
            parts.append(model.predict_step(batch))
    out = {k: torch.cat([p[k] for p in parts]).detach().double().numpy() for k in ("index", *SCORE_NAMES)}
    order = np.argsort(out["index"])
    assert np.array_equal(out["index"][order], np.sort(indices))
    return {k: v[order] for k, v in out.items()}


# ------------------------------------------------------------------------ the naive reference
def _distribution_stats(logits: torch.Tensor, token: int) -> tuple[float, float, float]:
    p = torch.softmax(logits.double(), dim=-1)
    entropy = -torch.xlogy(p, p).sum()
    top = torch.sort(p, descending=True).values
    return float(entropy), float(torch.log(p[token])), float(top[0] - top[1])


def reference_scores(
    model: LoRALanguageModel, dm, indices, source: str, whole_prompt: bool = False
) -> dict[str, np.ndarray]:
    ref = copy.deepcopy(model.model).double().eval()
    stops = set(model.stop_token_ids)
    out = {k: [] for k in SCORE_NAMES}

    def full_logits(ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids])
        return ref(input_ids=x, attention_mask=torch.ones_like(x)).logits[0]

    with torch.no_grad():
        for i in np.sort(indices):
            ex = dm.pool[int(i)]
            ids = ex["input_ids"][: ex["prompt_length"]]  # the prompt only, never the response
            if source == "prompt":
                logits = full_logits(ids)
                start, end = (0, len(ids)) if whole_prompt else (ex["content_start"], ex["content_end"])
                targets = range(max(start, 1), end)  # the first token has no distribution before it
                stats = [_distribution_stats(logits[j - 1], ids[j]) for j in targets]
            elif source == "first":
                last = full_logits(ids)[-1]
                stats = [_distribution_stats(last, int(last.argmax()))]
            else:
                stats, seq = [], list(ids)
                for _ in range(MAX_NEW_TOKENS):
                    last = full_logits(seq)[-1]
                    top2 = torch.softmax(last, -1).topk(2).values
                    assert top2[0] - top2[1] > 1e-4, "near tie in the greedy continuation: choose another seed"
                    token = int(last.argmax())
                    stats.append(_distribution_stats(last, token))
                    seq.append(token)
                    if token in stops:
                        break
            entropy, logprob, margin = (np.array(s) for s in zip(*stats))
            out["entropy"].append(entropy.mean())
            out["confidence"].append(logprob.mean())
            out["margin"].append(margin.mean())
            out["min_margin"].append(margin.min())
            out["max_entropy"].append(entropy.max())
            out["num_tokens"].append(len(stats))
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("source", ["prompt", "first", "generated"])
def test_scores_match_naive_reference(source, datamodule, mixed_indices):
    model = make_model(source)
    ours = module_scores(model, datamodule, mixed_indices)
    expected = reference_scores(model, datamodule, mixed_indices, source)
    for name in SCORE_NAMES:
        np.testing.assert_allclose(ours[name], expected[name], rtol=0, atol=ATOL, err_msg=f"{source}: {name}")
    # The cases the comparison must cover are really there.
    if source == "prompt":
        # Chunking is exercised, and template tokens are left out (fewer scored tokens than prompt tokens).
        assert ours["num_tokens"].sum() > model.hparams.logits_chunk_size
        assert np.all(ours["num_tokens"] < datamodule.prompt_lengths[np.sort(mixed_indices)] - 1)
    if source == "generated":
        counts = ours["num_tokens"]
        assert counts.max() == MAX_NEW_TOKENS and counts.min() < MAX_NEW_TOKENS, "some stop early, some do not"
        assert len(np.unique(counts)) >= 3
    # Non-trivial distributions (a uniform one would hide sign and reduction errors).
    assert np.all(ours["entropy"] < math.log(len(model.tokenizer)) - 0.3)
    assert np.ptp(ours["entropy"]) > 0.05


@pytest.mark.parametrize("source", ["prompt", "first", "generated"])
def test_scores_match_naive_reference_modules_to_save(source, datamodule, mixed_indices):
    """Embeddings and LM head trained in full (as the demo config does for a random model)."""
    model = make_model(source, modules_to_save=["lm_head", "embed_tokens"])
    ours = module_scores(model, datamodule, mixed_indices)
    expected = reference_scores(model, datamodule, mixed_indices, source)
    for name in SCORE_NAMES:
        np.testing.assert_allclose(ours[name], expected[name], rtol=0, atol=ATOL, err_msg=f"{source}: {name}")


def test_prompt_source_from_the_first_token(datamodule, mixed_indices):
    """A content span that starts at token 0 (no chat template): scoring starts at token 1."""
    model = make_model("prompt")
    ours = module_scores(model, datamodule, mixed_indices, whole_prompt=True)
    expected = reference_scores(model, datamodule, mixed_indices, "prompt", whole_prompt=True)
    np.testing.assert_array_equal(ours["num_tokens"], datamodule.prompt_lengths[np.sort(mixed_indices)] - 1)
    for name in SCORE_NAMES:
        np.testing.assert_allclose(ours[name], expected[name], rtol=0, atol=ATOL, err_msg=name)


def test_prompt_source_with_nothing_to_score(datamodule, mixed_indices):
    """A batch without any scored position (empty content spans) gives NaN scores, 0 tokens."""
    model = make_model("prompt")
    batch = next(iter(datamodule.score_dataloader(mixed_indices)))
    batch["content_end"] = batch["content_start"].clone()
    with torch.no_grad():
        out = model.predict_step(batch)
    assert torch.equal(out["num_tokens"], torch.zeros_like(out["num_tokens"]))
    assert torch.isnan(out["entropy"]).all() and torch.isnan(out["min_margin"]).all()


@pytest.mark.parametrize("source", ["prompt", "first"])
def test_scores_match_naive_reference_absolute_positions(source, datamodule, mixed_indices):
    model = make_model(source, extra_stop=False, config=GPT2_CONFIG)
    ours = module_scores(model, datamodule, mixed_indices)
    expected = reference_scores(model, datamodule, mixed_indices, source)
    for name in SCORE_NAMES:
        np.testing.assert_allclose(ours[name], expected[name], rtol=0, atol=ATOL, err_msg=f"{source}: {name}")


@pytest.mark.parametrize("source", ["prompt", "generated"])
def test_scores_do_not_depend_on_batching_or_chunk_size(source, datamodule, mixed_indices):
    a = module_scores(make_model(source, chunk=7), datamodule, mixed_indices)
    b = module_scores(make_model(source, chunk=100_000), datamodule, mixed_indices)
    for name in SCORE_NAMES:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=ATOL, err_msg=name)


def test_adapter_changes_the_scores(datamodule, mixed_indices):
    """The scores come from the adapted model: zeroing the perturbed LoRA weights changes them."""
    model = make_model("prompt")
    with_adapter = module_scores(model, datamodule, mixed_indices)
    with torch.no_grad():
        for param in model.adapter_state().values():
            param.zero_()
    without = module_scores(model, datamodule, mixed_indices)
    assert np.abs(with_adapter["entropy"] - without["entropy"]).max() > 1e-3


def test_generation_settings_of_the_model_do_not_change_generated_scores(datamodule, mixed_indices):
    """Scoring is greedy on the raw distributions, whatever sampling / repetition / length settings
    the model's own generation config carries (many hub models ship some)."""
    model = make_model("generated")
    plain = module_scores(model, datamodule, mixed_indices)
    generation_config = model.model.get_base_model().generation_config
    generation_config.repetition_penalty = 1.8
    generation_config.no_repeat_ngram_size = 2
    generation_config.min_new_tokens = 4
    generation_config.suppress_tokens = [EXTRA_STOP_TOKEN + 1]
    generation_config.do_sample, generation_config.temperature, generation_config.top_k = True, 0.3, 5
    configured = module_scores(model, datamodule, mixed_indices)
    for name in SCORE_NAMES:
        np.testing.assert_allclose(configured[name], plain[name], rtol=0, atol=ATOL, err_msg=name)


# ------------------------------------------------------------------------ no label leakage
def _write_pool(path, rows, responses):
    with open(path, "w") as handle:
        for row, response in zip(rows, responses):
            record = {"id": row["id"], "task": row["task"], "prompt": row["prompt"], "response": response}
            handle.write(json.dumps(record) + "\n")


@pytest.mark.parametrize("source", ["prompt", "first", "generated"])
def test_scores_never_read_the_reference_response(source, tmp_path):
    rows = SyntheticTasks(num_examples=12, min_length=1, max_length=16, seed=5).load().to_list()
    rng = np.random.default_rng(0)
    other = ["".join(rng.choice(list("xyz0123456789 "), size=rng.integers(1, 40))) for _ in rows]
    scores = []
    for name, responses in (("a", [r["response"] for r in rows]), ("b", other)):
        _write_pool(tmp_path / f"{name}.jsonl", rows, responses)
        dm = ActiveLearningDataModule(
            LocalFile(str(tmp_path / f"{name}.jsonl")), tokenizer="char", validation_size=0, eval_batch_size=5,
            cache_dir=str(tmp_path / f"cache-{name}"),
        )
        dm.setup("fit")
        scores.append((dm, module_scores(make_model(source), dm, np.arange(len(rows)), mixed=False)))
    (dm_a, a), (dm_b, b) = scores
    assert not np.array_equal(dm_a.response_lengths, dm_b.response_lengths)
    for name in SCORE_NAMES:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ------------------------------------------------------------------------ the statistics themselves
def test_token_statistics_known_answers():
    vocab = 50
    uniform = token_statistics(torch.zeros(3, vocab), torch.tensor([0, 7, 49]))
    torch.testing.assert_close(uniform["entropy"], torch.full((3,), math.log(vocab)))
    torch.testing.assert_close(uniform["logprob"], torch.full((3,), -math.log(vocab)))
    torch.testing.assert_close(uniform["margin"], torch.zeros(3))

    peaked = torch.zeros(2, vocab)
    peaked[0, 3] = peaked[1, 9] = 60.0
    greedy = token_statistics(peaked)  # next token None: the greedy one
    assert torch.all(greedy["entropy"] < 1e-20) and torch.all(greedy["entropy"] >= 0)
    torch.testing.assert_close(greedy["logprob"], torch.zeros(2))
    torch.testing.assert_close(greedy["margin"], torch.ones(2))
    forced = token_statistics(peaked, torch.tensor([0, 9]))
    torch.testing.assert_close(forced["logprob"], torch.tensor([-60.0, 0.0]))

    # p = (1/2, 1/4, 1/4): H = 1.5 log 2, margin 1/4 (the two largest probabilities, not logits).
    halves = torch.log(torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64)) + 3.0
    stats = token_statistics(halves, torch.tensor([2]))
    torch.testing.assert_close(stats["entropy"], torch.tensor([1.5 * math.log(2)], dtype=torch.float64))
    torch.testing.assert_close(stats["logprob"], torch.tensor([math.log(0.25)], dtype=torch.float64))
    torch.testing.assert_close(stats["margin"], torch.tensor([0.25], dtype=torch.float64))
    torch.testing.assert_close(token_statistics(halves)["logprob"], torch.tensor([math.log(0.5)], dtype=torch.float64))


def test_token_statistics_with_masked_out_tokens():
    """-inf logits (a token that can never follow) contribute 0 to the entropy, not NaN."""
    logits = torch.full((1, 6), float("-inf"))
    logits[0, :2] = 0.0
    stats = token_statistics(logits)
    torch.testing.assert_close(stats["entropy"], torch.tensor([math.log(2)]))
    torch.testing.assert_close(stats["margin"], torch.tensor([0.0]))


def test_token_statistics_bf16_computes_in_float32():
    generator = torch.Generator().manual_seed(0)
    logits32 = torch.randn(64, 1000, generator=generator) * 4
    logits16 = logits32.to(torch.bfloat16)
    next_tokens = torch.randint(0, 1000, (64,), generator=generator)
    stats = token_statistics(logits16, next_tokens)
    exact = token_statistics(logits16.double(), next_tokens)  # float64 on the very bf16 values
    for name, value in stats.items():
        assert value.dtype == torch.float32, name
        # float32 arithmetic: 1e-5 from the exact statistics of the bf16 logits (bf16 arithmetic is ~1e-2 off).
        torch.testing.assert_close(value, exact[name].float(), rtol=0, atol=1e-5)
    # and close to the statistics of the float32 logits they were rounded from
    reference = token_statistics(logits32, next_tokens)
    for name in stats:
        torch.testing.assert_close(stats[name], reference[name], rtol=0, atol=5e-2)


@pytest.mark.parametrize("bias", [False, True])
def test_chunked_statistics_equal_unchunked(bias):
    """Row chunks, and vocabulary blocks (online softmax) when the logits budget is below rows x vocab."""
    generator = torch.Generator().manual_seed(0)
    vocab = 1000
    head = torch.nn.Linear(16, vocab, bias=bias, dtype=torch.float64)
    torch.nn.init.normal_(head.weight, std=1.0, generator=generator)
    if bias:
        torch.nn.init.normal_(head.bias, std=3.0, generator=generator)
        with torch.no_grad():
            head.bias[:300] = float("-inf")  # tokens that can never follow, all of the first blocks
    hidden = torch.randn(23, 16, generator=generator, dtype=torch.float64)
    tokens = torch.randint(300 if bias else 0, vocab, (23,), generator=generator)
    tokens[:3] = torch.tensor([300 if bias else 0, vocab - 1, 512])  # first and last entries, a block boundary
    with torch.no_grad():
        for next_tokens in (tokens, None):
            full = token_statistics(head(hidden), next_tokens)
            cases = ((1, None), (5, None), (23, None), (1000, None), (5, 300), (7, 2600), (64, 512), (3, 10**6))
            for chunk, budget in cases:
                chunked = chunked_token_statistics(hidden, head, next_tokens, chunk, max_elements=budget)
                for name in full:
                    message = f"{chunk} {budget} {name}"
                    torch.testing.assert_close(chunked[name], full[name], rtol=0, atol=1e-12, msg=message)
            # A head that is not a plain linear layer is called whole, on fewer rows.
            wrapped = torch.nn.Sequential(head)
            chunked = chunked_token_statistics(hidden, wrapped, next_tokens, 16, max_elements=2500)
            for name in full:
                torch.testing.assert_close(chunked[name], full[name], rtol=0, atol=1e-12)


def test_chunked_statistics_respect_the_logits_budget(monkeypatch):
    """No more than ``max_elements`` logits exist at once, for a linear head (vocabulary blocks) and
    for any other head (fewer rows)."""
    head = torch.nn.Linear(16, 1000)
    hidden = torch.randn(50, 16)
    sizes = []
    linear = torch.nn.functional.linear

    def recording_linear(*args, **kwargs):
        out = linear(*args, **kwargs)
        sizes.append(out.numel())
        return out

    with torch.no_grad():
        full = token_statistics(head(hidden))
        monkeypatch.setattr(torch.nn.functional, "linear", recording_linear)
        for budget in (600, 5000, 20_000):
            sizes.clear()
            blocked = chunked_token_statistics(hidden, head, None, 32, max_elements=budget)
            assert sizes and max(sizes) <= max(budget, 256), (budget, max(sizes))
            torch.testing.assert_close(blocked["entropy"], full["entropy"], rtol=0, atol=1e-5)
            sizes.clear()
            other = chunked_token_statistics(hidden, torch.nn.Sequential(head), None, 32, max_elements=budget)
            assert max(sizes[1:]) <= max(budget, 1000), (budget, sizes)  # sizes[0]: one row, to learn the vocabulary
            torch.testing.assert_close(other["entropy"], full["entropy"], rtol=0, atol=1e-5)


def test_blocked_statistics_in_float32():
    """The online-softmax accumulation keeps float32 accuracy over a large vocabulary."""
    generator = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(64, 50_000, bias=False)
    torch.nn.init.normal_(head.weight, std=0.3, generator=generator)
    hidden = torch.randn(40, 64, generator=generator) * torch.linspace(0.1, 3, 40).unsqueeze(1)  # flat to peaked
    tokens = torch.randint(0, 50_000, (40,), generator=generator)
    with torch.no_grad():
        exact = token_statistics(head.double()(hidden.double()), tokens)
        head.float()
        blocked = chunked_token_statistics(hidden, head, tokens, 16, max_elements=16 * 4096)
    assert 0.01 < exact["entropy"].min() and exact["entropy"].max() > 8
    for name in exact:
        assert blocked[name].dtype == torch.float32
        torch.testing.assert_close(blocked[name].double(), exact[name], rtol=0, atol=1e-5, msg=name)


def test_blocked_statistics_use_the_trained_head():
    """A head trained in full (peft modules_to_save): its trained copy is the one that scores."""
    model = make_model("prompt", config=dict(MODEL_CONFIG, vocab_size=600), modules_to_save=["lm_head"])
    head = model.model.get_base_model().get_output_embeddings()
    hidden = torch.randn(30, MODEL_CONFIG["hidden_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = token_statistics(head(hidden))
        original = token_statistics(head.original_module(hidden))
        blocked = chunked_token_statistics(hidden, head, None, 8, max_elements=8 * 300)  # 2 blocks of 300
    assert (full["entropy"] - original["entropy"]).abs().max() > 1e-2
    for name in full:
        torch.testing.assert_close(blocked[name], full[name], rtol=0, atol=1e-5)


def test_per_example_scores_reduction():
    stats = {
        "entropy": torch.tensor([1.0, 3.0, 2.0, 0.5, 0.1, 0.6], dtype=torch.float64),
        "logprob": torch.tensor([-1.0, -2.0, -3.0, -0.5, -0.1, -0.3], dtype=torch.float64),
        "margin": torch.tensor([0.2, 0.4, 0.9, 0.1, 0.8, 0.3], dtype=torch.float64),
    }
    example = torch.tensor([0, 0, 1, 2, 2, 2])  # example 3 has no scored token
    scores = per_example_scores(stats, example, 4)
    nan = float("nan")
    expected = {
        "entropy": [2.0, 2.0, 0.4, nan],
        "confidence": [-1.5, -3.0, -0.3, nan],
        "margin": [0.3, 0.9, 0.4, nan],
        "min_margin": [0.2, 0.9, 0.1, nan],
        "max_entropy": [3.0, 2.0, 0.6, nan],
        "num_tokens": [2, 1, 3, 0],
    }
    assert set(scores) == set(SCORE_NAMES)
    for name, values in expected.items():
        torch.testing.assert_close(scores[name], torch.tensor(values, dtype=torch.float64), equal_nan=True, msg=name)


# ------------------------------------------------------------------------ strategies rank the right way
def _logits_with_margin(top2: tuple[float, float], vocab: int = 20) -> torch.Tensor:
    """Logits of a distribution whose two most likely tokens have probabilities ``top2``."""
    rest = (1.0 - sum(top2)) / (vocab - 2)
    return torch.log(torch.tensor([*top2] + [rest] * (vocab - 2), dtype=torch.float64))


def test_strategies_pick_the_uncertain_examples():
    """Example 0: confident tokens. Example 1: uniformly uncertain (lowest mean margin, most entropy).
    Example 2: confident but for one near-tie token (lowest minimum margin). Example 3: confident."""
    confident, unsure, tie = (0.95, 0.01), (0.4, 0.2), (0.45, 0.44)
    tokens = {0: [confident] * 3, 1: [unsure] * 3, 2: [confident, confident, confident, tie], 3: [confident] * 2}
    rows = [(i, _logits_with_margin(t)) for i, ts in tokens.items() for t in ts]
    example = torch.tensor([i for i, _ in rows])
    stats = token_statistics(torch.stack([logits for _, logits in rows]))
    scores = {k: v.numpy() for k, v in per_example_scores(stats, example, 4).items()}
    candidates = np.array([10, 20, 30, 40])
    rng = np.random.default_rng(0)
    assert EntropySampling().select(candidates, scores["entropy"], 1, rng).tolist() == [20]
    assert ConfidenceSampling().select(candidates, scores["confidence"], 1, rng).tolist() == [20]
    assert MarginSampling().select(candidates, scores["margin"], 1, rng).tolist() == [20]
    assert MinMarginSampling().select(candidates, scores["min_margin"], 1, rng).tolist() == [30]
    # the two most certain are never picked before the uncertain ones
    assert EntropySampling().select(candidates, scores["entropy"], 2, rng).tolist() == [20, 30]
    assert MarginSampling().select(candidates, scores["margin"], 2, rng).tolist() == [20, 30]


def test_ties_are_broken_by_pool_order():
    scores = np.array([1.0, 2.0, 2.0, 0.0, 2.0, 0.0])
    assert top_k(scores, 2, highest=True).tolist() == [1, 2]
    assert top_k(scores, 4, highest=True).tolist() == [1, 2, 4, 0]
    assert top_k(scores, 1, highest=False).tolist() == [3]
    candidates = np.array([5, 8, 13, 21, 34, 55])
    rng = np.random.default_rng(0)
    assert EntropySampling().select(candidates, scores, 2, rng).tolist() == [8, 13]
    assert ConfidenceSampling().select(candidates, scores, 2, rng).tolist() == [21, 55]
    assert MarginSampling().select(candidates, np.zeros(6), 3, rng).tolist() == [5, 8, 13]
    # Many ties in a long pool (short arrays hide unstable sorts: they are insertion-sorted).
    many = np.random.default_rng(1).integers(0, 4, size=500).astype(float)
    for highest in (True, False):
        expected = sorted(range(len(many)), key=lambda i: -many[i] if highest else many[i])[:150]
        assert top_k(many, 150, highest=highest).tolist() == expected


# ------------------------------------------------------------------------ batches sized by tokens
def test_token_budget_batches_respect_the_budget_and_keep_the_order():
    from lightning_al.data.batching import token_budget_batches

    lengths = np.array([50, 40, 40, 12, 10, 10, 9, 3, 3, 3, 2])
    indices = np.argsort(-lengths, kind="stable")
    batches = token_budget_batches(indices, lengths, max_tokens=100, extra_tokens=10, max_rows=4)
    assert np.array_equal(np.concatenate(batches), indices)  # every index once, in order
    for batch in batches:
        width = lengths[batch].max() + 10
        assert len(batch) == 1 or len(batch) * width <= 100
        assert len(batch) <= 4
    assert [len(b) for b in batches] == [1, 2, 4, 4]  # 60 tokens alone, 2 x 50, then max_rows
    # A pass resumed at a batch boundary sees the same batches as an uninterrupted one.
    rest = token_budget_batches(indices[3:], lengths, 100, 10, 4)
    assert len(rest) == 2 and all(np.array_equal(a, b) for a, b in zip(rest, batches[2:]))


def test_token_budget_batch_sampler_splits_groups_and_takes_a_distributed_sampler():
    from torch.utils.data import DistributedSampler, SequentialSampler

    from lightning_al.data.batching import TokenBudgetBatchSampler

    lengths = np.array([30, 20, 20, 10, 9, 25, 24, 3, 3, 2])  # two groups, each sorted longest first
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    sampler = TokenBudgetBatchSampler(SequentialSampler(range(10)), lengths, max_tokens=60, extra_tokens=5,
                                      max_rows=3, groups=groups)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(10)) and len(sampler) == len(batches)
    for batch in batches:
        assert len(set(groups[batch])) == 1  # never two tasks in a batch
        assert len(batch) == 1 or len(batch) * (lengths[batch].max() + 5) <= 60
        assert len(batch) <= 3
    assert [len(b) for b in batches] == [1, 2, 2, 2, 3]  # 35 alone; 2 x 25; then a new group at 25 + 5
    # What Lightning does under DDP: the same batch sampler around each rank's distributed sampler.
    shards = [list(TokenBudgetBatchSampler(DistributedSampler(range(10), num_replicas=2, rank=r, shuffle=False),
                                           lengths, 60, 5, 3, groups)) for r in (0, 1)]
    assert sorted(i for shard in shards for b in shard for i in b) == list(range(10))
    assert all(len(set(groups[b])) == 1 for shard in shards for b in shard)


@pytest.mark.parametrize("source", ["prompt", "generated"])
def test_scores_do_not_depend_on_token_budget_batches(source, datamodule, mixed_indices):
    model = make_model(source)
    fixed = module_scores(model, datamodule, mixed_indices)
    datamodule.score_batch_tokens = 120
    try:
        sizes = [len(b["index"]) for b in datamodule.score_dataloader(mixed_indices, extra_tokens=MAX_NEW_TOKENS)]
        budgeted = module_scores(model, datamodule, mixed_indices, mixed=False)
    finally:
        datamodule.score_batch_tokens = None
    assert len(set(sizes)) > 1 and sum(sizes) == len(mixed_indices)  # batches of different sizes
    for name in SCORE_NAMES:
        np.testing.assert_allclose(budgeted[name], fixed[name], rtol=0, atol=ATOL, err_msg=name)


# ------------------------------------------------------------------------ the pass on every rank
class _TwoRanks:
    """A strategy whose all_gather puts a second rank's rows after this one's: their row count first, then each key's
    rows in call order, padded as that rank would pad them (with -1, to this rank's length, which must be the
    longer: a real all_gather refuses shapes that differ)."""

    root_device = torch.device("cpu")

    def __init__(self, other: dict[str, torch.Tensor]) -> None:
        self.other = iter([torch.tensor([len(other["index"])]), *other.values()])

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        theirs = next(self.other)
        theirs = torch.cat([theirs, theirs.new_full((len(tensor) - len(theirs), *theirs.shape[1:]), -1)])
        assert tensor.shape == theirs.shape, "all_gather needs one shape on every rank"
        return torch.stack([tensor, theirs])


def test_gather_examples_keeps_each_example_once_the_first_rank_s_row():
    from lightning_al.model.inference import gather_examples

    # Rank 1 holds example 0 again (DDP's padding), with another value: rank 0's row is kept.
    rank0 = {"index": torch.tensor([3, 0]), "score": torch.tensor([0.3, 0.0])}
    rank1 = {"index": torch.tensor([1, 0]), "score": torch.tensor([0.1, 9.0])}
    rows = gather_examples(_TwoRanks(rank1), rank0)
    assert rows["index"].tolist() == [0, 1, 3]
    assert rows["score"].tolist() == pytest.approx([0.0, 0.1, 0.3])


def test_gather_examples_takes_shards_of_different_sizes():
    """Lightning's predict loop shards without repeats: 3 rows on this rank, 1 on the other, all kept."""
    from lightning_al.model.inference import gather_examples

    three = {"index": torch.tensor([4, 0, 2]), "score": torch.tensor([0.4, 0.0, 0.2])}
    one = {"index": torch.tensor([1]), "score": torch.tensor([0.1])}
    for mine, theirs in ((three, one), (one, three)):  # this rank's shard the longer, then the shorter (padded)
        rows = gather_examples(_TwoRanks(theirs), mine)
        assert rows["index"].tolist() == [0, 1, 2, 4]
        assert rows["score"].tolist() == pytest.approx([0.0, 0.1, 0.2, 0.4])


def test_score_pool_equals_predict_step_and_restores_training_mode(datamodule, mixed_indices):
    from lightning.pytorch import Trainer

    from lightning_al.model.inference import run_and_gather
    from lightning_al.scoring.pool import score_pool

    model = make_model("prompt").train()
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    scores = score_pool(trainer, model, datamodule, mixed_indices)
    assert model.training  # back in training mode, as the loop left it
    expected = module_scores(model.eval(), datamodule, mixed_indices)
    for name in SCORE_NAMES:
        np.testing.assert_array_equal(scores[name], expected[name], err_msg=name)

    def fail(outputs):
        raise RuntimeError("stopped")

    model.train()
    with pytest.raises(RuntimeError, match="stopped"):
        run_and_gather(trainer, model, datamodule.score_dataloader(mixed_indices),
                       lambda batch: {"index": batch["index"]}, after_batch=fail)
    assert model.training  # restored in `finally`, however the pass ends
