"""Checkpoint formats are recognised by what a path holds (models/formats/): every family's folder form
loads, a path no format claims or two formats claim is refused with what was found, and the files a
model was read from are recorded in the manifest (and checked) without the folder knowing the family."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from algm_export.core.errors import CheckpointError
from algm_export.models.families import eva02, segvit, setr
from algm_export.models.formats import formats, identify
from algm_export.models.formats.published_segmenter import save_segmenter
from algm_export.models.mmseg_common import randomize_
from algm_export.models.registry import families, resolve_model


def _setr():
    cfg = setr.builtin_setr_config("pup", 64, 5)
    cfg["backbone"].update(embed_dims=64, num_layers=4, num_heads=2, out_indices=(0, 1, 2, 3))
    cfg["decode_head"].update(in_channels=64, channels=32)
    return randomize_(setr.build_setr(cfg), 0).eval()


def _segvit():
    cfg = segvit.builtin_segvit_config(64, 5)
    cfg["model"]["backbone"].update(embed_dims=64, num_layers=4, num_heads=2, out_indices=[1, 3])
    cfg["model"]["decode_head"].update(in_channels=64, channels=64, embed_dims=32, num_heads=2, num_layers=2,
                                       use_stages=2)
    return segvit.randomize_segvit_(segvit.build_segvit(cfg["model"], config=cfg), seed=1).eval(), cfg


def _save_folder(family: str, folder: Path) -> Path:
    """`folder` holding the family's format under neutral names: checkpoint.pth + config.py for the
    mmsegmentation families, checkpoint.pth + variant.yml for Segmenter."""
    folder.mkdir(parents=True)
    if family == "segmenter":
        from algm_export import create_segmenter

        save_segmenter(create_segmenter("vit_tiny", "linear", 64, n_cls=5, seed=0), folder)
    elif family == "setr":
        setr.save_mmseg_setr(_setr(), folder / "checkpoint.pth")
        (folder / "checkpoint.py").rename(folder / "config.py")
    elif family == "segvit":
        model, cfg = _segvit()
        segvit.save_segvit(model, folder / "checkpoint.pth", config=cfg)
        (folder / "checkpoint.py").rename(folder / "config.py")
    elif family == "eva02":
        model = eva02.builtin_eva02("tiny", 64, 16, seed=0, n_cls=5, channels=32)
        eva02.save_mmseg_eva02(model, folder / "checkpoint.pth")
        (folder / "checkpoint.py").rename(folder / "config.py")
    return folder


@pytest.mark.parametrize("family", ["segmenter", "setr", "segvit", "eva02"])
def test_every_family_loads_from_its_folder(tmp_path, family):
    folder = _save_folder(family, tmp_path / "model")
    model = resolve_model(str(folder))
    assert model.cfg.family == family
    roles = {"segmenter": {"checkpoint", "variant"}}.get(family, {"checkpoint", "config"})
    assert set(model.source_files) == roles
    assert model.source_files["checkpoint"] == folder / "checkpoint.pth"
    # the checkpoint file alone finds its companion by content too
    again = resolve_model(str(folder / "checkpoint.pth"))
    assert again.source_files == model.source_files


def test_mmseg_folder_with_checkpoint_pth_is_not_taken_for_segmenter(tmp_path):
    """A folder of mmsegmentation files under Segmenter's file name (checkpoint.pth) is mmsegmentation:
    its config .py decides, not the file name."""
    folder = _save_folder("setr", tmp_path / "run")
    fmt, files = identify(folder)
    assert fmt.name == "mmsegmentation" and files["config"] == folder / "config.py"


def test_no_format_lists_what_was_found_and_the_formats(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * 16)
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError) as e:
        resolve_model(str(folder))
    msg = str(e.value)
    assert "notes.txt" in msg and "weights.bin" in msg
    for fmt in formats().values():
        assert fmt.name in msg


def test_two_formats_are_refused_with_both_named(tmp_path):
    folder = _save_folder("segmenter", tmp_path / "both")
    shutil.copy(Path(setr.__file__), folder / "train_config.py")   # any .py: an mmseg config beside the checkpoint
    with pytest.raises(CheckpointError, match="several checkpoint formats: published-segmenter .*mmsegmentation"):
        identify(folder)


def test_every_family_names_a_registered_format():
    names = set(formats())
    for fam in families().values():
        assert fam.format in names, fam.name


@pytest.mark.slow
def test_manifest_records_and_checks_the_files_of_any_format(tmp_path):
    """The export folder lists every file the model was read from with its sha256 (`model.files`) and
    refuses a changed one, whatever the format: here mmsegmentation's config."""
    from algm_export.artifacts import ExportFolder
    from algm_export.core.errors import ArtifactError
    from algm_export.export.pipeline import export_folder

    folder = _save_folder("setr", tmp_path / "model")
    out = tmp_path / "export"
    export_folder(resolve_model(str(folder)), str(folder), out, thresholds=[0.9], layers=(1, 3), calib_limit=2)
    man = json.loads((out / "manifest.json").read_text())
    files = man["model"]["files"]
    assert set(files) == {"checkpoint", "config"}
    assert files["config"]["path"] == str((folder / "config.py").resolve())
    ExportFolder.load(out).model()                        # unchanged: loads
    (folder / "config.py").write_text((folder / "config.py").read_text() + "\n# edited\n")
    with pytest.raises(ArtifactError, match=r"config\.py \(config\) changed since the export"):
        ExportFolder.load(out).model()
