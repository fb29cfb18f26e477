"""The package's shape: no import cycle inside dvr1/ (lazy, in-function imports included), and only dvr1/parallel/
(and megatron_patches/) touch megatron-core's parallel_state: everything else asks dvr1.parallel.grid."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _modules():
    mods = {}
    for p in sorted((REPO / "dvr1").rglob("*.py")):
        name = ".".join(p.relative_to(REPO).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def _imports(path: Path):
    """(line, imported module name) of every import statement in the file, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for a in node.names:
                yield node.lineno, f"{node.module}.{a.name}"


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_dvr1():
    mods = _modules()
    edges = {m: {t for _, t in _imports(p) if t in mods and t != m} for m, p in mods.items()}
    assert import_cycles(edges) == []


def test_parallel_state_only_under_dvr1_parallel():
    offenders = []
    for p in sorted(list((REPO / "dvr1").rglob("*.py")) + list((REPO / "tools").rglob("*.py"))):
        rel = p.relative_to(REPO).as_posix()
        if rel.startswith("dvr1/parallel/"):
            continue
        offenders += [f"{rel}:{line}" for line, name in _imports(p) if name.startswith("megatron.core.parallel_state")]
    assert offenders == []
