"""lightning-al: active learning for fine-tuning large language models with PyTorch Lightning."""

__version__ = "0.1.0"
