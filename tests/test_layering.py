"""The packages' one-way dependencies, read from the source: `ven` uses `bacnet_api` and `forecaster`, which never
import `ven` or each other, and only `bacnet_api` touches the BACnet stack. Imports inside functions count."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FORBIDDEN = {
    "bacnet_api": {"ven", "forecaster"},
    "forecaster": {"ven", "bacnet_api", "bacpypes3", "BAC0", "openleadr", "asyncio"},
    "ven": {"bacpypes3", "BAC0"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every import in the file, relative ones as their package's."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, path.parent.name if node.level else (node.module or "").split(".")[0]))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_only_what_the_layout_lets_it(package):
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in sorted((ROOT / package).rglob("*.py"))
             for line, module in _imports(path) if module in FORBIDDEN[package]]
    assert wrong == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_module_imports_no_underscore_name_of_another(package):
    # what another module needs is that module's public interface: an underscore name is free to change inside it
    wrong = [f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name} from {'.' * node.level}{node.module or ''}"
             for path in sorted((ROOT / package).rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(), str(path)))
             if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in FORBIDDEN)
             for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert wrong == []


def test_the_check_reads_imports_inside_functions_and_relative_ones(tmp_path):
    pkg = tmp_path / "bacnet_api"
    pkg.mkdir()
    (pkg / "m.py").write_text("from . import x\n\ndef f():\n    import ven.app\n    from forecaster.core import A\n")
    assert _imports(pkg / "m.py") == [(1, "bacnet_api"), (4, "ven"), (5, "forecaster")]


def test_the_two_stores_of_one_file_set_it_up_alike():
    # ven.storage_connect and forecaster.store share storage.path; each sets its pages and WAL limit
    # (ven.storage_connect is imported before numpy, which importing the forecaster package brings, so it cannot
    # take them from there)
    import forecaster.store
    import ven.storage_connect

    assert (forecaster.store.PAGE_SIZE, forecaster.store.WAL_SIZE_LIMIT) == \
        (ven.storage_connect.PAGE_SIZE, ven.storage_connect.WAL_SIZE_LIMIT)


@pytest.mark.parametrize("package", ["bacnet_api", "forecaster"])
def test_importing_every_module_of_a_package_loads_nothing_it_may_not_import(package):
    # the source check above cannot see importlib.import_module("ven.x") or what a dependency loads for it: every
    # module imported in a fresh interpreter, and sys.modules says what came in
    import subprocess
    import sys

    code = (f"import importlib, pkgutil, sys\npkg = importlib.import_module({package!r})\n"
            "for m in pkgutil.iter_modules(pkg.__path__):\n"
            f"    importlib.import_module({package!r} + '.' + m.name)\n"
            "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                            cwd=ROOT).stdout.split()
    assert "numpy" in loaded or package != "forecaster"     # the modules were imported
    assert sorted(set(loaded) & FORBIDDEN[package]) == []
