"""The package layering DESIGN.md describes, checked on the source and on a real import:

- the core (`casseat_edge`) imports no stage package and not the composition root;
- stage packages (`training`, `quantize`, `export`, `runtime`) import the core, not each other;
- `casseat_cli` (the CLI and the main job) is the one place that imports them all (a stage's
  `__main__.py` launcher may call it: `python -m training.sft` is `casseat-edge train`);
- libmtmd has one driver, `casseat_edge.formats.mtmd`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = "casseat_edge"
STAGES = ("training", "quantize", "export", "runtime")
ROOT_PACKAGE = "casseat_cli"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute import in a file, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _crossings(package: str, forbidden: set[str]) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top not in forbidden:
                continue
            if path.name == "__main__.py" and top == ROOT_PACKAGE:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_the_core_imports_no_stage_package_and_not_the_cli():
    assert _crossings(CORE, {*STAGES, ROOT_PACKAGE}) == []


def test_stage_packages_do_not_import_each_other():
    for stage in STAGES:
        assert _crossings(stage, {*STAGES, ROOT_PACKAGE} - {stage}) == [], stage


def test_importing_every_core_module_loads_no_stage_package():
    """The same on a real interpreter: walk and import all of casseat_edge, then look at what
    got loaded (catches imports the source scan cannot see, e.g. through importlib)."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"import {CORE}\n"
        f"for m in pkgutil.walk_packages({CORE}.__path__, '{CORE}.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert loaded & {*STAGES, ROOT_PACKAGE} == set()
    assert CORE in loaded


def test_a_crossing_is_caught(tmp_path, monkeypatch):
    """The scan sees a lazy import inside a function (what the layering rule is usually broken by)."""
    package = tmp_path / "casseat_edge"
    package.mkdir()
    (package / "late.py").write_text("def f():\n    from runtime.cascade import Cascade\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _crossings(CORE, set(STAGES)) == ["casseat_edge/late.py:2 imports runtime.cascade"]


def test_one_libmtmd_driver():
    """libmtmd is driven in one place (`casseat_edge.formats.mtmd`): the runtime, the llama.cpp
    teacher and the GGUF exporter's verification all go through its `LlamaSession`."""
    users = []
    for package in (CORE, *STAGES, ROOT_PACKAGE):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [f"{node.module}.{alias.name}" for alias in node.names]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                if any(name.startswith("llama_cpp.mtmd_cpp") for name in names):
                    users.append(str(path.relative_to(ROOT)))
    assert sorted(set(users)) == ["casseat_edge/formats/mtmd.py"]


def test_the_cli_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", ROOT_PACKAGE, "--version"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "0." in result.stdout
