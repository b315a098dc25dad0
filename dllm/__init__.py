"""The dLLM side of unmaskd: LLaDA-architecture model code, checkpoint I/O, tokenizer, training."""

from pathlib import Path

EMBEDDED_MODEL_DIR = Path(__file__).parent / "embedded"
EMBEDDED_LONG_MODEL_DIR = Path(__file__).parent / "embedded-long"  # tasks/longform.py, L = 256
# The shipped checkpoints by name, so `--model embedded` works wherever unmaskd is installed
# (in a container the folder lives in site-packages).
SHIPPED_MODELS = {"embedded": EMBEDDED_MODEL_DIR, "embedded-long": EMBEDDED_LONG_MODEL_DIR}


def model_dir(path: str | Path) -> Path:
    """A checkpoint folder: the path itself, or a shipped model's name when no such path
    exists (a local folder named `embedded` wins)."""
    path = Path(path)
    return path if path.exists() else SHIPPED_MODELS.get(str(path), path)
