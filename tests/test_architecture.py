"""The import rules of docs/ARCHITECTURE.md: no module of studio, tuning or
worker is part of an import circle (imports inside functions count: a local
import does not make a circle go away), and the contracts in .importlinter
hold (checked by import-linter's own command)."""

import os
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("studio", "tuning", "worker")


def import_circles(graph) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan, iteratively)."""
    modules = sorted(m for m in graph.modules if ".migrations" not in m)
    edges = {m: sorted(w for w in graph.find_modules_directly_imported_by(m) if ".migrations" not in w)
             for m in modules}
    index, low, on_stack, stack, circles, counter = {}, {}, set(), [], [], 0
    for start in modules:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            successors = edges[node]
            if position < len(successors):
                work.append((node, position + 1))
                successor = successors[position]
                if successor not in index:
                    work.append((successor, 0))
                elif successor in on_stack:
                    low[node] = min(low[node], index[successor])
                continue
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    circles.append(sorted(group))
            if work:  # tell the caller what its child reached
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return circles


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    circles = import_circles(graph)
    described = ["  " + " ↔ ".join(circle) for circle in circles]
    assert not circles, "import circles (break each so that imports point one way):\n" + "\n".join(described)


def test_the_circle_finder_finds_a_circle():
    graph = grimp.ImportGraph()
    for module in ("a", "a.one", "a.two", "a.three"):
        graph.add_module(module)
    graph.add_import(importer="a.one", imported="a.two")
    graph.add_import(importer="a.two", imported="a.three")
    graph.add_import(importer="a.three", imported="a.one")
    assert import_circles(graph) == [["a.one", "a.three", "a.two"]]


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
