"""The reader study's web stack and statistics are an optional extra, not part of the core install."""

from __future__ import annotations

import configparser
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

OPTIONAL = ("fastapi", "uvicorn", "statsmodels")


def test_core_requirements_leave_the_reader_study_stack_to_its_extra() -> None:
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    core = config["options"]["install_requires"].split()
    extra = config["options.extras_require"]["reader-study"].split()
    assert not set(OPTIONAL) & set(core)
    assert sorted(extra) == sorted(OPTIONAL)


def test_core_workflows_import_without_the_optional_packages() -> None:
    """Inference, evaluation, export, the DICOM node and the command line load with the extra absent."""
    code = (
        "import sys\n"
        f"for name in {OPTIONAL!r}: sys.modules[name] = None  # as if not installed\n"
        "import monai_exaggeration.cli, monai_exaggeration.inference, monai_exaggeration.evaluation\n"
        "import monai_exaggeration.export, monai_exaggeration.methods, monai_exaggeration.node.cli\n"
        "parser = monai_exaggeration.cli.build_parser()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("command", [["serve", "study"], ["links", "study"]])
def test_missing_extra_is_one_line_with_the_install_command(command: list[str], tmp_path, monkeypatch, caplog) -> None:
    from monai_exaggeration import cli

    for name in ("fastapi", "uvicorn"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.delitem(sys.modules, "monai_exaggeration.reader_study.server", raising=False)  # imported afresh
    monkeypatch.chdir(tmp_path)
    code = cli.main(["reader-study", *command])
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert code == 2 and len(errors) == 1 and errors[0].exc_info is None  # one line, no traceback
    assert "optional package fastapi" in errors[0].getMessage()
    assert 'pip install "monai_exaggeration[reader-study]"' in errors[0].getMessage()
