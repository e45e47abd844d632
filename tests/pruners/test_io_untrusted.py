"""pruners.load / load_metadata on model files an attacker or a broken disk wrote.

Each crafted file starts as a real ``pruners.save`` archive and changes one entry so that
``torch.export.load`` would run code: the payload writes a marker file. The loader must refuse
it with one line naming the file and the entry, and the marker must not exist afterwards.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import pruners
from pruners.io import ModelFileError, UnsafeModelFile, load, load_metadata, save


class _Exploit:
    """Unpickling this calls os.system: the attack the issue describes."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _saved(tmp_path: Path) -> Path:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    path = tmp_path / "good.pt2"
    save(model, path, torch.randn(2, 3, 8, 8), metadata={"trial": "t1"})
    return path


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy the archive, letting ``edit(entries)`` change the dict of relative name -> bytes."""
    with zipfile.ZipFile(src) as z:
        root = z.namelist()[0].split("/", 1)[0]
        entries = {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}
    edit(entries)
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in entries.items():
            z.writestr(f"{root}/{name}", data)
    return dst


def _pickled_weight(marker):
    def edit(e):
        cfg = json.loads(e["data/weights/model_weights_config.json"])
        cfg["config"]["0.weight"]["use_pickle"] = True
        e["data/weights/model_weights_config.json"] = json.dumps(cfg).encode()
        e["data/weights/weight_0"] = pickle.dumps(_Exploit(marker))
    return edit


def _opaque_constant(marker):
    def edit(e):
        cfg = {"config": {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}
        e["data/constants/model_constants_config.json"] = json.dumps(cfg).encode()
        e["data/constants/opaque_obj_0"] = pickle.dumps(_Exploit(marker))
    return edit


def _legacy_weights(marker):
    def edit(e):
        buf = io.BytesIO()
        torch.save({"x": _Exploit(marker)}, buf)
        e["data/weights/model.pt"] = buf.getvalue()
    return edit


def _sample_inputs(marker):
    def edit(e):
        buf = io.BytesIO()
        torch.save((_Exploit(marker),), buf)  # the safe unpickler refuses, torch falls back
        e["data/sample_inputs/model.pt"] = buf.getvalue()
    return edit


def _guards_code(marker):
    def edit(e):
        prog = json.loads(e["models/model.json"])
        prog["guards_code"] = [f"__import__('os').system('touch {marker}')"]
        e["models/model.json"] = json.dumps(prog).encode()
    return edit


def _shape_expr(marker):
    def edit(e):
        text = e["models/model.json"].decode()
        sym = json.loads(text)["range_constraints"]
        name = next(iter(sym))
        evil = f"__import__('os').system('touch {marker}') or Symbol('{name}', positive=True, integer=True)"
        text = text.replace(f"Symbol('{name}', positive=True, integer=True)", evil.replace("'", "\\u0027"))
        e["models/model.json"] = text.encode()
    return edit


ATTACKS = {
    "pickled weight": (_pickled_weight, "use_pickle"),
    "opaque constant": (_opaque_constant, "opaque_obj_0"),
    "legacy layout": (_legacy_weights, "data/weights/model.pt"),
    "sample inputs": (_sample_inputs, "sample_inputs"),
    "guards_code": (_guards_code, "guards_code"),
    "shape expression": (_shape_expr, "shape expression"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("reader", [load, load_metadata], ids=["load", "load_metadata"])
def test_crafted_file_is_refused_and_runs_nothing(tmp_path, attack, reader):
    make, entry = ATTACKS[attack]
    marker = tmp_path / "pwned"
    bad = _rewrite(_saved(tmp_path), tmp_path / "bad.pt2", make(marker))
    with pytest.raises(UnsafeModelFile) as info:
        reader(bad)
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"{bad}: refused: ") and entry in line, line
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt2", "good.pt2"]  # wrote nothing


def test_the_crafted_files_do_run_code_in_plain_torch(tmp_path):
    """Guards the test above: each crafted file is a real attack on torch.export.load."""
    import logging

    logging.getLogger("torch").setLevel(logging.CRITICAL)
    ran = []
    for name, (make, _) in ATTACKS.items():
        marker = tmp_path / f"ran-{name.replace(' ', '_')}"
        bad = _rewrite(_saved(tmp_path), tmp_path / "bad.pt2", make(marker))
        try:
            torch.export.load(str(bad)).module()
        except Exception:  # noqa: BLE001 - a payload may break loading after it ran
            pass
        ran.append(name) if marker.exists() else None
    assert set(ran) == set(ATTACKS) - {"guards_code"}, ran  # guards_code: refused on principle (exec)


def test_a_saved_model_passes_the_check_and_names_its_metadata(tmp_path):
    path = _saved(tmp_path)
    assert load_metadata(path)["user"] == {"trial": "t1"}
    assert load(path)(torch.randn(3, 3, 8, 8)).shape == (3, 2)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "not a zip"])
def test_damaged_file_is_one_line_naming_the_file(tmp_path, damage, caplog):
    data = _saved(tmp_path).read_bytes()
    bad = tmp_path / "bad.pt2"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":  # a byte inside the first weight's compressed data
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            info = next(i for i in z.infolist() if i.filename.endswith("weight_0"))
        at = info.header_offset + 30 + len(info.filename) + 5
        bad.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        bad.write_bytes(b"\x80\x02}q\x00." * 10)
    for reader in (load, load_metadata):
        with pytest.raises(ModelFileError) as info:
            reader(bad)
        assert str(info.value).startswith(f"{bad}: ") and "\n" not in str(info.value)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ModelFileError, match=r"cannot read model file"):
        load(tmp_path / "nope.pt2")


def test_errors_are_exported_and_are_value_errors():
    assert issubclass(pruners.UnsafeModelFile, pruners.ModelFileError)
    assert issubclass(pruners.ModelFileError, ValueError)


def test_a_graph_calling_anything_but_aten_is_refused(tmp_path):
    """torch would resolve 'torch.ops.load_library' by getattr and call it when the model runs."""
    def edit(e):
        text = e["models/model.json"].decode()
        assert '"torch.ops.aten.relu.default"' in text
        e["models/model.json"] = text.replace('"torch.ops.aten.relu.default"', '"torch.ops.load_library"', 1).encode()

    bad = _rewrite(_saved(tmp_path), tmp_path / "bad.pt2", edit)
    with pytest.raises(UnsafeModelFile, match=r"calls 'torch.ops.load_library', not an ATen operator"):
        load(bad)

