"""The dLLM side of unmaskd: LLaDA-architecture model code, checkpoint I/O, tokenizer, training."""

from pathlib import Path

EMBEDDED_MODEL_DIR = Path(__file__).parent / "embedded"
