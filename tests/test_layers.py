"""The house rules, read from the source: layers, private names, Asok in one place, no cycles.

Each package folder is a layer; a module may import from its own layer's
folder and from the layers below it, never above, and never a name another
module keeps private. The pure layers import no gevent and no asok; only
:mod:`asok_green.bridge.asok_api` imports asok. Every failure names the file
and line.
"""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

import pytest

pytestmark = pytest.mark.quick

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "asok_green"

#: Lower rank = lower layer. Layers of equal rank may not import each other.
RANKS = {
    "protocol": 0,
    "core": 1,
    "server": 2,
    "cluster": 3,
    "history": 3,
    "bridge": 4,
    "ops": 4,
    "api": 5,
    "process": 6,
}
#: Top-level modules are the public entry points: they may import any layer.
TOP = 10
#: Packages that are public entry points too (the test kit, the Python client): ranked as top-level modules.
RANKS.update({"testing": TOP, "client": TOP})
PURE = {"protocol", "core"}
ASOK_MODULE = "asok_green.bridge.asok_api"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS) else None


def _rank(module: str) -> int:
    layer = _layer(module)
    return RANKS[layer] if layer else TOP


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports(module: str, path: pathlib.Path):
    """(line, imported module, imported names) for every import in ``path``, nested ones too."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, is_package, node.level, node.module) if node.level else node.module
            names = tuple(a.name for a in node.names)
            yield node.lineno, source, names
            for name in names:  # ``from . import hub`` imports a module
                if f"{source}.{name}" in MODULES:
                    yield node.lineno, f"{source}.{name}", ()


def _internal(target: str) -> str | None:
    """The asok_green module ``target`` names (a module, or a name inside one), or None."""
    while target:
        if target in MODULES:
            return target
        target = target.rpartition(".")[0]
    return None


def _where(path: pathlib.Path, line: int) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{line}"


def test_imports_point_down():
    wrong = []
    for module, path in MODULES.items():
        for line, target, names in _imports(module, path):
            inner = _internal(target) if target.startswith("asok_green") else None
            if inner == "asok_green" and _rank(module) < TOP and set(names) - {"__version__"}:
                # The top-level package re-exports the api layer: from a layer, that points up.
                wrong.append(f"{_where(path, line)}: {module} imports {', '.join(names)} from the top-level package")
                continue
            if inner is None or inner == "asok_green" or _layer(inner) == _layer(module):
                continue
            if _rank(inner) >= _rank(module):
                wrong.append(f"{_where(path, line)}: {module} imports {inner} (layer {_layer(inner)} is not below)")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def test_pure_layers_import_no_gevent_and_no_asok():
    wrong = []
    for module, path in MODULES.items():
        if _layer(module) not in PURE:
            continue
        for line, target, _ in _imports(module, path):
            root = target.split(".")[0]
            if root in ("gevent", "geventwebsocket", "greenlet", "asok"):
                wrong.append(f"{_where(path, line)}: {module} imports {target}")
    assert not wrong, "the pure layers import gevent or asok:\n" + "\n".join(wrong)


def test_asok_is_imported_by_one_module():
    wrong = []
    for module, path in MODULES.items():
        if module == ASOK_MODULE:
            continue
        for line, target, _ in _imports(module, path):
            if target.split(".")[0] == "asok":
                wrong.append(f"{_where(path, line)}: {module} imports {target} (use {ASOK_MODULE})")
    assert not wrong, "asok imported outside the bridge:\n" + "\n".join(wrong)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_self(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def _defined_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, its own attributes, assignments, slots."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _is_self(node.value):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {n for n in names if _private(n)}


def _private_uses(tree: ast.AST, own: set[str]):
    """(line, text) of each private attribute reached on an object this module does not own."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if node.attr not in own or (isinstance(node.ctx, ast.Store) and not _is_self(node.value)):
                yield node.lineno, ast.unparse(node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and not _is_self(node.args[0])
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            yield node.lineno, ast.unparse(node)


#: Private names of other libraries that asok_green needs, each with its reason.
#: Asok's own are not here: only ASOK_MODULE may use them, and its contract test names each.
THIRD_PARTY_PRIVATE: dict[str, str] = {
    "sock._sock": (
        "gevent.socket.socket's kernel socket (asok_green.server.inbound, .outbound, .upgrade): a recv or send"
        " that never waits, in one system call with no greenlet switch, on the reader's, writer's and 101's hot"
        " paths; gevent has no public way to reach it"
    ),
    "sock._read_event": (
        "gevent.socket.socket's read watcher (asok_green.server.inbound): an idle connection is served from it"
        " with no greenlet of its own; gevent has no public accessor, and a watcher of our own would cost"
        " memory on every idle connection"
    ),
}


def test_no_private_name_crosses_a_module():
    wrong = []
    for module, path in MODULES.items():
        if module == ASOK_MODULE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for line, target, names in _imports(module, path):
            for name in names:
                if _private(name):
                    wrong.append(f"{_where(path, line)}: {module} imports {target}.{name}")
        for line, text in _private_uses(tree, _defined_private_names(tree)):
            if any(text.endswith(name) for name in THIRD_PARTY_PRIVATE):
                continue
            wrong.append(f"{_where(path, line)}: {module} uses {text}")
    assert not wrong, "private names used from another module:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = defaultdict(set)
    lines = {}
    for module, path in MODULES.items():
        for line, target, _ in _imports(module, path):
            inner = _internal(target) if target.startswith("asok_green") else None
            if inner and inner != module and inner != "asok_green":
                graph[module].add(inner)
                lines.setdefault((module, inner), _where(path, line))
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                cycles.append(" -> ".join(f"{a} ({lines[(a, b)]})" for a, b in zip(cycle, cycle[1:])))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles (type-only imports count):\n" + "\n".join(cycles)


def test_sizes():
    wrong = []
    for path in MODULES.values():
        text = path.read_text()
        if text.count("\n") > 500:
            wrong.append(f"{_where(path, 1)}: {text.count(chr(10))} lines (at most 500)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 400:
                wrong.append(
                    f"{_where(path, node.lineno)}: class {node.name} has {node.end_lineno - node.lineno + 1} lines"
                )
    assert not wrong, "too large:\n" + "\n".join(wrong)


def test_every_layer_says_what_it_holds_and_may_import():
    missing = [
        layer
        for layer in RANKS
        if (PACKAGE / layer).is_dir()
        and not ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
    ]
    assert not missing, f"layers without a docstring: {missing}"
