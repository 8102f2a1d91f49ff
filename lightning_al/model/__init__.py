from lightning_al.model.loading import CHAR_TOKENIZER, load_causal_lm, load_tokenizer
from lightning_al.model.module import LoRALanguageModel

__all__ = ["CHAR_TOKENIZER", "LoRALanguageModel", "load_causal_lm", "load_tokenizer"]
