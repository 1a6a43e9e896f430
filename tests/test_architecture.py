"""docs/architecture.md's import table, enforced: every module's imports are parsed with `ast`;
an import a unit may not make, or one that closes a cycle between modules, fails here.

The table is read from the docs page itself, so the page and the code cannot drift apart.
`KNOWN` lists the edges the redesign (issue #12) has not removed yet, each with the step that
removes it; an entry no longer needed fails too, so the list only ever shrinks.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("lane", "scanner", "barrier", "uplink", "sim")

# importer module -> imported module prefix: edges the table forbids that are still there.
KNOWN: dict[tuple[str, str], str] = {}
# Cycles between modules not cut yet (sorted member lists), with the step that cuts them.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(path: Path, *, top_level_only: bool) -> Iterator[str]:
    """Our modules `path` imports. `from pkg import sub` names the submodule, not the package.

    Top level includes `if TYPE_CHECKING:` blocks (a typing-only cycle is still a cycle in the
    design) but not imports inside functions, which are how an entry point loads a unit lazily.
    """
    tree = ast.parse(path.read_text(), str(path))
    nodes: list[ast.stmt] = list(tree.body)
    if not top_level_only:
        nodes = [n for n in ast.walk(tree) if isinstance(n, ast.stmt)]
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.If | ast.Try) and top_level_only:
            nodes += [*node.body, *node.orelse]
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in MODULES:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            named = [s for s in subs if s in MODULES]
            yield from named
            if len(named) < len(subs):
                yield node.module


def table() -> dict[str, set[str]]:
    """unit -> units it may import, from the table of docs/architecture.md."""
    rows = re.findall(r"^\| `([\w.]+)`[^|]*\|[^|]*\| ([^|]*) \|$", DOC.read_text(), re.M)
    assert rows, "no unit table in docs/architecture.md"
    allowed: dict[str, set[str]] = {}
    for unit, may in rows:
        if may.startswith("every unit above"):
            allowed[unit] = set(allowed)
        elif may.startswith("everything"):
            allowed[unit] = {u for u, _ in rows}
        else:
            allowed[unit] = set(re.findall(r"`([\w.]+)`", may))
    return allowed


ALLOWED = table()


def unit_of(module: str) -> str:
    """The longest unit name that prefixes `module` (lane.auth.keys -> lane.auth)."""
    owners = [u for u in ALLOWED if module == u or module.startswith(u + ".")]
    assert owners, f"{module} belongs to no unit of docs/architecture.md"
    return max(owners, key=len)


def forbidden_imports() -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for module, path in MODULES.items():
        src = unit_of(module)
        for target in imported(path, top_level_only=False):
            dst = unit_of(target)
            if dst != src and dst not in ALLOWED[src]:
                found[(module, target)] = f"{src} may not import {dst}"
    return found


def known(module: str, target: str) -> tuple[str, str] | None:
    for key in KNOWN:
        if module == key[0] and (target == key[1] or target.startswith(key[1] + ".")):
            return key
    return None


def cycles() -> list[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph = {m: sorted(set(imported(p, top_level_only=True))) for m, p in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            for j in range(i, len(graph[node])):
                nxt = graph[node][j]
                if nxt not in index:
                    work += [(node, j + 1), (nxt, 0)]
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                if low[node] == index[node]:
                    members = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        members.append(top)
                        if top == node:
                            break
                    if len(members) > 1:
                        found.append(tuple(sorted(members)))
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
    return found


def test_every_module_belongs_to_a_unit_of_the_table() -> None:
    assert {"lane.core", "lane", "sim"} <= set(ALLOWED)
    for module in MODULES:
        unit_of(module)


def test_no_import_breaks_the_table() -> None:
    found = forbidden_imports()
    new = {edge: why for edge, why in found.items() if known(*edge) is None}
    assert new == {}, "imports docs/architecture.md forbids (fix the import or the design)"
    used = {known(*edge) for edge in found}
    stale = {edge: why for edge, why in KNOWN.items() if edge not in used}
    assert stale == {}, "KNOWN lists edges that are gone: remove them and update the docs"


def test_no_import_closes_a_cycle() -> None:
    found = set(cycles())
    assert found - set(KNOWN_CYCLES) == set(), "modules that import each other"
    assert set(KNOWN_CYCLES) - found == set(), "KNOWN_CYCLES lists a cycle that is gone"


def test_the_core_may_import_nothing_outside_itself() -> None:
    """The functional core's rule itself, not only whatever its row of the table says: a pure
    helper the core needs lives in lane.core (lane/core/backoff.py), the row never grows."""
    assert ALLOWED["lane.core"] == set()


def test_the_checker_sees_a_forbidden_import_and_a_cycle(tmp_path: Path) -> None:
    """The checks above would fail on a violation: the rules, applied to a made-up graph."""
    assert "uplink" not in ALLOWED["lane.core"]
    assert "lane" not in ALLOWED["uplink"]
    sample = tmp_path / "m.py"
    sample.write_text("from lane.core import events\nif True:\n    import uplink.queue\n")
    assert sorted(imported(sample, top_level_only=True)) == ["lane.core.events", "uplink.queue"]


# Third-party packages the leaf units may use (everything else they import is the stdlib).
THIRD_PARTY: dict[str, set[str]] = {
    "lane.core": set(),
    "lane.wire": {"msgpack"},
    "lane.transport": {"aiomqtt", "paho"},
    "lane.toml_model": {"pydantic"},
}
# Where modules used to be: nothing may live there again (no shims left behind).
MOVED = ("barrier.wire", "barrier.mqtt", "barrier.topics", "lane.ids", "lane.backoff")


def third_party(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - set(PACKAGES) - {"__future__"}


def test_the_leaf_units_use_only_their_own_libraries() -> None:
    for module, path in MODULES.items():
        unit = unit_of(module)
        if unit in THIRD_PARTY:
            extra = third_party(path) - THIRD_PARTY[unit]
            assert extra == set(), f"{module} imports {sorted(extra)}"


def test_no_module_lives_at_a_moved_path() -> None:
    assert set(MOVED) & set(MODULES) == set()


def test_the_lane_package_imports_nothing() -> None:
    """Importing lane.wire must not pull in the shell: lane/__init__.py stays empty of imports."""
    tree = ast.parse(MODULES["lane"].read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
