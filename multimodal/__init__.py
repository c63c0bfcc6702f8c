"""The shared core of the suite: transformer backbone, GPT language model, sampling, tokenizers,
checkpoints and the Lightning CLI."""

__version__ = "0.1.0"
