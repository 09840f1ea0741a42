"""The Asok names asok_green relies on, checked against the installed Asok.

The table is :data:`asok_green.bridge.asok_api.CONTRACT`: one test per row.
The name must still exist (for an attribute Asok gives its instances at run
time, the class's code must still set it), and a callable must still take the
parameters asok_green calls it with. A failure says which name and what
asok_green uses it for, so an Asok upgrade that breaks the bridge says where
at once. A last test keeps the table complete: every Asok name asok_api
imports or reaches must have its row.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re

import asok
import pytest

from asok_green.bridge import asok_api
from asok_green.bridge.asok_api import CONTRACT, AsokName

pytestmark = pytest.mark.quick


class Missing(LookupError):
    """A name of the contract that the installed Asok does not have."""


def _import_longest(parts: list[str]) -> tuple[object, list[str]]:
    """The deepest module ``parts`` start with, and the names after it."""
    for end in range(len(parts), 0, -1):
        try:
            return importlib.import_module(".".join(parts[:end])), parts[end:]
        except ModuleNotFoundError:
            continue
    raise Missing(f"no module {parts[0]}")


def _sets(cls: type, attribute: str) -> bool:
    """True if the code of ``cls`` (or of a class it inherits from) assigns ``<something>.attribute``."""
    assignment = re.compile(rf"\.{re.escape(attribute)}\s*(?::[^=\n]+)?\+?=(?!=)")
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] != "asok":
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if assignment.search(source):
            return True
    return False


def resolve(name: str) -> object:
    """What ``name`` names in the installed Asok; None for attributes its instances get at run time.

    Raises :class:`Missing`, saying which part is gone.
    """
    obj, rest = _import_longest(name.split("."))
    for i, part in enumerate(rest):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if inspect.isclass(obj):
            # Past a class, the rest is set on its instances (and on what they hold) by its code.
            gone = [attribute for attribute in rest[i:] if not _sets(obj, attribute)]
            if not gone:
                return None
            raise Missing(f"the code of {obj.__module__}.{obj.__qualname__} no longer sets {', '.join(gone)}")
        raise Missing(f"{getattr(obj, '__name__', type(obj).__name__)} has no {part}")
    return obj


def problem(entry: AsokName) -> str | None:
    """Why the installed Asok breaks ``entry`` (naming it and what asok_green uses it for), or None."""
    uses = f"asok_green uses it for: {entry.purpose}"
    try:
        obj = resolve(entry.name)
    except Missing as gone:
        return f"{entry.name} is missing from asok {asok.__version__} ({gone}); {uses}"
    if entry.params is None:
        return None
    if not callable(obj):
        return f"{entry.name} is no longer callable in asok {asok.__version__}; {uses}"
    params = tuple(inspect.signature(obj).parameters)
    if params != entry.params:
        return (
            f"{entry.name} changed its signature in asok {asok.__version__}: it takes ({', '.join(params)}), "
            f"asok_green calls it with ({', '.join(entry.params)}); {uses}"
        )
    return None


@pytest.mark.parametrize("entry", CONTRACT, ids=[entry.name for entry in CONTRACT])
def test_the_installed_asok_has_it(entry):
    found = problem(entry)
    assert found is None, found


def test_a_missing_name_or_a_changed_signature_is_named_with_its_use():
    gone = problem(AsokName("asok.ws.live._handle_everything", None, "serving every message"))
    assert gone is not None and "asok.ws.live._handle_everything is missing" in gone
    assert "asok_green uses it for: serving every message" in gone
    attribute = problem(AsokName("asok.session.SessionStore._cluster", None, "finding the cluster"))
    assert attribute is not None and "no longer sets _cluster" in attribute
    changed = problem(AsokName("asok.ws.live._validate_model_room", ("conn", "room", "user"), "model rooms"))
    assert changed is not None and "it takes (conn, room), asok_green calls it with (conn, room, user)" in changed
    assert "asok_green uses it for: model rooms" in changed


def _own_names(tree: ast.AST) -> set[str]:
    """Names asok_api defines itself: functions, classes, assignments, arguments, its instances' attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return names


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_every_asok_name_asok_api_reaches_has_a_row():
    tree = ast.parse(inspect.getsource(asok_api))
    own = _own_names(tree)
    rows = [entry.name for entry in CONTRACT]
    last_parts = {part for row in rows for part in row.split(".")}

    def listed(dotted: str) -> bool:
        return any(row == dotted or row.startswith(dotted + ".") for row in rows)

    unlisted = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asok":
            unlisted += [f"{node.module}.{a.name}" for a in node.names if not listed(f"{node.module}.{a.name}")]
        elif isinstance(node, ast.Attribute) and _dotted(node) and _dotted(node).split(".")[0] == "asok":
            if not listed(_dotted(node)):
                unlisted.append(_dotted(node))
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            if node.attr not in last_parts:
                unlisted.append(f"attribute {node.attr} (line {node.lineno})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _private(node.value):
            if node.value not in own and node.value not in last_parts:
                unlisted.append(f"name {node.value!r} (line {node.lineno})")
    assert not unlisted, "Asok names asok_api uses without a row in its CONTRACT:\n" + "\n".join(sorted(set(unlisted)))
