"""The causal LM below the LightningModule: loading, inference over left-padded prompts, the LM head."""

from lightning_al.model.loading import CHAR_TOKENIZER, load_causal_lm, load_tokenizer

__all__ = ["CHAR_TOKENIZER", "load_causal_lm", "load_tokenizer"]
