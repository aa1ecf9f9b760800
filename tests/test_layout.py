"""
The package's shape stays as docs/architecture.md draws it: no import cycle between its modules
(type-only imports included: a cycle that exists only for annotations still ties two modules
together), and no module much over 400 lines unless its docstring says why.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import PROJECT_ROOT

PACKAGE = "mission_control"
#: Lines past which a module's docstring must give its reason ("... lines ...").
LONG = 400


def _modules() -> dict[str, str]:
    """Dotted module name -> path, for every module of the package."""
    found = {}
    top = os.path.join(PROJECT_ROOT, PACKAGE)
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "static")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, PROJECT_ROOT)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """
    Each module -> the package's modules it imports, at any level of its code (under
    C{TYPE_CHECKING} and inside functions too).
    """
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    # "from package import module" needs the module; any other name comes from
                    # the module named (a package's face, when it is a package).
                    child = f"{base}.{alias.name}"
                    targets.add(child if child in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


class ImportGraphTests(SynchronousTestCase):
    def test_no_cycles(self):
        """No two modules of the package import each other, directly or around a loop."""
        self.assertEqual(cycles(import_graph(_modules())), [])

    def test_a_cycle_is_found(self):
        """The check itself finds a loop, and a package importing its own parts is none."""
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "p": {"p.x"}, "p.x": set()}
        self.assertEqual(cycles(graph), [["a", "b", "c"]])

    def test_type_only_imports_count(self):
        """An import under TYPE_CHECKING is an edge of the graph too."""
        modules = _modules()
        graph = import_graph(modules)
        self.assertIn("mission_control.hub.registry", graph["mission_control.hub.client"])
        self.assertIn("mission_control.store", graph["mission_control.hub.node"])


class ModuleSizeTests(SynchronousTestCase):
    def test_long_modules_say_why(self):
        """A module over 400 lines (with a little slack) says in its docstring why it is long."""
        unexplained = []
        for name, path in sorted(_modules().items()):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if text.count("\n") > LONG * 1.1:
                docstring = ast.get_docstring(ast.parse(text)) or ""
                if "400 lines" not in docstring:
                    unexplained.append(f"{name}: {text.count(chr(10))} lines")
        self.assertEqual(unexplained, [])
