"""finetune(quantize=...): an int8 trial's row is its ONNX file's, and QAT keeps what pruning did."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pruners
from pruners.quantize import load_onnx, weight_dtypes
from pruners.spec import OptimizerConfig

pytestmark = pytest.mark.slow  # each epoch exports and quantizes the model (seconds)


@pytest.fixture(scope="module")
def loaders():
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target)
    # Fixed order: a resumed run must see the batches the uninterrupted one saw (a trial's
    # DistributedSampler reshuffles per epoch by set_epoch, a pure function of the epoch).
    train = DataLoader(TensorDataset(x[:1200], y[:1200]), batch_size=64, shuffle=False)
    val = DataLoader(TensorDataset(x[1200:1500], y[1200:1500]), batch_size=128)
    return train, val, x[:1]


def _net() -> nn.Module:  # no BatchNorm: QAT's conv-BN folding would cost ~40 s per convert
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))


def _run(loaders, quantize, tmp_path, *, epochs=2, resume=None, states=None, amount=0.5, granularity="unstructured",
         qat_epochs=1):
    train, val, example = loaders
    rows, files = [], []

    def keep(model, row, artifact, state):
        rows.append(row)
        files.append(str(shutil.copy(artifact, tmp_path / f"{quantize}-{row['epoch']}{os.path.splitext(artifact)[1]}")))
        if states is not None:
            states.append(state())

    pruners.finetune(
        _net(), train, val, spec=pruners.PruneSpec("magnitude", granularity=granularity, amount=amount),
        schedule=pruners.make_schedule("one_shot", target=amount), epochs=epochs,
        optimizer=OptimizerConfig(name="adam", lr=0.005), example_inputs=example, checkpoint=keep,
        quantize=quantize, quantize_calibration=256, latency_repeats=5, resume=resume, qat_epochs=qat_epochs)
    return rows, files


def test_an_int8_row_is_measured_on_its_int8_file(loaders, tmp_path):
    rows, files = _run(loaders, "int8", tmp_path)
    row, path = rows[-1], files[-1]
    assert path.endswith(".onnx") and row["latency_runtime"] == "onnxruntime"
    assert row["size_bytes"] == os.path.getsize(path)  # size_bytes is the shipped file's
    dtypes = weight_dtypes(path)
    assert dtypes and set(dtypes.values()) == {"int8"} and row["int8_layers"] == len(dtypes)
    # The row's accuracy is the file's outputs, not the float model's.
    program = load_onnx(path)
    _, val, _ = loaders
    assert pruners.evaluate(program, val, device=torch.device("cpu"))[0] == row["val_accuracy"]
    assert abs(row["val_accuracy"] - row["float_val_accuracy"]) < 0.05  # int8 keeps the float accuracy
    assert row["sparsity"] == pytest.approx(0.5, abs=0.01)
    # The same file, in a process that never imports Prunefront: onnxruntime alone.
    x, y = (t.numpy() for t in next(iter(DataLoader(val.dataset, batch_size=len(val.dataset)))))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    code = textwrap.dedent(f"""
        import sys, numpy as np, onnxruntime as ort
        s = ort.InferenceSession({path!r}, providers=["CPUExecutionProvider"])
        x, y = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'y.npy')!r})
        acc = float((s.run(None, {{s.get_inputs()[0].name: x}})[0].argmax(1) == y).mean())
        assert not any(m.split('.')[0] in ('pruners', 'orchestrator', 'reports', 'torch') for m in sys.modules)
        print(acc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout) - row["val_accuracy"]) <= 0.001


def test_a_float_row_is_timed_on_torch(loaders, tmp_path):
    rows, files = _run(loaders, "none", tmp_path, epochs=1)
    assert files[-1].endswith(".pt2") and rows[-1]["latency_runtime"] == "torch"
    assert "int8_layers" not in rows[-1]


def test_qat_keeps_unstructured_sparsity_and_resumes_inside_qat(loaders, tmp_path):
    import onnx
    from onnx import numpy_helper

    states: list = []
    rows, files = _run(loaders, "int8_qat", tmp_path, epochs=3, states=states, qat_epochs=2)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # Epochs 2 and 3 trained through fake quantization. Masks are gone in the QAT graph: only
    # masked gradients keep pruning's zeros, so every weight the masks of epoch 1 (the end of
    # pruning) zeroed must be an int8 zero in the QAT file of epoch 3.
    masks = {tuple(v.shape): v for k, v in states[0]["model"].items() if k.endswith("weight_mask")}
    qat = {w.shape: w for w in (numpy_helper.to_array(t) for t in onnx.load(files[2]).graph.initializer)
           if w.dtype == np.int8 and w.ndim >= 2}
    assert masks and set(masks) <= set(qat)
    assert sum(int((m == 0).sum()) for m in masks.values()) > 1000
    for shape, mask in masks.items():
        assert (qat[shape][mask.numpy() == 0] == 0).all(), shape
    # Resumed from the end of epoch 2, inside QAT (the graph rebuilt, its state loaded): epoch 3 as before.
    again, _ = _run(loaders, "int8_qat", tmp_path / "..", epochs=3, resume=states[1], qat_epochs=2)
    assert [r["epoch"] for r in again] == [3]
    assert again[0]["val_accuracy"] == rows[-1]["val_accuracy"]
    assert again[0]["train_loss"] == rows[-1]["train_loss"]


def test_qat_needs_an_epoch_before_it(loaders, tmp_path):
    with pytest.raises(ValueError, match="int8_qat needs more epochs"):
        _run(loaders, "int8_qat", tmp_path, epochs=1)
    with pytest.raises(ValueError, match="quantize must be one of"):
        _run(loaders, "fp4", tmp_path, epochs=1)
