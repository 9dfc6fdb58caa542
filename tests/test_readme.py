"""The README is the front door: its test command is what CI runs, its lists match the code."""

from __future__ import annotations

import re

from bnnbench.methods import list_methods
from bnnbench.models import list_models
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command():
    quickstart = bash_blocks()[:2]
    test_command = quickstart[1].strip()
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_quickstart_runs_the_main_job():
    assert "python -m bnnbench" in bash_blocks()[0]


def test_every_method_and_model_is_documented():
    for name in list_methods():
        assert f"`{name}`" in README, f"method {name} missing from the README"
    for name in list_models():
        assert f"`{name}`" in README, f"model {name} missing from the README"


def test_every_preset_is_in_the_readme_table():
    for path in sorted((ROOT / "conf" / "preset").glob("*.yaml")):
        assert f"| `{path.stem}` |" in README, f"preset {path.stem} missing from the README table"
