"""One direction of imports (issue 27): the library below, the applications above.

Every top-level folder of the project is on a floor. A module may import its own floor or a
lower one, never a higher one, and never by a string (`__import__`, `importlib.import_module`),
which a scan cannot read. docs/ARCHITECTURE.md ("Layers") draws the same floors; a test below
holds the drawing to this table.

Imports are read with `ast` from every .py file of the folders in FLOORS: `import` and `from`
statements anywhere in a file (inside functions too: lazy imports count), relative imports
resolved against the file's package.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. 0-3 are the library, 4-6 the applications over it.
FLOORS = {
    "tasks": 0,            # task suites, splits, checkers
    "dllm": 1,             # model families, checkpoint I/O, the shipped checkpoints
    "kernels": 1,          # confidence statistics: Triton kernel and torch reference
    "sampler_plugins": 2,  # unmasking rules, the policy network and its store
    "engine": 3,           # the decoding loop, caches, model flags; sglang_plugin/
    "evaluation": 4,       # `unmaskd eval`
    "training": 5,         # `unmaskd train-dllm`, `unmaskd train-policy`, the tokenizer
    "server": 5,           # HTTP
    "cli": 6,              # the `unmaskd` command
    "bench": 6,            # benchmark scripts (not installed)
}
DYNAMIC_IMPORTS = {"__import__", "import_module"}


def _package_of(path: Path) -> list[str]:
    """`engine/sglang_plugin/config.py` -> ['unmaskd', 'engine', 'sglang_plugin']."""
    parts = list(path.relative_to(ROOT).parts[:-1])
    return ["unmaskd", *parts]


def _targets(node: ast.AST, package: list[str]) -> list[str]:
    """The absolute module names an import statement reaches."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = package[: len(package) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    if module == "unmaskd":  # from unmaskd import dllm, engine
        return [f"unmaskd.{alias.name}" for alias in node.names]
    return [module]


def violations(source: str, path: Path) -> list[str]:
    """Each upward import and each import by string in one file, as
    'file:line: imports unmaskd.x (floor n > m)'."""
    rel = path.relative_to(ROOT)
    own = FLOORS[rel.parts[0]]
    package = _package_of(path)
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _targets(node, package):
                parts = target.split(".")
                if parts[0] != "unmaskd" or len(parts) < 2:
                    continue
                floor = FLOORS.get(parts[1])
                if floor is None:
                    found.append(f"{rel}:{node.lineno}: imports {target}, whose folder "
                                 f"{parts[1]!r} is on no floor")
                elif floor > own:
                    found.append(f"{rel}:{node.lineno}: imports unmaskd.{parts[1]} "
                                 f"(floor {floor} > {own})")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else None)
            if name not in DYNAMIC_IMPORTS:
                continue
            arg = node.args[0] if node.args else None
            literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            if not literal or arg.value.split(".")[0] == "unmaskd":
                what = repr(arg.value) if literal else "a name computed at run time"
                found.append(f"{rel}:{node.lineno}: {name}({what}): import by string "
                             f"(write an import statement)")
    return found


def project_files() -> list[Path]:
    return sorted(p for folder in FLOORS for p in (ROOT / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_no_upward_import_and_none_by_string():
    files = project_files()
    assert len(files) > 50, "the scan found too few files"
    found = [v for path in files for v in violations(path.read_text(), path)]
    assert not found, "imports that point up (or by string):\n" + "\n".join(found)


def test_every_package_folder_is_on_a_floor():
    """A folder pyproject installs, or any top-level folder holding a package, has a floor:
    a new folder cannot dodge the rule."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    installed = {name.split(".")[1] for name in setuptools["packages"]}
    mapped = set(setuptools["package-dir"].values())
    assert installed == mapped, "every installed package folder is mapped in package-dir"
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert installed <= set(FLOORS), sorted(installed - set(FLOORS))
    assert packages <= set(FLOORS), sorted(packages - set(FLOORS))
    assert set(FLOORS) - installed == {"bench"}, "only bench/ is on a floor but not installed"


def test_the_scan_catches_an_upward_import():
    """The scanner itself: an engine module reaching the server, in either form and inside a
    function, and a string import, are each reported; a downward import is not."""
    path = ROOT / "engine" / "loop.py"
    source = ("from unmaskd.tasks import TASKS\n"
              "import unmaskd.server.app\n"
              "def f():\n"
              "    from unmaskd import server, kernels\n"
              "    from ..cli import main\n"
              "    __import__('unmaskd.training.policy_trainer')\n"
              "    importlib.import_module(name)\n"
              "    importlib.import_module('triton')\n")
    assert violations(source, path) == [
        "engine/loop.py:2: imports unmaskd.server (floor 5 > 3)",
        "engine/loop.py:4: imports unmaskd.server (floor 5 > 3)",
        "engine/loop.py:5: imports unmaskd.cli (floor 6 > 3)",
        "engine/loop.py:6: __import__('unmaskd.training.policy_trainer'): import by string "
        "(write an import statement)",
        "engine/loop.py:7: import_module(a name computed at run time): import by string "
        "(write an import statement)",
    ]


def test_architecture_draws_the_same_floors():
    """docs/ARCHITECTURE.md's "Layers" drawing: each line `N  folder/  folder/ ...` (words in
    parentheses are comments) lists floor N's folders."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    drawing = text.split("## Layers", 1)[1].split("```")[1]
    drawn: dict[str, int] = {}
    for line in drawing.splitlines():
        m = re.match(r"^\D*(\d)\s{2}(\S.*)$", line)
        if m:
            for folder in re.findall(r"(?:^|\s)(\w+)/", re.sub(r"\([^)]*\)", "", m[2])):
                drawn[folder] = int(m[1])
    assert drawn == FLOORS
    assert "never" in text.split("## Layers", 1)[1].split("##")[0]
