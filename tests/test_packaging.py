"""What `pip install` puts on an installer's box: the sdist and the wheel built from it, as `python -m build` does."""
from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_DATA = ("ven/web", "ven/data")   # read at run time through Path(__file__) and importlib.resources
# what a clone does not have: an egg-info left by an earlier build would add its file list to the sdist
NOT_IN_A_CLONE = (".git", ".venv", "venv", "*.egg-info", "build", "dist", "__pycache__", "artifacts", ".cache",
                  "*.sqlite*", "*.whl", ".pytest_cache")


def _setuptools_builds_it() -> bool:
    # license = "MIT" (an SPDX expression) needs setuptools 77; the [test] extra brings it
    return int(version("setuptools").split(".")[0]) >= 77


def _build(kind: str, source: Path, out: Path) -> Path:
    code = f"import setuptools.build_meta as b, sys; print(b.build_{kind}(sys.argv[1]))"
    res = subprocess.run([sys.executable, "-c", code, str(out)], cwd=source, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return out / res.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    if not _setuptools_builds_it():
        pytest.skip(f"setuptools {version('setuptools')} cannot build this project: pip install -e '.[test]'")
    out = tmp_path_factory.mktemp("dist")
    shutil.copytree(ROOT, out / "clone", ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE))
    sdist = _build("sdist", out / "clone", out)
    with tarfile.open(sdist) as tar:
        # the filter argument came in 3.11.4 (Debian 12 has 3.11.2); this tarball is our own
        tar.extractall(out / "src", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    wheel = _build("wheel", out / "src" / sdist.name.removesuffix(".tar.gz"), out)
    return sdist, wheel


@pytest.mark.timeout(300)
def test_wheel_holds_every_runtime_file_and_only_the_three_packages(dists):
    _, wheel = dists
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in RUNTIME_DATA:
        for f in (ROOT / folder).iterdir():
            if f.is_file():
                assert f"{folder}/{f.name}" in names, f"{folder}/{f.name} is not in the wheel"
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"ven", "bacnet_api", "forecaster"}
    # MIT asks for the notice in every copy: the project's, and the demo building data's (ven/data/README.md)
    assert any(re.fullmatch(r"edge_gateway-[^/]+\.dist-info/licenses/LICENSE", n) for n in names), sorted(names)


@pytest.mark.timeout(300)
def test_wheel_metadata_and_command(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as z:
        dist_info = next(n.split("/")[0] for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(f"{dist_info}/METADATA"))
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    assert meta["Name"] == "edge-gateway"
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.11"
    assert re.search(r"^edge-gateway = ven\.cli:main$", entry_points, re.M)
    runtime = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    # every dependency has a ceiling: a fresh install must not pick up a release the code never ran on;
    # but tzdata, IANA's zone table, whose newest release is the one a building's clock needs
    assert all("<" in r or "==" in r for r in runtime if not r.startswith("tzdata")), runtime
    assert any(r.startswith("tzdata>=") for r in runtime), runtime
    # MLPRegressor.fit takes sample_weight from scikit-learn 1.7: with 1.5 or 1.6 every fit fails
    assert "scikit-learn<1.10,>=1.7" in runtime


@pytest.mark.timeout(300)
def test_sdist_carries_the_tests_whole_and_the_service_files(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for f in ("LICENSE", "tests/conftest.py", "tests/gateway_process.py", "tests/data/turin_office_excerpt.csv",
              "examples/gateway.toml", "examples/edge-gateway.service", "docker/Dockerfile",
              "docs/bacnet.md"):   # README links docs/, and tests/test_readme.py reads it
        assert f in names, f"{f} is not in the sdist"
    assert not [n for n in names if n.endswith((".pyc", ".sqlite"))]


@pytest.mark.timeout(300)
def test_installed_wheel_finds_its_files_away_from_the_source_tree(dists, tmp_path):
    _, wheel = dists
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)   # what pip puts in site-packages
    code = ("import ven, ven.demo_data as d, ven.http_api as h; assert ven.__file__.startswith(sys.argv[1]), ven.__file__; "
            "print(len(d.load_kw_column()), sorted(p.name for p in h.WEB_DIR.iterdir()))")
    res = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path[:0] = [sys.argv[1]]; " + code, str(site)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    count, files = res.stdout.split(" ", 1)
    assert int(count) > 1000 and "index.html" in files and "app.js" in files
    # the version an installer quotes in a support request is the wheel's, read from its metadata
    res = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path[:0] = [sys.argv[1]]; "
                          "from ven.cli import main; main(['--version'])", str(site)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    built = re.match(r"edge_gateway-([^-]+)-", wheel.name).group(1)
    assert (res.returncode, res.stdout.strip()) == (0, f"edge-gateway {built}"), res.stderr[-2000:]


def test_the_version_has_its_entry_in_the_changelog():
    # every install said 0.1.0 whatever commit it came from (helper upgrade39 C3): a release raises the version, and
    # says what it changed
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ours = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    entries = re.findall(r"^## (\S+)", (root / "CHANGELOG.md").read_text(), re.M)
    assert entries and entries[0] == ours, (ours, entries)
