"""The README is the front door: its test command is what CI runs, its lists match the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from bnnbench.methods import list_methods
from bnnbench.models import list_models
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_commands_before_any_system_package():
    """CI runs the README's two commands verbatim on its fresh machine before installing any
    system package, then installs FFCV (libraries + extra), checks it imports and runs its tests."""
    main_job, test_command = (block.strip().splitlines()[0] for block in bash_blocks()[:2])
    assert "python -m bnnbench -m" in main_job and "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line and not line.startswith("#")]
    assert main_job in commands and test_command in commands
    first_system_package = next(i for i, line in enumerate(commands) if "apt-get" in line)
    assert commands.index(main_job) < commands.index(test_command) < first_system_package
    ffcv = commands.index('.venv/bin/pip install -e ".[ffcv]"')
    assert first_system_package < ffcv < commands.index(
        '.venv/bin/python -c "import ffcv"  # fail here, loudly, rather than skip FFCV\'s tests in '
        'CI') < commands.index(".venv/bin/python -m pytest tests/test_ffcv.py -p no:cacheprovider")
    assert "ffcv" not in test_command and "apt-get" not in README.split("## Using it")[0]


def test_quickstart_is_two_commands():
    quickstart = README.split("## Quickstart")[1].split("\n## ")[0]
    blocks = re.findall(r"```bash\n(.*?)```", quickstart, flags=re.S)
    assert len(blocks) == 2
    install_and_run = blocks[0].strip().splitlines()[0]
    assert "pip install -e . &&" in install_and_run and "python -m bnnbench" in install_and_run
    assert len(blocks[1].strip().splitlines()) == 1  # install + tests: one line


def test_the_readme_test_command_passes_without_ffcv(tmp_path):
    """A fresh machine without FFCV's system libraries: ``import ffcv`` fails. The whole suite
    still collects, and FFCV's tests skip with a one-line reason."""
    blocker = tmp_path / "ffcv.py"
    blocker.write_text('raise ModuleNotFoundError("No module named \'ffcv\'", name="ffcv")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-rs", "-n",
                           "0", "-p", "no:cacheprovider", str(ROOT / "tests")],
                          cwd=ROOT, env=env, text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    skipped = [line for line in proc.stdout.splitlines()
               if line.startswith("SKIPPED") and "ffcv" in line]
    assert len(skipped) == 1 and "test_ffcv.py" in skipped[0], proc.stdout[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert "needs the ffcv extra" in skipped[0] and "error" not in summary, summary


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
