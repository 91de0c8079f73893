"""The package's layers point down: parse every import of every module of xtds and check it.

The layers are read from docs/architecture.md (its table under "## Layers"), not from a copy:
a module may import the modules of its own unit and of units in lower layers; nothing else.
A package's ``__init__`` may also re-export from its own descendants (a facade). Imports inside
functions count too; dynamic imports (``importlib.import_module``, ``__import__``), import cycles
(anywhere, within a unit too) and private names imported from another module are refused; at
most eight modules sit at the package root. The checker is tested on planted violations.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xtds"
DOC = ROOT / "docs" / "architecture.md"

#: The most modules at the package root (besides __init__, _version, __main__).
MAX_ROOT_MODULES = 8


def layers_from_doc(text: str) -> list[tuple[str, ...]]:
    """The units of each layer, lowest first, from the Markdown table under ``## Layers``: rows
    ``| n | `unit` `unit` | … |`` in increasing n."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            rows.append((int(m.group(1)), tuple(re.findall(r"`([\w.]+)`", m.group(2)))))
    numbers = [n for n, _ in rows]
    assert numbers == list(range(len(rows))) and rows, f"the layers of {DOC.name} must be numbered 0, 1, …"
    return [units for _, units in rows]


def module_name(path: pathlib.Path, package: pathlib.Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules_of(package: pathlib.Path) -> dict[str, pathlib.Path]:
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def imports_of(path: pathlib.Path, me: str, modules: dict) -> list[tuple[str, str, int]]:
    """(imported module of the package, imported name or '', line) for every import in the file,
    relative ones resolved; ``from a import b`` names module a.b when that is a module."""
    top = me.split(".")[0]
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == top]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = me.split(".") if is_pkg else me.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != top:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, "", node.lineno) if sub in modules else (base, a.name, node.lineno))
    return out


def dynamic_imports(path: pathlib.Path) -> list[int]:
    """Lines that import dynamically (``importlib.import_module``, ``__import__``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        name = None
        if isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.alias):
            name = node.name
        if name in ("import_module", "__import__"):
            lines.append(getattr(node, "lineno", 0))
    return lines


class Checker:
    """The rules of the module docstring over one package tree and one table of layers."""

    def __init__(self, package: pathlib.Path, layers: list[tuple[str, ...]]):
        self.package, self.layers = package, layers
        self.modules = modules_of(package)
        self.units = [u for layer in layers for u in layer]

    def unit_of(self, module: str) -> str | None:
        """The unit a module belongs to: the longest unit that is it or a package above it (the
        root package's unit holds its ``__init__`` alone, so that a new root module needs a row)."""
        root = self.package.name
        return max((u for u in self.units if module == u or (u != root and module.startswith(u + "."))),
                   key=len, default=None)

    def layer_of(self, unit: str) -> int:
        return next(i for i, layer in enumerate(self.layers) if unit in layer)

    def graph(self) -> dict[str, set[str]]:
        g = {m: set() for m in self.modules}
        for m, path in self.modules.items():
            for target, _, _ in imports_of(path, m, self.modules):
                while target and target not in self.modules:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != m:
                    g[m].add(target)
        return g

    def violations(self) -> list[str]:
        out = []
        root = self.package.name
        flat = [p.name for p in self.package.glob("*.py")
                if p.name not in ("__init__.py", "_version.py", "__main__.py")]
        if len(flat) > MAX_ROOT_MODULES:
            out.append(f"{len(flat)} modules at the package root (at most {MAX_ROOT_MODULES}): {sorted(flat)}")
        for m, path in self.modules.items():
            me = self.unit_of(m)
            if me is None:
                out.append(f"{m} is in no layer of {DOC.name} (add its unit there)")
                continue
            out += [f"{m}:{line} imports dynamically (import_module/__import__)" for line in dynamic_imports(path)]
            for target, name, line in imports_of(path, m, self.modules):
                if m != root and target == root:
                    out.append(f"{m}:{line} imports the top-level package; import the module it needs")
                    continue
                if name.startswith("_") and not name.endswith("__") and target != m:
                    out.append(f"{m}:{line} imports the private name {name} of {target}")
                facade = path.name == "__init__.py" and target.startswith(m + ".")
                if m == root or facade or target == root:
                    continue
                them = self.unit_of(target)
                if them is None:
                    out.append(f"{m}:{line} imports {target}, which is in no layer")
                elif them != me and not self.layer_of(them) < self.layer_of(me):
                    way = "sideways" if self.layer_of(them) == self.layer_of(me) else "upward"
                    out.append(f"{m}:{line} imports {target} {way} ({me}: layer {self.layer_of(me)}, "
                               f"{them}: layer {self.layer_of(them)})")
        out += [f"import cycle: {' → '.join(c)}" for c in cycles(self.graph())]
        return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


LAYERS = layers_from_doc(DOC.read_text(encoding="utf-8"))


def test_the_package_follows_its_layers():
    problems = Checker(PACKAGE, LAYERS).violations()
    assert not problems, "\n".join(problems)


#: The longest a function of the fitting and observables packages may be (lines, docstring included).
MAX_FUNCTION_LINES = 80


def test_no_long_functions_in_fitting_and_observables():
    long = []
    for sub in ("fitting", "observables"):
        for path in sorted((PACKAGE / sub).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_every_unit_of_the_doc_exists():
    modules = modules_of(PACKAGE)
    for unit in (u for layer in LAYERS for u in layer):
        assert unit in modules, f"{DOC.name} names {unit}, which is not a module of the package"


# ---------------------------------------------------------------------- the checker catches violations
PLANT_LAYERS = [("pkg.base",), ("pkg.low",), ("pkg.mid_a", "pkg.mid_b"), ("pkg.top", "pkg")]


def _plant(tmp_path, files: dict[str, str]) -> pathlib.Path:
    pkg = tmp_path / "pkg"
    base = {"__init__.py": "", "base.py": "", "low/__init__.py": "", "low/one.py": "from pkg.base import x\n",
            "low/two.py": "", "mid_a.py": "from pkg.low.one import y\n", "mid_b.py": "", "top.py": ""}
    for name, text in {**base, **files}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    return pkg


def test_a_clean_plant_passes(tmp_path):
    assert Checker(_plant(tmp_path, {}), PLANT_LAYERS).violations() == []


@pytest.mark.parametrize(("files", "expect"), [
    ({"low/two.py": "def f():\n    from pkg.mid_a import y\n"}, "upward"),
    ({"mid_b.py": "from pkg import mid_a\n"}, "sideways"),
    ({"mid_b.py": "import pkg.mid_a\n"}, "sideways"),
    ({"low/two.py": "import importlib\nm = importlib.import_module('pkg.top')\n"}, "dynamically"),
    ({"low/two.py": "m = __import__('pkg.top')\n"}, "dynamically"),
    ({"low/one.py": "from pkg.low.two import z\n", "low/two.py": "from . import one\n"}, "import cycle"),
    ({"mid_a.py": "from pkg.base import _hidden\n"}, "private name"),
    ({"mid_a.py": "import pkg\n"}, "top-level package"),
    ({"extra.py": ""}, "no layer"),
    ({f"m{i}.py": "" for i in range(8)}, "package root"),
])
def test_the_checker_catches_a_planted_violation(tmp_path, files, expect):
    layers = PLANT_LAYERS + ([("pkg.extra",)] if "extra.py" not in files else [])
    if "m0.py" in files:
        layers = [*PLANT_LAYERS[:-1], (*PLANT_LAYERS[-1], *[f"pkg.m{i}" for i in range(8)])]
    problems = Checker(_plant(tmp_path, files), layers).violations()
    assert any(expect in p for p in problems), problems


def test_the_layers_are_read_from_the_page():
    text = "## Layers\n\n| layer | units |\n|---|---|\n| 0 | `a` `b` |\n| 1 | `c` |\n\n## Next\n| 7 | `z` |\n"
    assert layers_from_doc(text) == [("a", "b"), ("c",)]
