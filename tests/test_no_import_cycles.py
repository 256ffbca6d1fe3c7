"""No import cycles among the project's modules: every import a module makes, at its top, inside a
function (a deferred import is still a dependency) or under ``if TYPE_CHECKING`` (an annotation
that needs a module above it is a dependency too)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"engine": "gboost", "kernels": "gboost.kernels"}   # folder -> installed import name


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, name in PACKAGES.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = (name, *f.relative_to(ROOT / folder).with_suffix("").parts)
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imports(tree: ast.AST):
    """Every import node, ``if TYPE_CHECKING:`` blocks included."""
    return (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for name, f in mods.items():
        is_pkg = f.name == "__init__.py"
        deps = set()
        for node in _imports(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[:len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in mods and t != name}
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_graph_sees_the_imports():
    g = _graph(_modules())
    assert "gboost.kv.cache" in g["gboost.scheduler"] and "gboost.models.sources" in g["gboost.models.loader"]
    assert "gboost.collab.fused_step" in g["gboost.collab.executor"]   # relative imports resolved
    assert "gboost.kernels.spec_verify" in g["gboost.collab.fused_step"]      # and imports inside functions
    assert "gboost.search.context" in g["gboost.search.gboost"]              # and those for annotations only


def test_no_import_cycles():
    cycle = _cycle(_graph(_modules()))
    assert cycle is None, " -> ".join(cycle)


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for d in graph[todo.pop()]:
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def test_dependencies_point_down_the_request_path():
    """search (policy) never reaches collab (execution); llm, kv, models and kernels reach neither."""
    g = _graph(_modules())
    below = {"gboost.search": ("gboost.collab", "gboost.stack", "gboost.server"),
             "gboost.llm": ("gboost.search", "gboost.collab"),
             "gboost.kv": ("gboost.search", "gboost.collab", "gboost.llm", "gboost.scheduler"),
             "gboost.models": ("gboost.search", "gboost.collab", "gboost.llm", "gboost.scheduler"),
             "gboost.kernels": tuple(f"gboost.{d.name}" for d in (ROOT / "engine").iterdir()
                                     if (d / "__init__.py").exists()) + tuple(f"gboost.{f.stem}" for f in
                                     (ROOT / "engine").glob("*.py") if f.stem != "__init__")}
    for pkg, forbidden in below.items():
        for mod in (m for m in g if m == pkg or m.startswith(pkg + ".")):
            bad = sorted(d for d in _reach(g, mod) if any(d == f or d.startswith(f + ".") for f in forbidden))
            assert not bad, f"{mod} reaches {bad}"
