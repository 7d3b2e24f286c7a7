"""The shape of the code: no import cycles between our modules (imports
inside functions included), dicomnodes imports no other app, and of
pynetdicom only the codec and tables (issue 14: its AE, Association,
transport and event machinery left runscp and the job runner)."""

import ast
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]  # the project, above tests/pacs_site/
APPS = ("pacs_site", "dicomnodes", "worklist", "portal", "publishing")


def _module_name(path):
    parts = list(path.relative_to(BASE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    found = {}
    for app in APPS:
        for path in (BASE_DIR / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            found[_module_name(path)] = path
    return found


def _imports(path, modules, *, package):
    """(imported module, line, inside a function?) for each import of one of `modules`."""
    tree = ast.parse(path.read_text(), str(path))
    functions = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(fn)
    }
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                yield name, node.lineno, id(node) in functions


def _graph():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {
            (target, line, inner)
            for target, line, inner in _imports(path, modules, package=package)
            if target != name and not modules[target].name == "__init__.py"
        }
    return graph


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_covers_every_app():
    graph = _graph()
    assert {"dicomnodes.scp.server", "worklist.mllp", "portal.views", "publishing.tasks", "pacs_site.listeners"} <= set(
        graph
    )
    assert "dicomnodes.archive.index" in {target for target, _, _ in graph["dicomnodes.scp.server"]}


def test_the_import_graph_has_no_cycles_even_through_imports_inside_functions():
    cycles = _cycles(_graph())
    assert cycles == [], "import cycles: " + "; ".join(" ↔ ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {("b", 1, False)}, "b": {("c", 1, True)}, "c": {("a", 1, False)}, "d": {("a", 1, False)}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_dicomnodes_imports_no_other_app():
    reaching_out = sorted(
        f"{name} → {target} (line {line})"
        for name, targets in _graph().items()
        if name.startswith("dicomnodes")
        for target, line, _ in targets
        if target.split(".")[0] in ("worklist", "portal", "publishing")
    )
    assert reaching_out == []


def test_imports_inside_functions_are_only_in_app_ready():
    """AppConfig.ready() imports models and signals once the registry is ready;
    anywhere else an import inside a function hides a cycle or a slow start."""
    inner = sorted(
        f"{name} → {target} (line {line})"
        for name, targets in _graph().items()
        for target, line, is_inner in targets
        if is_inner and not name.endswith(".apps")
    )
    assert inner == []


# What our apps may use of pynetdicom: the PDU codec and its primitives,
# presentation-context negotiation, the dataset codec, SOP class and status
# tables.  Not AE, Association, transport, DUL/DIMSE providers, evt, _config.
PYNETDICOM_ALLOWED = {
    "pynetdicom._globals",
    "pynetdicom.dsutils",
    "pynetdicom.pdu",
    "pynetdicom.pdu_items",
    "pynetdicom.pdu_primitives",
    "pynetdicom.presentation",
    "pynetdicom.sop_class",
    "pynetdicom.status",
}


def _pynetdicom_imports(path):
    """(module imported, line) for each pynetdicom import of one file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pynetdicom":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pynetdicom":
            if node.module == "pynetdicom":  # from pynetdicom import AE, evt, ...
                for alias in node.names:
                    yield f"pynetdicom.{alias.name}", node.lineno
            else:
                yield node.module, node.lineno


def test_our_apps_use_only_pynetdicoms_codec_and_tables():
    used = sorted(
        f"{name} → {module} (line {line})"
        for name, path in _modules().items()
        for module, line in _pynetdicom_imports(path)
        if module not in PYNETDICOM_ALLOWED
    )
    assert used == []


def test_the_pynetdicom_import_finder_sees_every_form(tmp_path):
    path = tmp_path / "sample.py"
    path.write_text(
        "import pynetdicom\nfrom pynetdicom import AE, evt\nfrom pynetdicom.association import Association\n"
        "def f():\n    from pynetdicom.pdu import A_ASSOCIATE_RQ\n"
    )
    found = [module for module, _ in _pynetdicom_imports(path)]
    assert found == ["pynetdicom", "pynetdicom.AE", "pynetdicom.evt", "pynetdicom.association", "pynetdicom.pdu"]
