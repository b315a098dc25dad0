"""Copies kept on purpose stay copies (diffusers' `# Copied from` convention).

A line `# Copied from unmaskd.dllm.<file>.<Name>[.<name>] [with a->b, c->d]` right above a
`def` or `class` says that definition is its source's, word for word, after the replacements:
a family keeps a copy where its checkpoint names a module otherwise (LLaDA2's `attention` is
SDAR's `self_attn`). A fix to the source must reach the copy; this test fails until it does.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"^\s*# Copied from unmaskd\.(\S+?)(?: with (.+))?$")


def _definition(path: Path, qualname: str) -> str:
    """The source of `qualname` (Class.method) in `path`, dedented, without its marker."""
    lines = path.read_text().splitlines()
    nodes: list[ast.AST] = list(ast.parse("\n".join(lines)).body)
    for part in qualname.split("."):
        node = next(n for n in nodes if getattr(n, "name", None) == part)
        nodes = list(getattr(node, "body", []))
    return textwrap.dedent("\n".join(lines[node.lineno - 1:node.end_lineno]))


def drift(path: Path) -> list[str]:
    """Each marked copy in `path` that differs from its source, as 'file:line: reason'."""
    found = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = MARK.match(line)
        if not m:
            continue
        module, _, qualname = m[1].partition(".")
        source_file, _, source_name = qualname.partition(".")
        source = _definition(ROOT / module / f"{source_file}.py", source_name)
        for pair in (m[2] or "").split(","):
            if pair.strip():
                old, new = (s.strip() for s in pair.split("->"))
                source = source.replace(old, new)
        name = re.match(r"\s*(?:def|class) (\w+)", lines[i + 1])
        if not name:
            found.append(f"{path.name}:{i + 1}: the marker is not above a def or class")
            continue
        owner = [*_enclosing(path, i + 2), name[1]]
        if _definition(path, ".".join(owner)) != source:
            found.append(f"{path.name}:{i + 1}: {'.'.join(owner)} drifted from {m[1]}")
    return found


def _enclosing(path: Path, lineno: int) -> list[str]:
    """The names of the classes around line `lineno` (1-based), outermost first."""
    names, nodes = [], list(ast.parse(path.read_text()).body)
    while True:
        around = [n for n in nodes if isinstance(n, ast.ClassDef)
                  and n.lineno < lineno <= n.end_lineno]
        if not around:
            return names
        names.append(around[0].name)
        nodes = around[0].body


def test_marked_copies_match_their_source():
    files = sorted((ROOT / "dllm").glob("*.py"))
    assert any(MARK.match(line) for f in files for line in f.read_text().splitlines())
    found = [d for f in files for d in drift(f)]
    assert not found, "\n".join(found)


def test_a_drifted_copy_is_caught(tmp_path):
    """The checker itself: a copy of sdar's DecoderLayer.forward with one changed line."""
    copy = tmp_path / "copy.py"
    source = _definition(ROOT / "dllm" / "sdar.py", "DecoderLayer.forward")
    body = textwrap.indent(source.replace("self_attn", "attention"), "    ")
    marker = "    # Copied from unmaskd.dllm.sdar.DecoderLayer.forward with self_attn->attention\n"
    copy.write_text(f"class Layer:\n{marker}{body}\n")
    assert drift(copy) == []
    copy.write_text(f"class Layer:\n{marker}{body.replace('x + self.mlp', 'x - self.mlp')}\n")
    assert drift(copy) == ["copy.py:2: Layer.forward drifted from dllm.sdar.DecoderLayer.forward"]
