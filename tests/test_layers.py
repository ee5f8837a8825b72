"""The architecture rules of DESIGN §1: who may import whom, and what `import sage_nb` costs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sage_nb

ROOT = Path(sage_nb.__file__).parent

# module prefix -> sage_nb modules it must not import at module level (DESIGN §1 "must not know")
FORBIDDEN = {
    "sage_nb.graph": ("sage_nb.runtime", "sage_nb.inspector", "sage_nb.compiler"),
    "sage_nb.compiler": ("sage_nb.runtime.task", "sage_nb.runtime.sources", "sage_nb.runtime.bundles",
                         "sage_nb.runtime.chain", "sage_nb.runtime.threads", "sage_nb.runtime.dispatcher",
                         "sage_nb.runtime.job", "sage_nb.runtime.ray_backend", "sage_nb.inspector"),
    "sage_nb.communication": ("sage_nb.graph", "sage_nb.compiler", "sage_nb.runtime", "sage_nb.inspector",
                              "sage_nb.metrics"),
    "sage_nb.runtime": ("sage_nb.inspector",),
    "sage_nb.metrics": ("sage_nb.inspector", "sage_nb.runtime"),
}


def _module_level_imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in tree.body:  # module level only: imports inside functions are lazy on purpose
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}
    return found


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield path, ".".join(parts)


@pytest.mark.parametrize(("path", "module"), list(_modules()), ids=lambda v: str(v)[-40:])
def test_imports_point_down(path, module):
    rules = [bad for prefix, bad in FORBIDDEN.items() if module == prefix or module.startswith(prefix + ".")]
    imports = _module_level_imports(path, module)
    for bad in (b for group in rules for b in group):
        offenders = sorted(i for i in imports if i == bad or i.startswith(bad + "."))
        assert not offenders, f"{module} imports {offenders} at module level (DESIGN §1)"


def test_import_is_fast_and_never_imports_ray_or_widgets():
    code = ("import sys, time; t = time.perf_counter(); import sage_nb; dt = time.perf_counter() - t; "
            "print(dt, 'ray' in sys.modules, 'ipywidgets' in sys.modules)")
    best = min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.split()[0]) for _ in range(3))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[1:] == ["False", "False"]
    assert best < 0.3, f"import sage_nb took {best:.3f} s"
