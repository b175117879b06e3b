"""The layering rules of docs/design.md section 6 hold: `pipesynth` never imports torch or transformers,
layers import only downwards, and no private name is imported across modules."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Each layer's rank: a module may import its own layer and lower ranks only (peers of one rank not each
#: other). `runtime` (installed as pipesynth.runtime) sits above the planning layers; the CLI above all,
#: and the package root (`pipesynth/__init__.py`, `__main__`, re-exporting and registering) above that.
RANKS = {
    "errors": 0,
    "interrupts": 0,
    "version": 0,
    "core": 1,
    "formats": 2,
    "construct": 2,
    "solver": 3,
    "plan": 4,
    "analysis": 5,
    "runtime": 6,
    "cli": 7,
    "__init__": 8,
    "__main__": 8,
}


def module_name(path: Path) -> str:
    """`pipesynth/plan/job.py` -> pipesynth.plan.job; `runtime/train.py` -> pipesynth.runtime.train."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "runtime":
        parts.insert(0, "pipesynth")
    if parts[-1] == "__init__" and len(parts) > 2:
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    """The layer a `pipesynth...` module belongs to (`__init__` for the package itself); None outside."""
    parts = module.split(".")
    if parts[0] != "pipesynth":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def source_files() -> list[Path]:
    return sorted([*(ROOT / "pipesynth").rglob("*.py"), *(ROOT / "runtime").rglob("*.py")])


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every absolute import in the file, those inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def test_importing_every_pipesynth_module_imports_neither_torch_nor_transformers():
    names = [module_name(p) for p in source_files()]
    modules = [m for m in names if not m.startswith("pipesynth.runtime") and m != "pipesynth.__main__"]  # it runs
    assert len(modules) > 50 and "pipesynth.plan.plan_file" in modules and "pipesynth.cli.run" in modules
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_layers_import_only_downwards():
    wrong = []
    for path in source_files():
        me = module_name(path)
        mine = layer_of(me)
        assert mine in RANKS, f"{path}: layer {mine!r} has no rank; add it to RANKS and docs/design.md section 6"
        for line, module, _ in imports(path):
            theirs = layer_of(module)
            if theirs is None or theirs == mine:
                continue
            assert theirs in RANKS, f"{path}:{line}: imports {module}, of no known layer"
            if RANKS[theirs] >= RANKS[mine]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {module} ({theirs})")
    assert wrong == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check can fail: a core module importing the planner is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pipesynth.plan.plan_file import load_plan\n")
    ((line, module, _),) = imports(bad)
    assert RANKS[layer_of(module)] > RANKS["core"] and line == 2


def test_no_private_name_is_imported_across_modules():
    private = []
    for path in source_files():
        for line, module, names in imports(path):
            if layer_of(module) is not None:
                hidden = [n for n in names if n.startswith("_") and not n.startswith("__")]
                private += [f"{path.relative_to(ROOT)}:{line}: {module}.{n}" for n in hidden]
    assert private == []
