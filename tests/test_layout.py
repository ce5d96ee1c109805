"""The package layout's rules, read from the source (nothing is imported):

* dependencies point one way, down ``LAYERS``: a room imports only from rooms above it (or
  itself), counting function-level and TYPE_CHECKING imports too;
* no import cycle among modules at import time;
* no folder holds more than 15 modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "nlpkit"
# each room may import the rooms before it; the same position means independent siblings
LAYERS = ["errors", "io", "store", "text", "vectors", "embed", "lm", "llm", "rag", "quantize", "data", "tune",
          "serve", "cli"]  # fmt: skip
TOP_FREE = {"nlpkit", "nlpkit.__main__"}  # the package itself and `python -m nlpkit`


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path) -> list[tuple[str, bool, int]]:
    """(target module, at import time, line) for every import of nlpkit in the file."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found: list[tuple[str, bool, int]] = []

    def walk(nodes: list[ast.stmt], top: bool) -> None:
        for n in nodes:
            if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
                walk(n.body, False)
                walk(n.orelse, top)
                continue
            if isinstance(n, ast.Import):
                found.extend((a.name, top, n.lineno) for a in n.names)
            elif isinstance(n, ast.ImportFrom):
                mod = n.module or ""
                if n.level:
                    mod = ".".join(base[: len(base) - n.level + 1] + ([mod] if mod else []))
                found.append((mod, top, n.lineno))
                found.extend((f"{mod}.{a.name}", top, n.lineno) for a in n.names)
            inner = top and not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for field in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(n, field, None)
                if isinstance(sub, list):
                    walk(sub, inner)

    walk(ast.parse(path.read_text(encoding="utf-8")).body, True)
    return [(t, top, line) for t, top, line in found if t == "nlpkit" or t.startswith("nlpkit.")]


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = _modules()


def _resolve(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_every_room_is_in_the_layer_list() -> None:
    rooms = {_room(m) for m in MODULES if m not in TOP_FREE}
    assert rooms <= set(LAYERS), f"add {sorted(rooms - set(LAYERS))} to LAYERS in this test"


def test_dependencies_point_down_the_layers() -> None:
    wrong = []
    for module, path in MODULES.items():
        if module in TOP_FREE:
            continue
        mine = LAYERS.index(_room(module) or "")
        for target, _, line in _imports(module, path):
            resolved = _resolve(target)
            if resolved is None or resolved == "nlpkit":  # `from nlpkit import __version__`
                continue
            room = _room(resolved)
            if room is not None and LAYERS.index(room) > mine:
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line}: {module} imports {resolved}")
    assert not wrong, "imports that point up the layers:\n" + "\n".join(sorted(set(wrong)))


def test_no_import_cycle_at_import_time() -> None:
    graph = {
        m: {r for t, top, _ in _imports(m, p) if top and (r := _resolve(t)) and r != m}
        for m, p in MODULES.items()
    }
    # a package importing its own modules is how Python loads it, not a cycle
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                cycle.extend([*stack[stack.index(t) :], t])
                return True
            if t not in state and visit(t, [*stack, t]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if m not in state and visit(m, [m]):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("folder", sorted({p.parent for p in ROOT.rglob("*.py")}), ids=str)
def test_no_folder_holds_more_than_15_modules(folder: Path) -> None:
    modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= 15, f"{folder}: {len(modules)} modules; split it into rooms"
