"""A wheel ships every subpackage (the list in pyproject.toml is explicit because of kernels/);
the ``bnnbench`` console script's subcommands reach every command."""

from __future__ import annotations

import sys
import tomllib

import pytest

from tests.conftest import ROOT


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "bnnbench").rglob("__init__.py")}
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert {"bnnbench.kernels", "bnnbench.conf"} <= listed
    assert config["package-dir"]["bnnbench.kernels"] == "kernels"


def test_console_script_has_a_subcommand_for_every_command():
    from bnnbench.cli import COMMANDS

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"bnnbench": "bnnbench.cli:main"}
    assert set(COMMANDS) == {"train", "evaluate", "export", "size", "report"}
    readme = (ROOT / "README.md").read_text()
    for command in COMMANDS:
        assert f"bnnbench {command}" in readme, f"`bnnbench {command}` missing from the README"


@pytest.mark.parametrize("command, expected", [
    ("evaluate", "bnnbench.evaluate run_dir=<dir> | ckpt_path=<file.ckpt>"),
    ("export", "bnnbench.export run_dir=<dir> | ckpt_path=<file.ckpt>"),
    ("size", "convention: deployed"),
    ("train", "method: abcnet, binaryconnect"),
    ("report", "--runs-root"),
])
def test_subcommands_forward_to_each_main(command, expected, monkeypatch, capsys):
    """``bnnbench <command> --help`` runs that command's own parser (Hydra's or argparse's)."""
    from hydra.core.global_hydra import GlobalHydra

    from bnnbench.cli import main

    monkeypatch.setattr(sys, "argv", ["bnnbench"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    GlobalHydra.instance().clear()
    assert exc.value.code in (0, None)
    assert expected in capsys.readouterr().out


def test_an_unknown_subcommand_is_one_line(capsys):
    from bnnbench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["trian"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'trian'" in err and "train" in err
