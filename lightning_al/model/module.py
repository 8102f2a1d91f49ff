"""The LightningModule: a causal LM with a LoRA adapter, trained on responses only."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from peft import LoraConfig, get_peft_model

from lightning_al.evaluation.metrics import ExampleMean
from lightning_al.evaluation.records import ExampleRecords
from lightning_al.model.head import output_head
from lightning_al.model.loading import CHAR_TOKENIZER, load_causal_lm, load_tokenizer
from lightning_al.scoring.passes import ScoreSource, generated_statistics, prompt_statistics
from lightning_al.scoring.statistics import per_example_scores

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _default_optimizer(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)


class LoRALanguageModel(LightningModule):
    """Any Hugging Face causal LM with a peft LoRA adapter.

    The base model loads in ``configure_model`` (inside the strategy's context, so FSDP can shard
    it, and after the data and the loop have checked the configuration). Checkpoints hold only the
    adapter and its initial weights: the base is re-loaded from ``pretrained`` (or re-initialised
    from ``config`` with ``init_seed``).

    Args:
        pretrained: Hub id or local folder of a causal LM. Leave empty to initialise ``config`` randomly.
        config: A model config for random initialisation (e.g. ``{model_type: llama, hidden_size: 64,
            num_hidden_layers: 2, ...}``); ``vocab_size`` defaults to the tokenizer's size.
        tokenizer: Hub id or folder of the tokenizer (default: ``pretrained``), or ``"char"``.
        dtype: Weights dtype of the base model: float32, bfloat16 or float16.
        init_seed: Seed of the random initialisation of ``config`` models.
        attn_implementation: Passed to transformers (e.g. ``sdpa``, ``flash_attention_2``).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: Dropout on the LoRA input.
        lora_target_modules: Module names that get adapters, or ``all-linear``.
        lora_modules_to_save: Modules trained in full and saved with the adapter (peft's
            ``modules_to_save``), e.g. ``[lm_head, embed_tokens]`` for a randomly initialised model,
            whose random embeddings LoRA alone cannot repair.
        gradient_checkpointing: Trade compute for activation memory in training.
        optimizer: Optimizer (``class_path``/``init_args``); a fresh one is made for every round.
        lr_scheduler: Optional LR scheduler; stepped every optimizer step and re-made every round.
        score_source: Positions that uncertainty scores cover: ``generated`` (the greedy continuation
            of the prompt, end-of-turn included), ``prompt`` (the prompt's own tokens, teacher-forced)
            or ``first`` (the distribution right after the prompt).
        max_new_tokens: Length limit of the greedy continuation in ``generated`` scoring.
        logits_chunk_size: Positions per LM-head call in scoring; bounds the logits in memory
            to this many x vocabulary floats.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        dtype: str = "float32",
        init_seed: int = 0,
        attn_implementation: str | None = None,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | str = "all-linear",
        lora_modules_to_save: list[str] | None = None,
        gradient_checkpointing: bool = False,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        score_source: ScoreSource = "generated",
        max_new_tokens: int = 64,
        logits_chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        if pretrained is None and config is None:
            raise ValueError("model: set `pretrained` (hub id or local folder) or `config` (random initialisation)")
        if score_source not in ("generated", "prompt", "first"):
            raise ValueError(f"model.score_source: one of generated, prompt, first; got {score_source!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"model.dtype: one of {sorted(_DTYPES)}, got {dtype!r}")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.tokenizer_name = tokenizer or pretrained or CHAR_TOKENIZER
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.model: torch.nn.Module | None = None
        self.initial_adapter: dict[str, torch.Tensor] = {}
        # Only the adapter is saved; the base weights come back from `pretrained` / `config`.
        self.strict_loading = False
        # Per example, so that the examples DDP's sampler repeats to pad the last batch count once.
        self.val_nll = ExampleMean()
        self.val_records = ExampleRecords()
        #: The latest validation's metrics (float64, as metrics.jsonl keeps them) and per-example records
        #: by evaluation name (``heldout_loss``: the held-out NLL); the loop writes both at a round's end.
        self.evaluation_results: dict[str, float] = {}
        self.evaluation_records: dict[str, list[dict[str, Any]]] = {}

    @property
    def tokenizer(self):
        if not hasattr(self, "_tokenizer"):
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        base = load_causal_lm(hp.pretrained, hp.config, self.tokenizer, _DTYPES[hp.dtype], hp.init_seed,
                              hp.attn_implementation)
        if hp.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.enable_input_require_grads()
        lora = LoraConfig(
            r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
            target_modules=hp.lora_target_modules, modules_to_save=hp.lora_modules_to_save, task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(base, lora)
        if hp.score_source != "generated":
            output_head(self.model)  # refuses a head it cannot reproduce now, before any scoring pass
        self.initial_adapter = {k: v.detach().clone() for k, v in self.adapter_state().items()}

    # ---------------------------------------------------------------- adapter
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The trainable (LoRA) parameters, by their name in this module's state_dict."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def reset_adapter(self) -> None:
        """Put the adapter back to its initial weights (the ``scratch`` retraining policy)."""
        for name, param in self.adapter_state().items():
            param.copy_(self.initial_adapter[name].to(param.device))

    def save_adapter(self, path: str | Path) -> None:
        """Save the adapter in the standard peft format (loadable by peft, transformers, vLLM)."""
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = set(self.adapter_state())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["initial_adapter"] = {k: v.cpu() for k, v in self.initial_adapter.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "initial_adapter" in checkpoint:
            self.initial_adapter = copy.copy(checkpoint["initial_adapter"])

    # ---------------------------------------------------------------- training
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log("train/tokens", float(tokens), reduce_fx="sum", on_step=False, on_epoch=True,
                 batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        evaluation = self.trainer.datamodule.served[dataloader_idx]
        if evaluation is not None:  # an evaluation set: generation or choice log-likelihoods
            evaluation.update(self, batch)
            return
        logits = self(batch["input_ids"], batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        # Summed per example and weighted by its response tokens: the epoch value is the per-token
        # NLL of the whole split, each held-out example counted once.
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                                                reduction="none").sum(1)
        tokens = (labels != -100).sum(1)
        self.val_nll.update(nll, batch["index"], weight=tokens)
        self.val_records.add(batch["index"], nll=nll.tolist(), tokens=tokens.tolist())

    def on_validation_epoch_end(self) -> None:
        # Metrics compute across processes (torchmetrics syncs on compute), so no sync_dist here.
        nll = self.val_nll.compute()
        self.val_nll.reset()
        self.log_dict({"heldout/loss": nll, "heldout/perplexity": torch.exp(nll)}, prog_bar=True)
        dm = self.trainer.datamodule
        loss_records = [{"id": str(dm.ids[i]), "task": str(dm.tasks[i]), **row}
                        for i, row in self.val_records.gather().items()]
        results = {"heldout/loss": float(nll), "heldout/perplexity": float(torch.exp(nll))}
        per_task = _loss_per_task(loss_records)
        self.log_dict(per_task)
        results.update(per_task)
        records = {"heldout_loss": loss_records}
        for evaluation in dm.served:
            if evaluation is not None:
                values = evaluation.compute()
                self.log_dict(values)
                results.update(values)
                records[evaluation.name] = evaluation.last_records
        self.evaluation_results, self.evaluation_records = results, records

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    # ---------------------------------------------------------------- scoring
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int = 0, dataloader_idx: int = 0) -> dict:
        """Uncertainty scores of a batch of prompts: per example ``entropy``, ``confidence`` (mean
        log-prob), ``margin``, ``min_margin``, ``max_entropy``, ``num_tokens``, its pool ``index``, and
        its ``embedding`` (mean last hidden state over the prompt's content tokens, L2-normalised,
        float16), all from the one forward pass that scoring makes."""
        hp = self.hparams
        base = self.model.get_base_model()
        if hp.score_source == "generated":
            stats, rows, embedding = generated_statistics(self.model, batch, hp.max_new_tokens, self.stop_token_ids,
                                                          self.tokenizer.pad_token_id)
        else:
            stats, rows, embedding = prompt_statistics(base, batch, hp.score_source, hp.logits_chunk_size)
        scores = per_example_scores(stats, rows, batch["input_ids"].shape[0])
        # float16 halves what is gathered and kept for diversity strategies; cosines lose < 1e-3.
        return {"index": batch["index"], **scores, "embedding": embedding.half()}

    @property
    def stop_token_ids(self) -> list[int]:
        """End-of-turn ids: the tokenizer's EOS and those of the model's generation config."""
        ids = {self.tokenizer.eos_token_id}
        configured = self.model.get_base_model().generation_config.eos_token_id
        ids.update(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}


def _loss_per_task(records: list[dict[str, Any]]) -> dict[str, float]:
    """``heldout/loss/<task>``: summed NLL over summed response tokens of each task's held-out examples."""
    sums: dict[str, list[float]] = {}
    for row in records:
        total = sums.setdefault(row["task"], [0.0, 0.0])
        total[0] += row["nll"]
        total[1] += row["tokens"]
    return {f"heldout/loss/{task}": nll / tokens for task, (nll, tokens) in sorted(sums.items()) if tokens > 0}
