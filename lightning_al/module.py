"""The LightningModule: a causal LM with a LoRA adapter, trained on responses only.

Validation runs the DataModule's evaluation passes (``lightning_al.evaluation``: the held-out loss and
the evaluation sets), one per named validation dataloader, always in the same order: each batch goes
to its pass, and after its loader's last batch the pass's metrics are computed and logged within that
dataloader, so each metric is logged (and shown by ``validate``) once. The passes' metric states are
children of this module, so Lightning moves them and torchmetrics syncs them across processes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from peft import LoraConfig, get_peft_model

from lightning_al.evaluation import EvaluationPass, HeldOutLoss
from lightning_al.model.head import output_head
from lightning_al.model.inference import GENERATION_CACHES, GenerationCache, set_generation_cache
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
        generation_cache: KV cache of greedy generation, in ``generated`` scoring and the generative
            evaluation sets (held-out answers, BBH): ``static`` (default: preallocated for the batch's
            whole generation and written in place; models whose transformers class cannot use one fall back
            to ``dynamic``), ``dynamic`` (transformers' default cache, which copies every layer's whole
            cache at every step: slower with long prompts), or ``compile`` (``static`` plus
            ``torch.compile`` of the decoding step, CUDA only, elsewhere as ``static``: compiles once per
            batch shape, for long passes of similar batches). The same scores and generations with each.
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
        generation_cache: GenerationCache = "static",
    ) -> None:
        super().__init__()
        if pretrained is None and config is None:
            raise ValueError("model: set `pretrained` (hub id or local folder) or `config` (random initialisation)")
        if score_source not in ("generated", "prompt", "first"):
            raise ValueError(f"model.score_source: one of generated, prompt, first; got {score_source!r}")
        if generation_cache not in GENERATION_CACHES:
            raise ValueError(f"model.generation_cache: one of {', '.join(GENERATION_CACHES)}; got {generation_cache!r}")
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
        #: The evaluation passes, in the order of the validation dataloaders (the DataModule's).
        self.evaluations: list[EvaluationPass] = []
        #: The latest validation's metrics by evaluation (``{"heldout": {"loss": ...}, "bbh": {...}}``, float64
        #: as metrics.jsonl keeps them) and per-example records by pass name (``heldout_loss``: the held-out
        #: NLL); the loop writes both at a round's end.
        self.evaluation_results: dict[str, dict[str, float]] = {}
        self.evaluation_records: dict[str, list[dict[str, Any]]] = {}
        self._computed: dict[str, dict[str, float | torch.Tensor]] = {}

    @property
    def tokenizer(self):
        if not hasattr(self, "_tokenizer"):
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def setup(self, stage: str) -> None:
        # (A Trainer given plain dataloaders, as in the benchmarks' predict runs, has no evaluation passes.)
        passes = getattr(self.trainer.datamodule, "evaluation_passes", {})
        self.evaluations = list(passes.values())
        # Children of this module: Lightning moves the metric states with it, torchmetrics syncs them.
        self.evaluation_metrics = torch.nn.ModuleDict({name: p.metrics for name, p in passes.items()})

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
        # from_pretrained hands the base over in eval mode, and Lightning keeps each submodule's mode when fit
        # starts: the base's own dropout (GPT-2's, say) would stay off in training until a scoring pass happened
        # to switch the whole module back to train mode, so random and uncertainty runs, and a resumed run,
        # would train differently. Lightning's evaluation and prediction loops set eval mode themselves.
        self.model.train()
        set_generation_cache(self.model, hp.get("generation_cache", "static"))  # also for the evaluation sets
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

    def on_validation_epoch_start(self) -> None:
        self._computed = {}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        evaluation = self.evaluations[dataloader_idx]
        evaluation.update(self, batch)
        if batch_idx + 1 == self._batches_in(dataloader_idx):
            # Logged within its own dataloader, so `validate` shows each metric once. Every process has as
            # many batches (the distributed sampler pads), so they all compute here together.
            self._compute(evaluation)

    def on_validation_epoch_end(self) -> None:
        for evaluation in self.evaluations:
            if isinstance(evaluation, HeldOutLoss) and evaluation.name not in self._computed:
                self._compute(evaluation)  # no held-out batch at all (validation_size 0): NaN, as ever
        results: dict[str, dict[str, float]] = {}
        records = {}
        for evaluation in self.evaluations:
            if evaluation.name in self._computed:
                values = {k: float(v) for k, v in self._computed[evaluation.name].items()}
                results.setdefault(evaluation.metrics_prefix, {}).update(values)
                records[evaluation.name] = evaluation.last_records
        self.evaluation_results, self.evaluation_records = results, records

    def _compute(self, evaluation: EvaluationPass) -> None:
        values = evaluation.compute()  # synced across processes: no sync_dist when logging
        for shown in (True, False):
            self.log_dict({f"{evaluation.metrics_prefix}/{k}": v for k, v in values.items()
                           if (k in evaluation.progress_bar) == shown},
                          prog_bar=shown, add_dataloader_idx=False, batch_size=1)
        self._computed[evaluation.name] = values

    def _batches_in(self, dataloader_idx: int) -> int:
        trainer = self.trainer
        if trainer.testing:
            return trainer.num_test_batches[dataloader_idx]
        if trainer.sanity_checking:
            return trainer.num_sanity_val_batches[dataloader_idx]
        return trainer.num_val_batches[dataloader_idx]

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

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
                                                          self.tokenizer.pad_token_id, hp.get("generation_cache"))
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

