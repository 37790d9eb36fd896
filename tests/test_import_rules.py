"""The import directions of docs/architecture.md, checked on the source with ``ast``.

Every ``import`` and ``from … import`` of every first-party module counts, wherever it is
written: module level, inside a function, under ``if TYPE_CHECKING:``. The rules:

1. ``gpubot/`` (the core) imports none of ``bot``, ``workers``, ``app``.
2. Only the simulator itself imports ``gpubot.sim`` inside ``gpubot/`` (``app/``, tests and
   bench may; the core, adapters and ``gpubot/testing`` may not).
3. ``bot/`` and ``workers/`` never import each other.
4. Nothing imports ``app`` (the composition root) but ``app`` itself and the
   ``python -m bot`` launcher (``bot/__main__.py``).
5. The pure core imports only the standard library and other pure modules (and the package
   ``__init__`` files on the way, which must be pure too).
6. No ``importlib.import_module(…)`` / ``__import__(…)`` in first-party code: a module named in
   a string escapes every rule above.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("gpubot", "bot", "workers", "app")
"""The shipped top-level packages (tests and bench are checked only where they are named)."""

PURE = frozenset(
    {
        "gpubot",
        "gpubot.models",
        "gpubot.errors",
        "gpubot.offers",
        "gpubot.costs",
        "gpubot.lifecycle",
        "gpubot.templates",
        "gpubot.config",
        "gpubot.tomlcheck",
        "gpubot.redact",
        "gpubot.ports",
        "gpubot.providers",
        "gpubot.providers.base",
        "gpubot.remote",
        "gpubot.remote.runner",
        "gpubot.remote.control",
        "gpubot.remote.parsing",
        "gpubot.storage",
        "gpubot.storage.base",
        "gpubot.governance",
        "gpubot.governance.periods",
    }
)
"""Pure modules: decisions over plain data, the standard library only."""
PURE_PACKAGES = ("gpubot.commands", "gpubot.render")
"""Packages whose every module is pure, except those in :data:`NOT_PURE`."""
NOT_PURE = frozenset({"gpubot.render.charts"})
"""``render/charts.py`` draws the loss and cost PNGs with matplotlib: the one render module
that is an adapter (nothing pure imports it)."""

LAUNCHERS = frozenset({"bot.__main__"})
"""Entry-point modules outside ``app`` that may start the composition root."""
DYNAMIC_IMPORTERS = frozenset({"import_module", "__import__"})


@dataclass(frozen=True)
class Import:
    """One import statement: who imports what, and where."""

    importer: str
    imported: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.importer} -> {self.imported}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def first_party_files() -> list[Path]:
    files: list[Path] = []
    for top in FIRST_PARTY:
        files += sorted((ROOT / top).rglob("*.py"))
    return files


MODULES: dict[str, Path] = {module_name(p): p for p in first_party_files()}


def is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def resolve(node: ast.ImportFrom, importer: str) -> str:
    """The absolute module of a ``from`` import (relative imports included)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path) -> Iterator[Import]:
    """Every module ``path`` imports, at any depth; ``from pkg import mod`` names ``pkg.mod``."""
    importer = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(importer, alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            module = resolve(node, importer)
            yield Import(importer, module, path, node.lineno)
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                if candidate in MODULES:
                    yield Import(importer, candidate, path, node.lineno)


ALL_IMPORTS: list[Import] = [imp for path in first_party_files() for imp in imports_of(path)]


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def is_pure(name: str) -> bool:
    if name in NOT_PURE:
        return False
    return name in PURE or any(within(name, p) for p in PURE_PACKAGES)


def violations(rule: str) -> list[str]:
    return [f"{imp}  ({rule})" for imp in ALL_IMPORTS if breaks(rule, imp)]


def breaks(rule: str, imp: Import) -> bool:
    src, dst = imp.importer, imp.imported
    if rule == "core imports bot/workers/app":
        return within(src, "gpubot") and any(within(dst, p) for p in ("bot", "workers", "app"))
    if rule == "only the simulator imports gpubot.sim":
        return (
            within(src, "gpubot") and not within(src, "gpubot.sim") and within(dst, "gpubot.sim")
        )
    if rule == "bot and workers import each other":
        return (within(src, "bot") and within(dst, "workers")) or (
            within(src, "workers") and within(dst, "bot")
        )
    if rule == "only app imports app":
        return within(dst, "app") and not within(src, "app") and src not in LAUNCHERS
    if rule == "pure core imports only stdlib and pure modules":
        if not is_pure(src):
            return False
        top = dst.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            return False
        return not is_pure(dst)
    raise AssertionError(rule)


def test_the_scan_sees_every_package_and_function_local_imports() -> None:
    # a sanity check on the scanner itself: known edges, one of them inside a function
    edges = {(i.importer, i.imported) for i in ALL_IMPORTS}
    assert {"gpubot", "bot", "workers", "app"} <= {m.split(".")[0] for m in MODULES}
    assert ("app.cli", "app.serve") in edges  # imported inside _cmd_serve
    assert ("workers.tasks", "workers.celery_app") in edges
    assert all(is_pure(m) for m in PURE)


def test_the_core_imports_neither_bot_workers_nor_app() -> None:
    assert violations("core imports bot/workers/app") == []


def test_only_the_simulator_and_the_composition_root_import_the_simulator() -> None:
    assert violations("only the simulator imports gpubot.sim") == []


def test_bot_and_workers_do_not_import_each_other() -> None:
    assert violations("bot and workers import each other") == []


def test_nothing_but_entry_points_imports_the_composition_root() -> None:
    assert violations("only app imports app") == []


def test_the_pure_core_imports_only_the_standard_library_and_pure_modules() -> None:
    assert violations("pure core imports only stdlib and pure modules") == []
    # and the packages a pure module is imported through are pure too
    for name in [m for m in MODULES if is_pure(m)]:
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            assert is_pure(parent), f"{name} is pure but its package {parent} is not"


def dynamic_imports(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in DYNAMIC_IMPORTERS:
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            yield f"{where}: {ast.unparse(node)}"


def test_no_module_is_imported_by_a_name_in_a_string() -> None:
    found = [hit for path in first_party_files() for hit in dynamic_imports(path)]
    assert found == []
