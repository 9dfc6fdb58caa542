"""The mutation report tool (bnnbench.devtools.mutation) on a fake mutmut state; no mutmut run."""

from __future__ import annotations

import json

import pytest

from bnnbench.devtools import mutation


def test_counts_survivors_and_before_after(tmp_path, monkeypatch):
    meta = tmp_path / "bnnbench" / "nn" / "layers.py.meta"
    meta.parent.mkdir(parents=True)
    codes = {"bnnbench.nn.layers.x_f__mutmut_1": 1, "bnnbench.nn.layers.x_f__mutmut_2": 0,
             "bnnbench.nn.layers.x_g__mutmut_1": 33, "bnnbench.nn.layers.x_g__mutmut_2": None,
             "bnnbench.nn.layers.x_g__mutmut_3": 36}
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    monkeypatch.setattr(mutation, "MUTANTS", tmp_path)
    monkeypatch.setattr(mutation, "mutmut_version", lambda: "3.8.1")
    mutants = mutation.collect()
    assert {n: i["status"] for n, i in mutants.items()} == {
        "bnnbench.nn.layers.x_f__mutmut_1": "killed",
        "bnnbench.nn.layers.x_f__mutmut_2": "survived",
        "bnnbench.nn.layers.x_g__mutmut_1": "no tests",
        "bnnbench.nn.layers.x_g__mutmut_2": "not checked",
        "bnnbench.nn.layers.x_g__mutmut_3": "timeout"}
    assert all(i["file"] == "bnnbench/nn/layers.py" for i in mutants.values())
    mutants["bnnbench.nn.layers.x_f__mutmut_2"]["diff"] = "`a + b` -> `a - b`"
    text = mutation.render(mutants, {"bnnbench/nn/layers.py": 4}, {"only_mutate": ["x"]}, [])
    assert "| `bnnbench/nn/layers.py` | 1 | 1 | 1 | 1 | 1 | 5 |" in text
    assert "| `bnnbench/nn/layers.py` | 4 | 1 | 1 |" in text  # before / survived / no tests
    assert "- `x_f__mutmut_2`: `a + b` -> `a - b`" in text
    assert "## Surviving mutants (1)" in text


def test_recheck_without_an_earlier_run_is_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mutation, "mutmut_version", lambda: "3.8.1")
    with pytest.raises(SystemExit) as exit_info:
        mutation.main(["--recheck-survivors", "--out", str(tmp_path / "m.md")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bnnbench: error: --recheck-survivors needs") and err.count("\n") == 1


PYPROJECT = r'''
[tool.pytest.ini_options]
addopts = "-ra -n auto"
markers = ["slow: trains"]

[tool.mutmut]
only_mutate = ["bnnbench/functional.py"]
do_not_mutate_patterns = ['raise \w*Error\(']
pytest_add_cli_args = ["-n", "0"]
pytest_add_cli_args_test_selection = ["tests/test_functional.py"]

[tool.bnnbench.mutation_scopes.small]
only_mutate = ["bnnbench/recipes.py"]
pytest_add_cli_args_test_selection = ["tests/test_recipes.py", "-m", "not slow"]
'''


def test_a_scope_replaces_its_keys_and_runs_in_its_own_directory(tmp_path, monkeypatch):
    import tomllib

    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    for name in mutation.SCOPE_LINKS:
        (tmp_path / name).mkdir()
    (tmp_path / "bnnbench" / "recipes.py").write_text("x = 1\n")
    monkeypatch.setattr(mutation, "ROOT", tmp_path)
    config = mutation.mutmut_config("small")
    assert config["only_mutate"] == ["bnnbench/recipes.py"]
    assert config["pytest_add_cli_args"] == ["-n", "0"]  # not in the scope: [tool.mutmut]'s
    assert mutation.mutmut_config()["only_mutate"] == ["bnnbench/functional.py"]
    work = mutation.scope_workdir("small", config)
    assert work == tmp_path / "mutants-small"
    assert (work / "bnnbench" / "recipes.py").read_text() == "x = 1\n"  # the checkout, linked
    written = tomllib.loads((work / "pyproject.toml").read_text())["tool"]
    assert written["mutmut"] == config  # backslashes and lists survive the TOML round trip
    assert written["pytest"]["ini_options"]["markers"] == ["slow: trains"]
    assert mutation.scope_workdir("small", config) == work  # a second run reuses it


def test_unknown_scope_is_one_line_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    monkeypatch.setattr(mutation, "ROOT", tmp_path)
    monkeypatch.setattr(mutation, "mutmut_version", lambda: "3.8.1")
    with pytest.raises(SystemExit) as exit_info:
        mutation.main(["--scope", "nope", "--report-only"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--scope='nope' is not defined" in err and "small" in err and err.count("\n") == 1
