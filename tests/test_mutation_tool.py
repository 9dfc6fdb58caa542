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


@pytest.mark.parametrize("source_changed", [False, True])
def test_a_recheck_keeps_the_earlier_statuses_of_unchanged_sources(tmp_path, monkeypatch, capsys,
                                                                  source_changed):
    """mutmut's recheck of named mutants leaves the others without a result; the report takes
    their earlier status from the state file while their source file is byte-for-byte the same,
    and never when it changed (the same name may then be another mutation)."""
    source = tmp_path / "bnnbench" / "functional.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f(a, b):\n    return a + b\n")
    first = {"bnnbench.functional.x_f__mutmut_1": 1, "bnnbench.functional.x_f__mutmut_2": 0}
    meta = tmp_path / "mutants" / "bnnbench" / "functional.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"exit_code_by_key": first}))
    monkeypatch.setattr(mutation, "ROOT", tmp_path)
    monkeypatch.setattr(mutation, "mutmut_version", lambda: "3.8.1")
    monkeypatch.setattr(mutation, "mutmut_config", lambda scope=None: {"only_mutate": ["x"]})
    out = tmp_path / "m.md"
    assert mutation.main(["--report-only", "--out", str(out)]) == 0
    state = json.loads(out.with_suffix(".json").read_text())
    assert state["statuses"]["bnnbench.functional.x_f__mutmut_1"]["status"] == "killed"
    # the recheck ran only the survivor, now killed; mutmut has no result for the first one
    meta.write_text(json.dumps({"exit_code_by_key": {"bnnbench.functional.x_f__mutmut_1": None,
                                                     "bnnbench.functional.x_f__mutmut_2": 1}}))
    if source_changed:
        source.write_text("def f(a, b):\n    return a * b\n")
    assert mutation.main(["--report-only", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| `bnnbench/functional.py`"))
    header = [c.strip() for c in lines[at - 2].strip("|").split("|")]
    counts = dict(zip(header, (c.strip() for c in lines[at].strip("|").split("|"))))
    expected = {"killed": "1", "not checked": "1"} if source_changed else {"killed": "2"}
    assert {k: v for k, v in counts.items() if k not in ("file", "total")} == expected
    assert ("keep an earlier run's status" in capsys.readouterr().out) is not source_changed
