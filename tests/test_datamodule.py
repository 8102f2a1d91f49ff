"""The DataModule: tokenization cache, held-out split, state round trip, batching."""

import json

import numpy as np
import pytest

from lightning_al.data import formatting
from lightning_al.data.sources import FlanCoT, LocalFile, SyntheticTasks
from lightning_al.datamodule import ActiveLearningDataModule
from tests.conftest import SHARED


def make(tmp_path, **kwargs):
    kwargs.setdefault("pool", SyntheticTasks(num_examples=60, max_length=6))
    kwargs.setdefault("max_length", 64)
    dm = ActiveLearningDataModule(tokenizer="char", validation_size=10, cache_dir=str(tmp_path), **kwargs)
    dm.setup("fit")
    return dm


def test_tokenization_is_cached(tmp_path, monkeypatch):
    make(tmp_path)
    assert list((tmp_path / "lightning_al").glob("tokenized-*.arrow"))
    calls = []
    original = formatting.tokenize_batch
    monkeypatch.setattr("lightning_al.data.tokenized_pool.tokenize_batch",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    make(tmp_path)
    assert calls == [], "a second setup tokenized the pool again"
    make(tmp_path, max_length=48, max_truncated_fraction=1.0)  # another setting: a new cache entry
    assert calls


def test_predict_refuses_fewer_candidates_than_processes(tmp_path):
    """Lightning's predict loop gives each process its own candidates, without repeats: 3 candidates on 4
    processes (or none at all) get a clear error instead of the sampler's assertion or a hang in the gather."""
    from types import SimpleNamespace

    dm = make(tmp_path)
    dm.acquire(dm.unlabeled_indices()[3:], 0)
    dm.trainer = SimpleNamespace(world_size=3)
    assert len(dm.predict_dataloader().dataset) == 3
    dm.trainer = SimpleNamespace(world_size=4)
    with pytest.raises(ValueError, match="3 unlabeled pool examples to score on 4 processes"):
        dm.predict_dataloader()
    dm.acquire(dm.unlabeled_indices(), 1)
    dm.trainer = None
    with pytest.raises(ValueError, match="no unlabeled example"):
        dm.predict_dataloader()


def test_split_is_fixed_by_split_seed_and_state_round_trips(tmp_path):
    a, b = make(tmp_path), make(tmp_path)
    assert (a.held_out == b.held_out).all() and a.held_out.sum() == 10
    a.acquire(a.unlabeled_indices()[:5], 0)
    b.load_state_dict(a.state_dict())
    assert (b.labeled_indices() == a.labeled_indices()).all()
    with pytest.raises(RuntimeError, match="labeled or held-out"):
        b.acquire(b.labeled_indices()[:1], 1)
    c = make(tmp_path, split_seed=1)
    with pytest.raises(ValueError, match="different pool"):
        c.load_state_dict(a.state_dict())


def test_length_grouped_batches_have_little_padding(tmp_path):
    dm = make(tmp_path, pool=SyntheticTasks(num_examples=400, min_length=1, max_length=30), batch_size=8, max_length=128)
    dm.acquire(dm.unlabeled_indices(), 0)
    real = padded = 0
    for batch in dm.train_dataloader():
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
    assert real / padded > 0.9


@pytest.mark.skipif(not (SHARED / "data" / "flan_v2_cot").exists(), reason="needs ../shared/data")
def test_flan_cot_pool_truncation_is_counted(tmp_path):
    dm = make(tmp_path, pool=FlanCoT(path=str(SHARED / "data" / "flan_v2_cot" / "qasc_train.tsv")), max_length=128,
              max_truncated_fraction=1.0)  # most are cut at 128 characters: accepted here, counted below
    truncated = np.asarray(dm.pool["truncated"])
    lengths = dm.prompt_lengths + dm.response_lengths
    assert truncated.any() and (lengths <= 128).all()
    assert (dm.prompt_lengths <= dm.max_prompt_length).all()


def _synthetic_file(path, **kwargs):
    rows = SyntheticTasks(**kwargs).load().to_list()
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_file_pool_is_set_up_from_disk_like_the_same_pool_in_memory(tmp_path):
    """The same examples from a file (streamed to an Arrow file) and from memory: the same max_pool_size
    subset, the same held-out split, the same token ids."""
    spec = {"num_examples": 80, "max_length": 6, "seed": 3}
    path = _synthetic_file(tmp_path / "pool.jsonl", **spec)
    from_file = make(tmp_path / "a", pool=LocalFile(str(path)), max_pool_size=50)
    in_memory = make(tmp_path / "b", pool=SyntheticTasks(**spec), max_pool_size=50)
    assert len(from_file.pool) == 50 and (from_file.ids == in_memory.ids).all()
    assert (from_file.held_out == in_memory.held_out).all()
    assert from_file.pool["input_ids"] == in_memory.pool["input_ids"]
    # Memory-mapped from the cache folder: the parsed pool is not held in the process.
    pools = tmp_path / "a" / "lightning_al" / "pools"
    assert {f["filename"].rsplit("/", 1)[0] for f in from_file._raw_pool().cache_files} == {str(pools)}


def test_an_edited_pool_file_is_tokenized_again(tmp_path):
    path = _synthetic_file(tmp_path / "pool.jsonl", num_examples=30, max_length=6)
    before = make(tmp_path, pool=LocalFile(str(path)))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[3]["response"] = "zzz"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    after = make(tmp_path, pool=LocalFile(str(path)))
    assert after.pool[3]["response"] == "zzz" != before.pool[3]["response"]
    assert len(list((tmp_path / "lightning_al").glob("tokenized-*.arrow"))) == 2


def test_a_dated_chat_template_renders_the_same_prompt_every_day():
    """Llama 3.1-3.3's template writes "Today Date: <strftime_now>" unless given ``date_string``: left to the
    clock, a pool tokenized one day and a benchmark built the next would differ by their date tokens."""
    from lightning_al.model.loading import load_tokenizer

    tokenizer = load_tokenizer("char")
    tokenizer.chat_template = (
        '{%- if not date_string is defined %}{%- if strftime_now is defined %}'
        '{%- set date_string = strftime_now("%d %b %Y") %}{%- else %}{%- set date_string = "01 Jan 1970" %}'
        '{%- endif %}{%- endif %}Today Date: {{ date_string }}|'
        '{%- for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{%- endfor %}'
        '{%- if add_generation_prompt %}<assistant>{%- endif %}'
    )
    assert "Today Date: 01 Jan 1970" not in tokenizer.apply_chat_template([{"role": "user", "content": "q"}],
                                                                          tokenize=False)  # the clock is there
    prompt = formatting.prompt_text(tokenizer, "", "What is 2+2?")
    assert prompt == f"Today Date: {formatting.TEMPLATE_DATE}|<user>What is 2+2?</user><assistant>"
    assert formatting.response_text(tokenizer, "", "What is 2+2?", "4") == "4</assistant>"
    assert not formatting.reads_the_clock(tokenizer)
    # A template that reads the clock with no date_string to fix it: the pool warns (see TokenizedPool).
    tokenizer.chat_template = '{{ strftime_now("%Y-%m-%d") }}|{%- for m in messages %}{{ m.content }}{%- endfor %}'
    assert formatting.reads_the_clock(tokenizer)


def test_the_response_ends_at_the_end_of_turn_marker():
    """ChatML (SmolLM2, Qwen) and Gemma write a newline after their end-of-turn token. Generation stops at the
    token, so the newline is never produced: it must be neither a trained target nor a held-out NLL token."""
    from lightning_al.model.loading import load_tokenizer

    tokenizer = load_tokenizer("char")  # ChatML, "<|im_end|>" its EOS
    assert tokenizer.apply_chat_template([{"role": "assistant", "content": "4"}], tokenize=False).endswith(
        "<|im_end|>\n")
    assert formatting.response_text(tokenizer, "", "What is 2+2?", "4") == "4<|im_end|>"
    assert formatting.response_text(tokenizer, "", "What is 2+2?", "") == "<|im_end|>"
    # A response that itself spells a marker before the template's own one is not cut inside its text.
    assert formatting.response_text(tokenizer, "", "q", "a <s> b") == "a <s> b<|im_end|>"
    ids = formatting.tokenize_example({"system": "", "prompt": "What is 2+2?", "response": "4"}, tokenizer, 512,
                                      256)["input_ids"]
    assert ids[-2:] == [tokenizer.convert_tokens_to_ids("4"), tokenizer.eos_token_id]
    # Gemma's turn: "<end_of_turn>" (a special added token, not the EOS) then a newline.
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = (
        "{% for m in messages %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
        "{{ m.content }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    assert formatting.response_text(tokenizer, "", "q", "4") == "4<end_of_turn>"


@pytest.mark.parametrize("template", ["plain", "chat without BOS", "chat with BOS"])
def test_pool_prompts_start_with_the_bos_the_tokenizer_adds(template):
    """A tokenizer that puts a BOS before every text (Llama, Mistral, Gemma): pool prompts start with it once,
    whether the template writes it or not, as MMLU's prompts (tokenized the usual way) do; the content span
    that prompt-mode scoring reads moves with it."""
    from tokenizers.processors import TemplateProcessing

    from lightning_al.model.loading import load_tokenizer

    tokenizer = load_tokenizer("char")
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    if template == "plain":
        tokenizer.chat_template = None
    elif template == "chat with BOS":
        tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    assert formatting.leading_ids(tokenizer) == [bos]
    example = {"system": "", "prompt": "What is 2+2?", "response": "4"}
    row = formatting.tokenize_example(example, tokenizer, max_length=200, max_prompt_length=150)
    ids = row["input_ids"]
    assert ids[0] == bos and ids[1] != bos
    assert tokenizer.decode(ids[row["content_start"] : row["content_end"]]) == "What is 2+2?"
    batch = formatting.tokenize_batch({k: [v] for k, v in example.items()}, tokenizer, 200, 150)
    assert {k: v[0] for k, v in batch.items()} == row
    # A prompt cut to 20 tokens keeps its BOS and its end.
    short = formatting.tokenize_example(example, tokenizer, max_length=200, max_prompt_length=20)
    assert short["prompt_length"] == 20 and short["input_ids"][0] == bos and short["truncated"]
    assert short["input_ids"][1:20] == ids[row["prompt_length"] - 19 : row["prompt_length"]]
    batch = formatting.tokenize_batch({k: [v] for k, v in example.items()}, tokenizer, 200, 20)
    assert {k: v[0] for k, v in batch.items()} == short
