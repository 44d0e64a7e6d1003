"""The packages' layers run one way: pretrain/ is the ground floor, transfer/ builds on it, tools/ on both.

Checked twice: statically (every import statement of every library module, so no circle and no upward or
private-name import can hide behind a lazy import inside a function) and at run time (a fresh interpreter
imports every pretrain module and finds neither transfer nor detectron2 loaded, and nothing patched).
"""
import ast
import json
import os
import subprocess
import sys

from pretrain.common.paths import REPO_ROOT

PACKAGES = ("pretrain", "transfer")


def _modules():
    """{dotted module name: path} of every library module."""
    found = {}
    for top in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO_ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = path
    return found


def _imports(module, path, modules):
    """(imported module, imported name or None) for every import statement in the file."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full, None) if full in modules else (base, alias.name)


def _graph():
    modules = _modules()
    edges, private = {}, []
    for module, path in modules.items():
        edges[module] = set()
        for target, name in _imports(module, path, modules):
            top = target.split(".")[0]
            if top in PACKAGES + ("detectron2", "tools"):
                edges[module].add(target)
            if top in PACKAGES and name and name.startswith("_") and not name.startswith("__"):
                private.append(f"{module} imports {target}.{name}")
    return modules, edges, private


def test_pretrain_imports_no_transfer_detectron2_or_tools():
    _, edges, _ = _graph()
    upward = sorted(f"{m} -> {t}" for m, targets in edges.items() if m.startswith("pretrain")
                    for t in targets if t.split(".")[0] in ("transfer", "detectron2", "tools"))
    assert not upward, upward


def _docstrings(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                yield first.value


def test_no_library_module_reaches_into_tools():
    modules, edges, _ = _graph()
    into_tools = sorted(f"{m} -> {t}" for m, targets in edges.items() for t in targets if t.split(".")[0] == "tools")
    assert not into_tools, into_tools
    by_path = []
    for module, path in modules.items():
        tree = ast.parse(open(path).read(), path)
        docs = {id(c) for c in _docstrings(tree)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                    and (node.value == "tools" or node.value.startswith("tools/"))):
                by_path.append(f"{module}:{node.lineno}")
    assert not by_path, f"library code building paths into tools/: {by_path}"


def test_no_private_names_across_modules():
    _, _, private = _graph()
    assert not private, private


def test_no_import_cycles():
    modules, edges, _ = _graph()
    graph = {m: sorted(t for t in edges[m] if t in modules) for m in modules}
    # a package's __init__ importing its own sub-modules is not a cycle worth refusing
    graph = {m: [t for t in ts if not t.startswith(m + ".")] for m, ts in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_importing_every_pretrain_module_loads_no_transfer_and_patches_nothing():
    names = sorted(m for m in _modules() if m.startswith("pretrain"))
    code = (
        "import importlib, json, sys\n"
        "import numpy, PIL.Image\n"
        "before = (hasattr(numpy, 'bool'), hasattr(PIL.Image, 'LINEAR'))\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('transfer', 'detectron2', 'tools'))\n"
        "after = (hasattr(numpy, 'bool'), hasattr(PIL.Image, 'LINEAR'))\n"
        "print(json.dumps({'loaded': loaded, 'patched': before != after}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"loaded": [], "patched": False}, seen
