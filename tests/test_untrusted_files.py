"""Files are data: a shared export or run directory never runs code, and bad metadata is one line.

The exploits are the ones a hostile file would try: Hydra ``_target_`` chains that write a marker
file when instantiated. None of them may create the marker, whichever entry point reads the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnnbench.errors import BnnbenchError
from bnnbench.evaluate import evaluate_run
from bnnbench.export import export_run
from bnnbench.packed.format import FORMAT, FORMAT_VERSION, load_packed


def marker_chain(marker: Path) -> dict:
    """A Hydra config node whose instantiation writes ``marker`` (and returns 5: a valid int)."""
    return {"_target_": "pathlib.Path.write_text",
            "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "pwned"]}


def hostile_config(marker: Path) -> dict:
    """A run config in Hydra's shape with the chain in the model, method and data sections."""
    return {
        "model": {"_target_": "bnnbench.models.create_model", "name": "mlp",
                  "hidden_features": marker_chain(marker)},
        "method": {"_target_": "bnnbench.methods.bnn.BinaryNet",
                   "stochastic": marker_chain(marker)},
        "data": {"_target_": "bnnbench.data.synthetic.SyntheticData", "in_chans": 1,
                 "img_size": 4, "num_classes": 10, "seed": marker_chain(marker)},
        "seed": 0,
    }


def write_export(path: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    save_file({"layers.0.weight": torch.zeros(5, 16)}, str(path),
              metadata={"format": FORMAT, "format_version": FORMAT_VERSION, **metadata})
    return path


def test_a_crafted_export_runs_no_code(tmp_path):
    marker = tmp_path / "marker"
    chain = json.dumps(hostile_config(marker))
    spec = json.dumps({"model": {"name": "mlp",
                                 "kwargs": {"hidden_features": marker_chain(marker)}},
                       "method": {"name": "bnn", "knobs": {}},
                       "data": {"name": "synthetic", "args": {}}})
    path = write_export(tmp_path / "evil.safetensors", {
        "config": chain, "spec": spec, "layers": "{}",
        "geometry": json.dumps({"in_chans": 1, "num_classes": 10, "img_size": 4})})
    with pytest.raises(BnnbenchError) as refused:
        load_packed(path)
    assert not marker.exists()
    assert "_target_" in str(refused.value)


def test_a_crafted_export_is_one_line_on_the_cli(tmp_path):
    marker = tmp_path / "marker"
    path = write_export(tmp_path / "evil.safetensors", {
        "config": json.dumps(hostile_config(marker)),
        "spec": json.dumps({"model": {"name": "mlp", "kwargs": {}},
                            "method": {"name": "bnn", "knobs": marker_chain(marker)},
                            "data": {"name": "synthetic", "args": {}}}),
        "layers": "{}", "geometry": json.dumps({"in_chans": 1, "num_classes": 10, "img_size": 4})})
    run_dir = tmp_path / "run"  # an ordinary run config: only the export is hostile
    run_dir.mkdir()
    (run_dir / "config_resolved.yaml").write_text(
        "model: {_target_: bnnbench.models.create_model, name: mlp}\n"
        "data: {_target_: bnnbench.data.embedded.EmbeddedMNIST}\n")
    proc = subprocess.run([sys.executable, "-m", "bnnbench.evaluate", f"run_dir={run_dir}",
                           "packed=true", f"packed_path={path}"],
                          text=True, capture_output=True, timeout=300)
    assert not marker.exists()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "_target_" in proc.stderr


def crafted_run_dir(root: Path, config_name: str, marker: Path) -> Path:
    """A run directory holding a hostile config and a (garbage) checkpoint."""
    import yaml

    run_dir = root / "run"
    (run_dir / Path(config_name).parent).mkdir(parents=True, exist_ok=True)
    (run_dir / config_name).write_text(yaml.safe_dump(hostile_config(marker)))
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    return run_dir


@pytest.mark.parametrize("config_name", ["config_resolved.yaml", ".hydra/config.yaml"])
@pytest.mark.parametrize("entry", ["evaluate", "evaluate_packed", "export"])
def test_a_crafted_run_config_runs_no_code(tmp_path, config_name, entry):
    marker = tmp_path / "marker"
    run_dir = crafted_run_dir(tmp_path, config_name, marker)
    with pytest.raises(BnnbenchError):
        if entry == "export":
            export_run(run_dir)
        else:
            evaluate_run(run_dir, packed=entry == "evaluate_packed")
    assert not marker.exists()


@pytest.mark.parametrize("section, node", [
    ("method", {"_target_": "os.system", "command": "true"}),
    ("data", {"_target_": "subprocess.run", "args": ["true"]}),
    ("model", {"_target_": "bnnbench.models.create_model", "name": "resnet18",
               "checkpoint_path": "/tmp/evil.pth"}),
])
def test_a_run_config_names_only_registered_builders(tmp_path, section, node):
    """A class path that is not a registered method/data module is refused by name (compared as a
    string, never imported), and timm kwargs that load files are refused."""
    import yaml

    config = {"model": {"_target_": "bnnbench.models.create_model", "name": "mlp"},
              "data": {"_target_": "bnnbench.data.synthetic.SyntheticData"}, section: node}
    (tmp_path / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(BnnbenchError, match=rf"\.{section}"):
        export_run(tmp_path)


@pytest.mark.parametrize("group", ["method", "data"])
def test_every_shipped_config_maps_to_its_registry_name(group, make_cfg):
    """A run records conf/<group>/<name>.yaml as <name>: the spec's registry name is the file's."""
    from bnnbench.spec import spec_from_config
    from tests.conftest import CONF

    for path in sorted((CONF / group).glob("*.yaml")):
        override = f"+method={path.stem}" if group == "method" else f"data={path.stem}"
        assert spec_from_config(make_cfg([override]))[group]["name"] == path.stem


# ---------------------------------------------------------------------------------- validation
def valid_export(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A real (tiny BinaryNet MLP) export and its metadata."""
    from safetensors import safe_open

    from bnnbench.packed.format import save_packed
    from bnnbench.spec import build_net

    spec = {"model": {"name": "mlp", "kwargs": {"hidden_features": 16, "depth": 2}},
            "method": {"name": "bnn", "knobs": {}},
            "data": {"name": "synthetic", "args": {"in_chans": 1, "img_size": 4}}}
    geometry = {"in_chans": 1, "num_classes": 10, "img_size": 4}
    path = save_packed(build_net(spec, geometry).eval(), tmp_path / "ok.safetensors", spec,
                       geometry)
    with safe_open(str(path), framework="pt") as f:
        return path, dict(f.metadata())


def rewrite(path: Path, out: Path, edit) -> Path:
    """``path`` with its metadata edited by ``edit(metadata) -> metadata`` (tensors unchanged)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    save_file(load_file(str(path)), str(out), metadata=edit(meta))
    return out


def _json_edit(key, fn):
    def edit(meta):
        value = json.loads(meta[key])
        fn(value)
        return {**meta, key: json.dumps(value)}
    return edit


def _first_layer(layers):
    return layers[min(layers)]


@pytest.mark.parametrize("edit, message", [
    (lambda m: {k: v for k, v in m.items() if k != "spec"}, "lacks the 'spec' metadata"),
    (lambda m: {**m, "geometry": "{not json"}, "'geometry' is not valid JSON"),
    (_json_edit("geometry", lambda g: g.update(img_size=1e6)), r"img_size=1000000\.0"),
    (_json_edit("geometry", lambda g: g.update(img_size=10**6)), r"img_size=1000000 is not"),
    (_json_edit("geometry", lambda g: g.update(in_chans=0)), r"in_chans=0 is not"),
    (_json_edit("geometry", lambda g: g.update(img_size=8)), "does not match the model"),
    (_json_edit("spec", lambda s: s["model"]["kwargs"].update(hidden_features=4096)),
     "does not match the model"),
    (_json_edit("spec", lambda s: s["method"].update(name="nosuch")), "not a registered method"),
    (_json_edit("layers", lambda la: _first_layer(la).update(planes=33)), "planes must be"),
    (_json_edit("layers", lambda la: _first_layer(la).update(shape=[16, -1])),
     "positive integers"),
    (_json_edit("layers", lambda la: _first_layer(la).update(shape=[16, 17])),
     "bits is torch.uint8"),
    (_json_edit("layers", lambda la: _first_layer(la).update(encoding="pickle")),
     "encoding must be"),
])
def test_export_metadata_is_validated_before_anything_is_built(tmp_path, edit, message):
    path, _ = valid_export(tmp_path)
    assert load_packed(path, kernels="never") is not None  # the untouched file loads
    bad = rewrite(path, tmp_path / "bad.safetensors", edit)
    with pytest.raises(BnnbenchError, match=message):
        load_packed(bad, kernels="never")


def test_a_huge_geometry_allocates_nothing(tmp_path, monkeypatch):
    """An in-range but huge geometry (mlp at 4096 px: a 64 GiB first layer) is refused by the
    meta-device shape check before any real tensor is allocated."""
    path, _ = valid_export(tmp_path)
    bad = rewrite(path, tmp_path / "big.safetensors",
                  _json_edit("geometry", lambda g: g.update(img_size=4096, in_chans=1)))
    from bnnbench import trained
    from bnnbench.packed import format as packed_format

    built = []
    real_build = packed_format.build_net
    # the shape check lives in trained, the loader in bnnbench.packed.format
    for module in (packed_format, trained):
        monkeypatch.setattr(module, "build_net", lambda *a, **k: built.append(
            str(torch.empty(0).device)) or real_build(*a, **k))
    with pytest.raises(BnnbenchError, match="does not match the model"):
        load_packed(bad)
    assert built == ["meta"]  # only the shape check's build ran, under torch.device("meta")
