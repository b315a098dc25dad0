"""Task suites the embedded dLLM is trained and evaluated on, by name (`unmaskd eval --task`).

Each suite has `make_split(split, n)` (problems with `.prompt`, `.value`, `.steps`) and
`check_answer(text, reference)`.
"""

from types import ModuleType

from unmaskd.tasks import arithmetic, longform

TASKS: dict[str, ModuleType] = {"arithmetic": arithmetic, "longform": longform}
