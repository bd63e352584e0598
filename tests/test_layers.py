"""The package's layers stay one-way: experts -> model -> data -> training / evaluation / probing / adaptation ->
cli; no module imports a higher layer (a lower layer that needs something of a higher one means the thing lives
in the wrong place, e.g. labelled image loading in probing)."""
from __future__ import annotations

import ast
from pathlib import Path

import multimeditron

LAYERS = {"experts": 0, "model": 1, "data": 2, "training": 3, "evaluation": 3, "probing": 3, "adaptation": 3,
          "cli": 4}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def test_no_module_imports_a_higher_layer():
    root = Path(multimeditron.__file__).parent
    upward = []
    for package, layer in LAYERS.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, module in _imports(path):
                parts = module.split(".")
                if parts[0] == "multimeditron" and len(parts) > 1 and LAYERS.get(parts[1], -1) > layer:
                    upward.append(f"{path.relative_to(root)}:{line} imports {module}")
    assert not upward, "\n".join(upward)
