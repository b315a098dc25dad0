"""The `unmaskd` command (`main.py`): generate, eval, serve, train-dllm, train-policy.

The top application layer: it may import every other layer, and nothing imports it.
"""
