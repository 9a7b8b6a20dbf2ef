"""Checkpoints never run code by default (issue "Untrusted artifacts", docs/security.md).

A training checkpoint as the published Segmenter code saves it loads with no flag and no warning;
a pickle that calls a shell command is refused by `export` and `predict` before the command runs;
`--trust-checkpoint` / `trust_checkpoint=True` is the one way to unpickle other objects.
"""

from __future__ import annotations

import collections
import datetime
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from algm_export.core.errors import CheckpointError
from algm_export.models.formats.published_segmenter import load_segmenter, read_variant, save_segmenter
from algm_export.models.formats.safe_load import load_checkpoint_file, refused_types
from algm_export.models.families.segmenter import create_segmenter

SIZE = 64
REPO = Path(__file__).resolve().parents[1]


class RunsShell:
    """What a malicious checkpoint holds: unpickling it runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class MakesFolder:
    """A harmless stand-in for code in a pickle: unpickling it creates a folder."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.mkdir, (Path(self.path),))


@pytest.fixture(scope="module")
def model():
    return create_segmenter("vit_tiny", "linear", SIZE, n_cls=5, seed=0)


def training_state(model) -> dict:
    """What the published Segmenter `train.py` saves (plus numpy scalars, as timm schedulers hold)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=100, power=0.9)
    loss = model(torch.randn(1, 3, SIZE, SIZE)).mean()
    loss.backward()
    opt.step()                                            # momentum buffers in the optimizer state
    opt.zero_grad()
    sched.step()
    lr_state = sched.state_dict()
    lr_state.update(base_values=[np.float64(0.001)], warmup_t=np.int64(3), noise_range_t=None,
                    t_in_epochs=False, param_group_field="lr")  # timm's Scheduler attributes
    scaler = torch.amp.GradScaler("cpu")                  # the GradScaler state of a CUDA run
    assert scaler.state_dict()["scale"] == 65536.0
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "n_cls": 5,
            "lr_scheduler": lr_state, "epoch": 63, "loss_scaler": scaler.state_dict(),
            "ema": np.float64(0.5), "iters": np.int64(3)}


def _with_variant(model, d: Path, payload: dict) -> Path:
    save_segmenter(model, d)
    torch.save(payload, d / "checkpoint.pth")
    return d / "checkpoint.pth"


@pytest.mark.slow
def test_training_checkpoint_loads_without_flag_or_warning(model, tmp_path):
    ck = _with_variant(model, tmp_path, training_state(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_segmenter(ck)
        obj = load_checkpoint_file(ck)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert obj["epoch"] == 63 and obj["loss_scaler"]["_growth_tracker"] == 0
    assert isinstance(obj["ema"], np.float64) and obj["ema"] == 0.5 and obj["iters"] == 3
    assert obj["lr_scheduler"]["base_values"] == [0.001]
    assert all("momentum_buffer" in s for s in obj["optimizer"]["state"].values())
    # the allow-list is scoped to our load, nothing is registered for the rest of the process
    assert np.ndarray not in torch.serialization.get_safe_globals()
    with pytest.raises(Exception, match="numpy"):
        torch.load(ck, weights_only=True)


def test_meta_values_of_other_frameworks_load(tmp_path):
    """mmsegmentation-style `meta`: strings, numbers, lists, OrderedDict, numpy arrays, datetimes."""
    meta = {"CLASSES": ("wall", "sky"), "PALETTE": [[1, 2, 3]], "seed": np.int64(7),
            "classes_arr": np.array(["wall", "sky"]), "hist": np.arange(6, dtype=np.float32).reshape(2, 3),
            "mask": np.array([True, False]), "counts": collections.OrderedDict(a=np.int32(2)),
            "time": datetime.datetime(2024, 3, 1, 12, 0, tzinfo=datetime.timezone.utc),
            "took": datetime.timedelta(hours=3), "day": datetime.date(2024, 3, 1)}
    torch.save({"meta": meta, "state_dict": {"w": torch.ones(2)}}, tmp_path / "m.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obj = load_checkpoint_file(tmp_path / "m.pth")
    m = obj["meta"]
    assert m["classes_arr"].tolist() == ["wall", "sky"] and m["hist"].dtype == np.float32
    assert m["time"].year == 2024 and m["took"].seconds == 3 * 3600 and m["counts"]["a"] == 2


def test_numpy1_pickle_names_load(tmp_path):
    """Checkpoints written under numpy 1 name `numpy.core.multiarray.scalar` (numpy 2: `numpy._core`)."""
    p = tmp_path / "legacy.pth"
    torch.save({"lr": np.float64(0.25)}, p, _use_new_zipfile_serialization=False)
    data = p.read_bytes()
    # protocol 2: a GLOBAL opcode, named as the numpy that wrote it names it; make it numpy 1's name
    here = b"numpy._core.multiarray\nscalar" if np.lib.NumpyVersion(np.__version__) >= "2.0.0" \
        else b"numpy.core.multiarray\nscalar"
    assert here in data
    p.write_bytes(data.replace(here, b"numpy.core.multiarray\nscalar"))
    assert load_checkpoint_file(p) == {"lr": 0.25}


def test_malicious_checkpoint_is_refused_and_never_runs(model, tmp_path):
    marker = tmp_path / "MARKER"
    ck = _with_variant(model, tmp_path / "evil", {"model": model.state_dict(), "n_cls": 5,
                                                  "x": RunsShell(marker)})
    with pytest.raises(CheckpointError) as e:
        load_segmenter(ck)
    msg = str(e.value)
    assert "posix.system" in msg and "--trust-checkpoint" in msg and "trust_checkpoint=True" in msg
    assert "\n" not in msg
    assert not marker.exists()


def test_trust_unpickles_other_objects(model, tmp_path):
    made = tmp_path / "made-by-unpickling"
    ck = _with_variant(model, tmp_path / "ck", {"model": model.state_dict(), "n_cls": 5,
                                                "extra": MakesFolder(made)})
    with pytest.raises(CheckpointError, match=r"pathlib\..*--trust-checkpoint"):
        load_segmenter(ck)
    assert not made.exists()
    loaded = load_segmenter(ck, trust_checkpoint=True)
    assert made.is_dir() and loaded.cfg.n_cls == 5


def test_refused_types_reads_torch_messages():
    assert refused_types("Trying to load unsupported GLOBAL posix.system whose module posix is blocked.") \
        == ["posix.system"]
    assert refused_types("Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default.") \
        == ["argparse.Namespace"]
    assert refused_types("Can only build Tensor, ... but got <class 'numpy.dtypes.VoidDType'>") \
        == ["numpy.dtypes.VoidDType"]
    assert refused_types("invalid load key, 'x'.") == []


def test_variant_yml_python_tags_are_never_executed(model, tmp_path):
    marker = tmp_path / "YAML_MARKER"
    save_segmenter(model, tmp_path)
    text = (tmp_path / "variant.yml").read_text()
    text += (f"log_dir: !!python/object/apply:os.system [\"touch {marker}\"]\n"
             "hook: !!python/name:os.system ''\n"
             "obj: !!python/object:argparse.Namespace {lr: 0.1}\n"
             "mod: !!python/module:os ''\n")
    (tmp_path / "variant.yml").write_text(text)
    v = read_variant(tmp_path / "variant.yml")
    assert v["log_dir"] == [f"touch {marker}"] and v["obj"] == {"lr": 0.1}
    assert load_segmenter(tmp_path).cfg.n_cls == 5
    assert not marker.exists()


def _cli(*argv, cwd):
    env = dict(os.environ, ALGM_QUIET="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "algm_export", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_cli_export_and_predict_refuse_a_shell_command_pickle(model, tmp_path):
    """The issue's first case, through the real command line."""
    marker = tmp_path / "MARKER"
    ck = _with_variant(model, tmp_path / "evil", {"model": model.state_dict(), "n_cls": 5,
                                                  "x": RunsShell(marker)})
    for argv in (["export", str(ck), "--out", str(tmp_path / "out"), "--thresholds", "0.9"],
                 ["predict", "sample:coffee", "--model", str(ck), "--out", str(tmp_path / "pred"), "-q"]):
        r = _cli(*argv, cwd=tmp_path)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert r.returncode == 2, r.stderr
        assert len(errors) == 1 and "posix.system" in errors[0] and "--trust-checkpoint" in errors[0], r.stderr
        assert "Traceback" not in r.stderr
        assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "pred").exists()


def test_cli_trust_checkpoint_flag(model, tmp_path, capsys):
    from algm_export.cli import main

    made = tmp_path / "made-by-unpickling"
    ck = _with_variant(model, tmp_path / "ck", {"model": model.state_dict(), "n_cls": 5,
                                                "extra": MakesFolder(made)})
    out = tmp_path / "pred"
    assert main(["predict", "sample:coffee", "--model", str(ck), "--out", str(out), "-q"]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err and not made.exists()
    assert main(["predict", "sample:coffee", "--model", str(ck), "--out", str(out), "-q",
                 "--trust-checkpoint"]) == 0
    assert made.is_dir() and (out / "coffee_seg.png").exists()
