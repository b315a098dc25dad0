"""Training, an application over the library: the dLLM (`dllm_trainer.py`, `unmaskd
train-dllm`), its tokenizer (`tokenizer.py`) and the learned unmasking policy
(`policy_trainer.py`, GRPO, `unmaskd train-policy`). The library never imports it."""
