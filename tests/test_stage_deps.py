"""Each DVC stage declares exactly the project modules it imports and the params sections it reads.

DVC does not follow imports: a module missing from a stage's deps means a stale model.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "twinhead"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
MODULE_STR = re.compile(r"^twinhead(\.\w+)?$")


def module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "twinhead":
        return None
    path = PKG.joinpath(*parts[1:])
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return None


def imported_modules(path: Path) -> set[str]:
    """twinhead modules a file imports (anywhere, also inside functions) or names as a string
    (importlib.util.find_spec("twinhead.x"), the MLflow models-from-code file)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STR.match(node.value):
            names.add(node.value)
    return {n for n in names if module_file(n)}


def closure(script: Path) -> set[str]:
    """Project files reachable from a stage script, as paths relative to the repo root."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in imported_modules(f):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b too
                mf = module_file(".".join(parts[:i]))
                if mf:
                    todo.append(mf)
    return {str(p.relative_to(ROOT)) for p in seen if p.is_relative_to(ROOT)}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_its_import_closure(stage):
    spec = STAGES[stage]
    script = ROOT / "stages" / f"{stage}.py"
    assert f"stages/{stage}.py" in spec["cmd"]
    declared = {d for d in spec["deps"] if d.startswith(("src/", "stages/"))}
    assert declared == closure(script), (
        f"stage {stage}: missing {sorted(closure(script) - declared)}, extra {sorted(declared - closure(script))}")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_params_are_the_sections_it_loads(stage):
    tree = ast.parse((ROOT / "stages" / f"{stage}.py").read_text(encoding="utf-8"))
    consts = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "SECTIONS"]
    assert consts and isinstance(consts[0].value, ast.Dict), f"stages/{stage}.py must declare SECTIONS = {{...}}"
    loaded = {ast.literal_eval(k) for k in consts[0].value.keys}
    assert set(STAGES[stage]["params"]) == loaded
    # ...and loads exactly those: no other call reads params.yaml
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "load_config" in calls and not calls & {"read_params_file", "yaml.safe_load"}


def test_closure_sees_lazy_imports(tmp_path):
    # A sanity check of the checker itself: an import inside a function counts.
    f = tmp_path / "s.py"
    f.write_text("def main():\n    from twinhead.metrics import summary\n")
    assert "src/twinhead/metrics.py" in closure(f)


def test_no_dataset_is_named_in_the_library_or_the_stages():
    """Nothing is tuned to one dataset in code: SNIPS and ATIS are data, chosen in params.yaml or a preset."""
    named = [f"{p.relative_to(ROOT)}:{i}" for folder in ("src", "stages") for p in sorted((ROOT / folder).rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"(?<![a-z])(snips|atis)(?![a-z])", line, re.IGNORECASE)]
    assert named == []
