"""The layers stay visible: every import arrow in the product code points down, and no two
files import each other, directly or round a longer circle.

Imports are read with ``ast``, at module level AND inside functions (a lazy import is still an
arrow). Imports under ``if TYPE_CHECKING:`` are left out: they never run, they only name a
type for an annotation.

Layers, top to bottom (a module may import its own layer and any layer below):
    app.py, ui/            the web app
    ftedit.cli             the command line
    ftedit.deploy          visitors on a shared deployment
    ftedit.versioning      one model kept equal to base + active edits of one store
    ftedit.core            the edit algorithm: torch + transformers, never gradio or a database;
                           of storage only storage.codec (the compact forms' pure tensor
                           arithmetic, which the blob reader needs without ftedit)
    storage                persistence: imports nothing of ftedit but ftedit.errors
    ftedit.paths, ftedit.errors   leaves (the environment's edge; the error tree)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = [ROOT / "app.py", *sorted((ROOT / "ftedit").rglob("*.py"))]
PRODUCT += sorted((ROOT / "storage").rglob("*.py")) + sorted((ROOT / "ui").rglob("*.py"))
PRODUCT = [p for p in PRODUCT if "migrations" not in p.parts]  # alembic scripts: schema only

# (layer name, module prefixes) from the top down.
LAYERS = [
    ("app", ("app", "ui")),
    ("cli", ("ftedit.cli", "ftedit.__main__", "ftedit")),  # ftedit/__init__: the public API
    ("deploy", ("ftedit.deploy",)),
    ("versioning", ("ftedit.versioning",)),
    ("core", ("ftedit.core",)),
    ("storage", ("storage",)),
    ("leaf", ("ftedit.paths", "ftedit.errors")),
]
# Third-party packages a layer must not import (the layer's promise in its docstring).
FORBIDDEN_THIRD_PARTY = {
    "core": ("gradio", "sqlalchemy", "alembic"),
    "storage": ("gradio", "transformers"),
    "versioning": ("gradio",),
    "leaf": ("torch", "gradio", "sqlalchemy", "transformers"),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """Index in LAYERS (0 = top) of the most specific prefix naming ``module``."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, imported module) for every import that can run, wherever it sits in the file."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            # `from ftedit.core import ft` imports the module ftedit.core.ft
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((node.lineno, sub if _is_module(sub) else mod))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _ours(module: str) -> bool:
    return module.split(".")[0] in {"ftedit", "storage", "ui", "app"}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PRODUCT:
        graph[module_name(path)] = {m for _, m in imports_of(path) if _ours(m)}
    return graph


def test_every_product_file_has_a_layer():
    assert [module_name(p) for p in PRODUCT if layer_of(module_name(p)) is None] == []


def test_no_arrow_points_up():
    up = []
    for path in PRODUCT:
        me = module_name(path)
        mine = layer_of(me)
        for line, target in imports_of(path):
            if _ours(target):
                theirs = layer_of(target)
                if (theirs is not None and theirs < mine) or target == "app":  # app: the top
                    up.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
                # the core may score a compact form (storage.codec) but never touch a store
                if (
                    me.startswith("ftedit.core")
                    and target.split(".")[0] == "storage"
                    and target != "storage.codec"
                ):
                    up.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
                # storage may import ftedit.errors but not ftedit.paths
                if (
                    me.startswith("storage")
                    and target.startswith("ftedit.")
                    and target != "ftedit.errors"
                ):
                    up.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
            else:
                banned = FORBIDDEN_THIRD_PARTY.get(LAYERS[mine][0], ())
                if target.split(".")[0] in banned:
                    up.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert up == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports between files, or None (depth-first search, three colours)."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:  # a package, not a file of ours
                continue
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if not colour.get(nxt) and (found := dfs(nxt)):
                return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if not colour.get(node) and (found := dfs(node)):
            return found
    return None


def test_no_import_circle_between_files():
    graph = _graph()
    for node in graph:  # a package's __init__ is not an arrow back from its own modules
        graph[node].discard(node)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize(
    "graph, circle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ],
)
def test_the_circle_finder_finds_circles(graph, circle):
    assert (find_cycle(graph) is not None) == circle


def test_imports_inside_functions_and_type_checking_blocks():
    """The walker sees a lazy import in a function and skips one under TYPE_CHECKING."""
    src = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from storage.store import Store\n"
        "def f():\n    from ftedit.cli import main\n"
    )
    fake = ROOT / "ftedit" / "core" / "_layers_probe.py"
    assert [m for _, m in imports_of(fake, src)] == ["typing", "ftedit.cli"]
    assert layer_of("ftedit.cli") < layer_of("ftedit.core.ft")  # so that import points up


def test_public_api_is_lazy_and_complete():
    """``import ftedit`` stays torch-free; each public name resolves to its defining module."""
    import subprocess
    import sys

    code = (
        "import sys, ftedit; ftedit.EditRequest, ftedit.FteditError, ftedit.EditInfo; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]
    import ftedit

    for name, module in ftedit._API.items():
        assert getattr(ftedit, name).__module__ == module, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ftedit.nope  # noqa: B018
    assert sorted(ftedit.__all__) == sorted(ftedit._API)
