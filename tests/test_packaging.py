"""The package installed from its wheel, away from the repository: the bundles ship as package data, and the
quick start's inference runs from an unrelated folder (docs/install.md, "Installed as a package")."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from monai_exaggeration.bundle import BUNDLES, BUNDLES_ENV, default_bundle_root

#: What a wheel is built from (setup.cfg's metadata reads README.md and LICENSE).
_SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "monai_exaggeration", "bundles")
#: Left out of the copy: caches, and what training and evaluation write into a bundle.
_NOT_COPIED = shutil.ignore_patterns("__pycache__", "*.egg-info", "runs", "eval", ".training.lock*")


def _run(command: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def _tracked_bundle_files() -> set[str]:
    """The files git tracks under ``bundles/`` that are in the working tree (``bundles/cxr/LICENSE`` ...)."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: the bundles' file list comes from git")
    listed = _run(["git", "ls-files", "bundles"], REPO_ROOT).stdout.split()
    return {name for name in listed if (REPO_ROOT / name).is_file()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built, offline, from a copy of the working tree's sources (a build writes ``build/`` and
    ``*.egg-info`` next to its sources: the copy keeps them out of the repository)."""
    source = tmp_path_factory.mktemp("source")
    for name in _SOURCES:
        path = REPO_ROOT / name
        if path.is_dir() and not path.is_symlink():
            shutil.copytree(path, source / name, symlinks=True, ignore=_NOT_COPIED)
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        cwd=out,
    )
    (built,) = out.glob("monai_exaggeration-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; its dependencies are this environment's
    (a ``.pth`` line puts our site-packages after its own; the editable install's hook there is not run)."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv)
    python = venv / "bin" / "python"
    own = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=venv).stdout.strip()
    )
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (own / "_test_dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    # --ignore-installed: our environment's editable install is visible, and must be neither reused nor touched
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "--disable-pip-version-check",
            "-q",
            str(wheel),
        ],
        cwd=venv,
    )
    return venv


def _user_environment(venv: Path) -> dict[str, str]:
    """The environment of a user of ``venv``: nothing pointing at the repository or at other bundles."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON") and key != BUNDLES_ENV}
    return {
        **env,
        "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
        "PYTHONNOUSERSITE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }


def test_bundle_folder_setting_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cxr" / "configs").mkdir(parents=True)
    monkeypatch.setenv(BUNDLES_ENV, str(tmp_path))
    assert default_bundle_root("cxr") == str((tmp_path / "cxr").resolve())
    # a bundle the folder does not hold comes from the package (in the repository: bundles/)
    assert default_bundle_root("cxr_classifier") == str(REPO_ROOT / "bundles" / "cxr_classifier")
    monkeypatch.delenv(BUNDLES_ENV)
    assert all(default_bundle_root(name) == str(REPO_ROOT / "bundles" / name) for name in BUNDLES)


def test_wheel_ships_every_bundle_file(wheel: Path) -> None:
    """Configs, model cards, licences and the shipped weights: what git tracks under bundles/, nothing else."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    shipped = {
        name.removeprefix("monai_exaggeration/") for name in names if name.startswith("monai_exaggeration/bundles/")
    }
    assert shipped == _tracked_bundle_files()
    assert "monai_exaggeration/export/orthanc.py" not in names  # the test harness stays in tests/


def _documented_quick_start() -> str:
    """The ```bash block of docs/install.md's "Installed as a package" that runs the installed quick start."""
    section = (
        (REPO_ROOT / "docs" / "install.md").read_text().split("## Installed as a package", 1)[1].split("\n## ", 1)[0]
    )
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return next(block for block in blocks if "python -m monai_exaggeration.bundle)" in block)


@pytest.mark.slow
def test_installed_wheel_runs_the_quick_start_from_another_folder(installed: Path, tmp_path: Path) -> None:
    """docs/install.md's commands, as written, from an unrelated folder, with the installed package only."""
    python, env = str(installed / "bin" / "python"), _user_environment(installed)
    work = tmp_path / "elsewhere"
    work.mkdir()
    cxr = Path(_run([python, "-m", "monai_exaggeration.bundle"], cwd=work, env=env).stdout.strip())
    assert cxr.is_relative_to(installed) and cxr.name == "cxr"
    assert (cxr / "models" / "explainer.pt").read_bytes() == (
        REPO_ROOT / "bundles" / "cxr" / "models" / "explainer.pt"
    ).read_bytes()

    result = _run(["bash", "-e", "-c", _documented_quick_start()], cwd=work, env=env, timeout=600)
    output = result.stdout + result.stderr
    assert str(REPO_ROOT / "bundles") not in output and str(REPO_ROOT / "monai_exaggeration") not in output
    assert f"bundle_root: '{cxr}'" in output
    out = work / "exaggeration_output"
    (series,) = (out / "dicom").iterdir()
    assert sorted(path.name for path in series.iterdir()) == [f"step_{step:03d}.dcm" for step in range(10)]
    assert all((out / name).is_file() for name in ("frames.csv", "sources.csv"))
    assert "1 series written (10 DICOM files), 0 failed" in output
    assert (work / "classify_output" / "scores.csv").is_file()  # the package's command found the installed classifier
