"""Task suites the embedded dLLM is trained and evaluated on, by name (`unmaskd eval --task`).

Each suite has `make_split(split, n)` (problems with `.prompt`, `.value`, `.steps`) and
`check_answer(text, reference)`, its checker: what `unmaskd eval` and `train-policy` score the
suite with and what the server scores a request's `reference` with when it serves a model of
that task. `get_task` looks a suite up by a name from outside (a model folder's
unmaskd_task.json) and refuses an unknown one.
"""

from types import ModuleType

from unmaskd.tasks import arithmetic, longform

TASKS: dict[str, ModuleType] = {"arithmetic": arithmetic, "longform": longform}


class UnknownTask(ValueError):
    """A task name no suite has, said in one line."""


def get_task(name: str, source: object) -> ModuleType:
    """The suite called `name`; `source` (a task file's path) is where the name came from, for
    the one-line error that names its `task` field."""
    suite = TASKS.get(name)
    if suite is None:
        raise UnknownTask(f"{source}: task: {name!r} is not a known task (one of "
                          f"{', '.join(sorted(TASKS))})")
    return suite
