"""The package's layers point down: parse every import of every module of xtds and check it.

The layers are those of docs/architecture.md: a module may import modules of lower layers, and
modules of its own subpackage; nothing else. Imports inside functions count too.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "xtds"

#: Layer of each module (or subpackage: every module below it), lowest first; as docs/architecture.md.
LAYERS = [
    ("xtds._version", "xtds.errors", "xtds.units"),
    ("xtds.crystal",),
    ("xtds.symmetry", "xtds.laue", "xtds.formfactor", "xtds.kpath", "xtds.nac", "xtds.corrections"),
    ("xtds.ifc",),
    ("xtds.dynamics", "xtds.supercell", "xtds.elastic"),
    ("xtds.phonons", "xtds.phonopy_io"),
    ("xtds.model", "xtds.volume"),
    ("xtds.io",),
    ("xtds.fitting",),
    ("xtds.datasets", "xtds.plot", "xtds.amortized"),
    ("xtds.accessor", "xtds.cli", "xtds"),
]


def unit_of(module: str) -> str:
    """The layer entry a module belongs to (its subpackage, or itself)."""
    names = [n for layer in LAYERS for n in layer]
    best = max((n for n in names if module == n or module.startswith(n + ".")), key=len, default=None)
    assert best is not None, f"{module} is in no layer of LAYERS (add it there and to docs/architecture.md)"
    return best


def layer_of(module: str) -> int:
    unit = unit_of(module)
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> list[tuple[str, int]]:
    """(imported xtds module, line) for every import statement in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "xtds"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "xtds":
            if node.module == "xtds":  # `from xtds import io`: the submodules themselves
                out += [(f"xtds.{a.name}", node.lineno) for a in node.names]
            else:
                out.append((node.module, node.lineno))
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    me = module_name(path)
    for target, line in imports_of(path):
        if me != "xtds":
            assert target != "xtds", f"{me}:{line} imports the top-level package; import the module it needs"
        if target == "xtds" or me == "xtds":
            continue
        same_unit = unit_of(target) == unit_of(me)
        assert same_unit or layer_of(target) < layer_of(me), (
            f"{me}:{line} imports {target}, which is not in a lower layer "
            f"({unit_of(me)}: layer {layer_of(me)}, {unit_of(target)}: layer {layer_of(target)})"
        )


def test_the_check_catches_an_upward_import(tmp_path):
    """The parser sees function-level imports and `from xtds import x` (a test that can fail)."""
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from xtds.fitting import fit\n    from xtds import io\n    import xtds.cli\n")
    assert [t for t, _ in imports_of(src)] == ["xtds.fitting", "xtds.io", "xtds.cli"]
    assert layer_of("xtds.fitting.core") > layer_of("xtds.model.exact") > layer_of("xtds.crystal")


def test_every_module_has_a_layer():
    for path in MODULES:
        unit_of(module_name(path))
