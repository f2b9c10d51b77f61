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


def test_the_check_reads_imports_inside_functions_and_relative_ones(tmp_path):
    pkg = tmp_path / "bacnet_api"
    pkg.mkdir()
    (pkg / "m.py").write_text("from . import x\n\ndef f():\n    import ven.app\n    from forecaster.core import A\n")
    assert _imports(pkg / "m.py") == [(1, "bacnet_api"), (4, "ven"), (5, "forecaster")]


def test_the_two_stores_of_one_file_set_it_up_alike():
    # ven.storage and forecaster.store share storage.path; each sets its pages and WAL limit (ven.storage is imported
    # before numpy, which importing the forecaster package brings, so it cannot take them from there)
    import forecaster.store
    import ven.storage

    assert (forecaster.store.PAGE_SIZE, forecaster.store.WAL_SIZE_LIMIT) == \
        (ven.storage.PAGE_SIZE, ven.storage.WAL_SIZE_LIMIT)
