"""unmaskd's samplers and learned policies as SGLang dLLM algorithms, for serving LLaDA2 and SDAR
with SGLang's tensor and expert parallelism:

    pip install 'unmaskd[sglang]'
    sglang serve --model-path DIR --dllm-algorithm UnmaskdLearned --dllm-algorithm-config p.yaml

The entry point `unmaskd` of the group `sglang.srt.plugins` (pyproject.toml) is `register`, which
SGLang's `load_plugins()` calls in each of its processes. It adds `Unmaskd` and `UnmaskdLearned`
to SGLang's algorithm table. Written against one SGLang version: under another, both names
refuse with the reason instead of running on an interface they were not written for.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger(__name__)

SGLANG_VERSION = "0.5.23"
ALGORITHM_NAMES = ("Unmaskd", "UnmaskdLearned")


def installed_sglang_version() -> str | None:
    try:
        return version("sglang")
    except PackageNotFoundError:
        return None


def register() -> None:
    """The plug-in: SGLang's algorithm table gains unmaskd's algorithms."""
    from sglang.srt.dllm import algorithm as table

    found = installed_sglang_version()
    if found != SGLANG_VERSION:
        reason = (f"unmaskd's SGLang algorithms are written for sglang=={SGLANG_VERSION}, and "
                  f"sglang {found} is installed: pip install 'unmaskd[sglang]' installs that "
                  "version")
        log.error(reason)
        classes = {name: _refusal(name, reason) for name in ALGORITHM_NAMES}
    else:
        from unmaskd.engine.sglang_plugin.algorithm import ALGORITHMS

        classes = {cls.name: cls for cls in ALGORITHMS}
    registry = getattr(table, "algo_name_to_cls", None)
    if isinstance(registry, dict):
        registry.update(classes)


def _refusal(name: str, reason: str) -> type:
    """A stand-in under `name` that stops SGLang with `reason` wherever it first touches the
    algorithm: at launch (configure_server_args) or when building it."""

    def refuse(*args, **kwargs):
        raise RuntimeError(f"--dllm-algorithm {name}: {reason}")

    return type(name, (), {"supported_architectures": (), "__init__": refuse,
                           "configure_server_args": classmethod(refuse),
                           "validate_request": classmethod(refuse)})
