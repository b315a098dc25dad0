"""Sampler registry: the built-ins plus third-party samplers from the `unmaskd.samplers`
entry-point group. A plugin that fails to load is logged and skipped, never fatal.

A third-party package registers a `Sampler` subclass in its pyproject.toml:

    [project.entry-points."unmaskd.samplers"]
    my_rule = "my_package.my_rule:MyRule"
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from unmaskd.sampler_plugins.base import Sampler

log = logging.getLogger(__name__)
_registry: dict[str, type[Sampler]] | None = None


def _builtins() -> list[type[Sampler]]:
    from unmaskd.sampler_plugins.dream_schedule import Entropy, Margin, MaskgitPlus
    from unmaskd.sampler_plugins.eb import EntropyBounded
    from unmaskd.sampler_plugins.factor import Factor
    from unmaskd.sampler_plugins.klass import Klass
    from unmaskd.sampler_plugins.learned import Learned
    from unmaskd.sampler_plugins.threshold import Threshold
    from unmaskd.sampler_plugins.topk_confidence import TopKConfidence
    from unmaskd.sampler_plugins.uniform_random import RandomOrder

    return [RandomOrder, TopKConfidence, Threshold, Factor, MaskgitPlus, Margin, Entropy,
            EntropyBounded, Klass, Learned]


def registered_samplers() -> dict[str, type[Sampler]]:
    global _registry
    if _registry is None:
        registry = {cls.name: cls for cls in _builtins()}
        for ep in entry_points(group="unmaskd.samplers"):
            try:
                cls = ep.load()
                if not (isinstance(cls, type) and issubclass(cls, Sampler)):
                    raise TypeError(f"{ep.value} is not a Sampler subclass")
            except Exception:  # a broken plugin must not take the server down
                log.exception("skipping sampler plugin %r", ep.name)
                continue
            if ep.name in registry:
                log.error("sampler plugin %r clashes with a registered sampler; skipped", ep.name)
                continue
            registry[ep.name] = cls
        _registry = registry
    return _registry


def get_sampler(name: str) -> type[Sampler] | None:
    return registered_samplers().get(name)
