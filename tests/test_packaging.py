"""A wheel ships every subpackage (the list in pyproject.toml is explicit because of kernels/)."""

from __future__ import annotations

import tomllib

from tests.conftest import ROOT


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "bnnbench").rglob("__init__.py")}
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert {"bnnbench.kernels", "bnnbench.conf"} <= listed
    assert config["package-dir"]["bnnbench.kernels"] == "kernels"
