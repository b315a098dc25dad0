"""Train the embedded model's byte-level BPE tokenizer on task corpora (arithmetic by default).

    python -m unmaskd.training.tokenizer OUT_DIR

Digits are split one per token (so numbers are spelled digit by digit, as in LLaDA's and
LLaMA-3's tokenizers), and the special tokens match LLaDA's names: `<|mdm_mask|>` (mask),
`<|endoftext|>` (EOS and padding), `<|startoftext|>` (BOS). The result is `tokenizer.json` +
`tokenizer_config.json`, loadable offline by `transformers.AutoTokenizer.from_pretrained(DIR)`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from unmaskd.tasks.arithmetic import make_split

MASK, EOS, BOS = "<|mdm_mask|>", "<|endoftext|>", "<|startoftext|>"
SPECIAL_TOKENS = [EOS, BOS, MASK]  # ids 0, 1, 2
VOCAB_SIZE = 512  # an upper bound: the corpus saturates near 500 entries
# The chat endpoint renders the last user message as a task question.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if loop.last %}Question: {{ message['content'] }}\nAnswer:{% endif %}"
    "{% endif %}{% endfor %}"
)


def train_tokenizer(out_dir: Path, n_problems: int = 20_000,
                    splits: Sequence[Callable[[str, int], list]] = (make_split,)) -> Tokenizer:
    """`splits`: the task suites' make_split functions, n_problems train problems of each.
    Byte-level BPE encodes any text, but wording it never saw costs several tokens a word:
    a model for tasks.longform wants (arithmetic.make_split, longform.make_split) here."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    corpus = (p.prompt + p.answer for split in splits for p in split("train", n_problems))
    tok.train_from_iterator(corpus, trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "mask_token": MASK,
        "model_max_length": 512, "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tok


if __name__ == "__main__":
    train_tokenizer(Path(sys.argv[1]))
