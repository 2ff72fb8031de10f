"""What is shipped: the sdist and the wheel carry the MIT LICENSE and the metadata says so
(an SPDX expression, project URLs); the sdist carries its tests, which run from it; the
README says how to install from a clone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path
from typing import List, Union

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

#: Not part of a checkout's sources (local environments, caches, build output).
LOCAL = (".git", ".venv", "*.egg-info", "__pycache__", ".*_cache", "build", "dist", ".lanes")


def sh(argv: List[Union[str, Path]], cwd: Path, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PYTEST_", "PYTHON", "VIRTUAL_ENV"))}
    done = subprocess.run([str(a) for a in argv], cwd=str(cwd), env={**clean, **env},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist built from a clean copy of the checkout with the build requirement
    pyproject.toml names, and the wheel built from that sdist (so the sdist is complete)."""
    if sys.version_info < (3, 9):
        pytest.skip("building needs setuptools 77+, which needs Python 3.9+; Python 3.8 "
                    "installs the wheel (its CI lane builds it with the main lane's Python)")
    out = tmp_path_factory.mktemp("dist")
    builder = out / "build-env"
    venv.create(builder, with_pip=True)
    python = builder / "bin" / "python"
    requires = "setuptools>=77"
    assert f'requires = ["{requires}"]' in (REPO / "pyproject.toml").read_text()
    sh([python, "-m", "pip", "install", "-q", requires], out)
    source = out / "checkout"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*LOCAL))
    sh([python, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"],
       source)
    (sdist,) = out.glob("analytiq_migrations-*.tar.gz")
    sh([python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out,
        sdist], out)
    return out


def test_license_is_in_the_sdist_and_the_wheel(dist: Path) -> None:
    licence = (REPO / "LICENSE").read_text()
    assert licence.startswith("MIT License")
    (sdist,) = dist.glob("analytiq_migrations-*.tar.gz")
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        shipped = tar.extractfile(f"{top}/LICENSE")
        assert shipped is not None and shipped.read().decode() == licence
        pkg_info = tar.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        metadata = pkg_info.read().decode()
    (wheel,) = dist.glob("analytiq_migrations-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        info = next(n.split("/")[0] for n in whl.namelist() if ".dist-info/" in n)
        assert whl.read(f"{info}/licenses/LICENSE").decode() == licence
        wheel_metadata = whl.read(f"{info}/METADATA").decode()
    for text in (metadata, wheel_metadata):
        assert "License-Expression: MIT" in text
        assert "License-File: LICENSE" in text
        for label in ("Homepage", "Documentation", "Source", "Issues"):
            assert f"Project-URL: {label}, https://" in text


def test_the_sdists_tests_run_from_it(dist: Path, tmp_path: Path) -> None:
    (sdist,) = dist.glob("analytiq_migrations-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path)
    top = tmp_path / sdist.name[: -len(".tar.gz")]
    for needed in ("tests/conftest.py", "tests/support.py", "tests/children.py",
                   "tests/django_project/manage.py", "docs/cli.md"):
        assert f"{top.name}/{needed}" in names, needed
    # the unpacked sdist's package and tests, not the checkout's
    ran = sh([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
              "tests/test_checksum.py", "tests/test_config.py"], top, PYTHONPATH=str(top))
    assert " passed" in ran and "failed" not in ran


def test_readme_installs_from_a_clone() -> None:
    readme = (REPO / "README.md").read_text()
    assert "pip install .  " in readme or "pip install .\n" in readme
    assert "pip install -e '.[test]'" in readme
