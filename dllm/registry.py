"""Which family serves which config.json `model_type`: the one table, built from the `ENTRY`
each family file ends with.

The table lives here, not in backend.py or family.py, because every family file imports those
two: a table there would have to import the family files inside a function, to break the
import cycle. Here they are plain imports at the top, which tests/test_layers.py can read, and
listing the supported types costs only importing the family files (no weights are read).
"""

from __future__ import annotations

from unmaskd.dllm import dream, llada, llada2, sdar
from unmaskd.dllm.backend import ConfigError
from unmaskd.dllm.family import ContractError, Family


def _table(*entries: Family) -> dict[str, Family]:
    table: dict[str, Family] = {}
    for entry in entries:
        if entry.model_type in table:
            raise ContractError(f"two families register model_type {entry.model_type!r}")
        table[entry.model_type] = entry
    return table


FAMILIES = _table(llada.ENTRY, dream.ENTRY, sdar.ENTRY, llada2.ENTRY)


def family(model_type: object) -> Family:
    """The family entry for a config.json `model_type`; a ConfigError naming it otherwise."""
    entry = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if entry is None:
        raise ConfigError(f"model_type {model_type!r} is not supported "
                          f"(supported: {', '.join(sorted(FAMILIES))})")
    return entry
