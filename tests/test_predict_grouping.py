"""`predict` in dynamic token mode batches images of similar token counts (`tasks/predict/grouping.py`).

A 6-block ViT-Ti Segmenter at 128 px (8x8 patches, layers 1 and 5) exported once for this module in
dynamic token mode (tau 0.88). The collection: the bundled photos resized to the model size and
cropped below it (CLAP counts from 16 to 64), one image larger than the model (sliding windows, run
on its own) and one file that is no image. Grouping is asked for (`group="on"`: "auto" leaves it off
on a CPU). Grouped runs are compared with the same runner image by
image (`group="off"`): on these images the label maps are identical (measured: 100 % of pixels,
ONNX Runtime and PyTorch alike; the test allows 99.9 %, the agreement a batch's padding may cost in
float32), the token counts exactly equal.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from algm_export.tasks.predict import PredictOptions, run_predict
from algm_export.tasks.predict.grouping import groups_images, plan_pool, pools, run_group
from conftest import PHOTOS, photo

AGREEMENT = 0.999


@pytest.fixture(scope="module")
def dyn(tmp_path_factory):
    from _helpers.models import tiny_segmenter
    from algm_export.export.pipeline import export_folder
    from algm_export.models.formats.published_segmenter import save_segmenter
    from algm_export.models.registry import resolve_model

    root = tmp_path_factory.mktemp("grouping")
    save_segmenter(tiny_segmenter(), root / "ck")
    model = resolve_model(str(root / "ck"))
    export_folder(model, str(root / "ck"), root / "dyn", thresholds=[0.88], token_mode="dynamic")
    imgs = root / "imgs"
    imgs.mkdir()
    for i, name in enumerate(PHOTOS):
        Image.fromarray(photo(name)).resize((128, 128)).save(imgs / f"{i}_{name}.png")
        Image.fromarray(photo(name)[:100, :120]).save(imgs / f"{i}_{name}_crop.png")
    Image.fromarray(photo("coffee")).resize((200, 150)).save(imgs / "z_large.png")       # sliding windows
    (imgs / "z_broken.png").write_text("not an image")
    onnx = next((root / "dyn").glob("*_dyn.onnx"))
    return SimpleNamespace(root=root, model=model, imgs=imgs, onnx=onnx)


def _run(d, out: Path, **kw) -> dict:
    opts = dict(model=None, backend="onnxruntime", backend_options={"engine": str(d.onnx)}, out=out, merge_png=False)
    opts.update(kw)
    return run_predict([d.imgs], PredictOptions(**opts), progress=False)


def _outputs(out: Path) -> dict:
    """name -> (label map, NAME_tokens.json)"""
    return {p.name[:-len("_labels.png")]: (np.asarray(Image.open(p)),
                                           json.loads(Path(str(p)[:-len("_labels.png")] + "_tokens.json").read_text()))
            for p in sorted(out.glob("*_labels.png"))}


def _agree(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    same = sum(int((a[k][0] == b[k][0]).sum()) for k in a)
    return same / sum(a[k][0].size for k in a)


def _batches(recs) -> dict:
    """batch_tokens -> names, for the images run in a batch (distinct batches have distinct maxima here)"""
    out: dict = {}
    for r in recs:
        if r["status"] == "done" and "batch_tokens" in r:
            out.setdefault(tuple(r["batch_tokens"]), []).append(r["name"])
    return out


def test_dynamic_onnx_groups_by_token_count_and_matches_image_by_image(dyn, tmp_path):
    with pytest.warns(UserWarning, match="failed"):
        res = _run(dyn, tmp_path / "g", batch_size=4, group="on")
    with pytest.warns(UserWarning, match="failed"):
        one = _run(dyn, tmp_path / "one", batch_size=4, group="off")
    assert res["done"] == 13 and res["failed"] == 1 and one["done"] == 13
    g = res["grouping"]
    assert g["grouped"] is True and g["images"] == 12 and one["grouping"] == {"grouped": False}
    assert g["flop_ratio"] > g["flop_ratio_at_batch_max"] > 1
    recs = {r["name"]: r for r in res["records"]}
    assert recs["z_large"]["mode"] == "sliding" and "batch_images" not in recs["z_large"]
    assert recs["z_broken"]["status"] == "failed"
    # batches of four, formed by CLAP count: no batch's counts overlap another's, and not in input order
    batches = sorted(_batches(res["records"]).values(), key=lambda names: min(recs[n]["tokens"][1] for n in names))
    assert [len(b) for b in batches] == [4, 4, 4]
    spans = [(min(recs[n]["tokens"][1] for n in b), max(recs[n]["tokens"][1] for n in b)) for b in batches]
    assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))
    assert any(sorted(recs[n]["index"] for n in b) != list(range(min(recs[n]["index"] for n in b),
                                                               min(recs[n]["index"] for n in b) + 4)) for b in batches)
    for names in batches:   # every image was computed at its batch's largest counts
        top = np.max([recs[n]["tokens"][1:] for n in names], 0).tolist()
        assert all(recs[n]["batch_tokens"] == top and recs[n]["batch_images"] == 4 for n in names)
    a, b = _outputs(tmp_path / "g"), _outputs(tmp_path / "one")
    assert _agree(a, b) >= AGREEMENT
    assert all(a[k][1]["tokens"] == b[k][1]["tokens"] for k in a)
    assert a["z_large"][1]["tokens"] == b["z_large"][1]["tokens"]
    assert "batch_tokens" in a["0_" + PHOTOS[0]][1] and "batch_tokens" not in b["0_" + PHOTOS[0]][1]
    run = json.loads((tmp_path / "g" / "run.json").read_text())
    assert run["grouping"] == g


def test_dynamic_torch_runner_groups_too(dyn, tmp_path):
    from algm_export.runtimes.registry import torch_runner
    from algm_export.tasks.predict import algm_setting_for

    runner = torch_runner(dyn.model, algm_setting_for(dyn.model), token_mode="dynamic", assignments=True)
    opts = dict(model=dyn.model, merge_png=True)
    with pytest.warns(UserWarning, match="failed"):
        res = run_predict([dyn.imgs], PredictOptions(out=tmp_path / "g", group="on", **opts), progress=False, runner=runner)
    with pytest.warns(UserWarning, match="failed"):
        run_predict([dyn.imgs], PredictOptions(out=tmp_path / "one", group="off", **opts), progress=False,
                    runner=runner)
    assert res["grouping"]["images"] == 12
    a, b = _outputs(tmp_path / "g"), _outputs(tmp_path / "one")
    assert _agree(a, b) >= AGREEMENT
    assert all(a[k][1]["tokens"] == b[k][1]["tokens"] for k in a)
    assert len(list((tmp_path / "g").glob("*_merge.png"))) == 13      # each image's own assignment maps


def test_resume_groups_the_images_still_to_do(dyn, tmp_path):
    with pytest.warns(UserWarning):
        _run(dyn, tmp_path / "o", batch_size=4, group="on")
    before = _outputs(tmp_path / "o")
    gone = ["1_" + PHOTOS[1], "3_" + PHOTOS[3] + "_crop", "5_" + PHOTOS[5]]
    for name in gone:
        (tmp_path / "o" / f"{name}_tokens.json").unlink()
    with pytest.warns(UserWarning):
        res = _run(dyn, tmp_path / "o", batch_size=4, group="on")
    recs = {r["name"]: r for r in res["records"]}
    assert sorted(n for n, r in recs.items() if r["status"] == "done") == sorted(gone)
    assert res["skipped"] == 10 and res["grouping"]["images"] == 3
    assert all(recs[n]["batch_images"] == 3 for n in gone)                # the three to do: one batch
    after = _outputs(tmp_path / "o")
    assert all(after[n][1]["tokens"] == before[n][1]["tokens"] for n in gone)
    assert _agree({n: after[n] for n in gone}, {n: before[n] for n in gone}) >= AGREEMENT


def test_plan_is_deterministic_and_ties_go_by_input_order(dyn, tmp_path):
    from algm_export.tasks.predict import Job, make_runner
    from algm_export.tasks.predict.collection import Item, collect_items

    runner = make_runner(dyn.model, None, "onnxruntime", engine=dyn.onnx)
    setting = runner.entry.setting()
    job = Job(out=str(tmp_path), key="k", kinds=("labels", "tokens"), setting=setting, sliding=False, batch_size=3,
              n_cls=21, patch_size=16, overwrite=False, run_info={"backend": "onnxruntime"})
    items = collect_items([dyn.imgs])
    items.append(Item(len(items), "copy", items[0].source))       # the same image twice: equal counts
    assert len(pools(items, 3)) == 1
    p1, p2 = plan_pool(items, dyn.model, job, (128, 128)), plan_pool(items, dyn.model, job, (128, 128))
    names = lambda p: [[it.name for it in g] for g in p.groups]      # noqa: E731
    assert names(p1) == names(p2)
    assert [it.name for it in p1.windowed] == ["z_large"]
    assert [r["name"] for r in p1.records] == ["z_broken"] and p1.records[0]["status"] == "failed"
    flat = [it for g in p1.groups for it in g]
    keys = [(p1.counts[it.index], it.index) for it in flat]
    assert keys == sorted(keys) and len(flat) == 13
    twins = [it.index for it in flat if it.source == items[0].source]
    assert len(twins) == 2 and twins == sorted(twins)


def test_a_failing_batch_runs_its_images_alone(dyn, tmp_path):
    """A forward that fails for the batch (say, beyond an engine's batch profile) is retried image by
    image; an image that fails alone is recorded alone."""
    from algm_export.tasks.predict import Job, make_runner
    from algm_export.tasks.predict.collection import Item

    inner = make_runner(dyn.model, None, "onnxruntime", engine=dyn.onnx)

    class OneAtATime:
        backend, entry, input_size, takes_threshold = "onnxruntime", inner.entry, (128, 128), False

        def infer(self, x, **kw):
            if x.shape[0] > 1:
                raise RuntimeError("batch above the profile")
            return inner.infer(x, **kw)

    job = Job(out=str(tmp_path), key="k", kinds=("labels", "tokens"), setting=inner.entry.setting(), sliding=False,
              batch_size=4, n_cls=21, patch_size=16, overwrite=False, run_info={"backend": "onnxruntime"})
    items = [Item(0, "a", str(dyn.imgs / f"0_{PHOTOS[0]}.png")), Item(1, "b", str(dyn.imgs / "gone.png")),
             Item(2, "c", str(dyn.imgs / f"2_{PHOTOS[2]}_crop.png"))]
    recs = run_group(items, dyn.model, OneAtATime(), job)
    assert [(r["name"], r["status"]) for r in sorted(recs, key=lambda r: r["index"])] == \
        [("a", "done"), ("b", "failed"), ("c", "done")]
    assert all("batch_images" not in r for r in recs)


def test_only_dynamic_token_mode_groups_and_auto_only_on_a_gpu():
    from algm_export.core.errors import ConfigError

    dyn_entry = SimpleNamespace(is_dynamic=True, is_baseline=False)
    static_entry = SimpleNamespace(is_dynamic=False, is_baseline=False)
    cpu = SimpleNamespace(entry=dyn_entry, backend="onnxruntime")
    assert groups_images(cpu, 4, "on") and not groups_images(cpu, 4) and not groups_images(cpu, 4, "off")
    assert groups_images(SimpleNamespace(entry=dyn_entry, backend="tensorrt"), 4)          # auto: on a GPU
    assert not groups_images(SimpleNamespace(entry=dyn_entry, backend="tensorrt"), 1)
    assert not groups_images(SimpleNamespace(entry=static_entry, backend="tensorrt"), 4, "on")
    assert groups_images(SimpleNamespace(entry=None, takes_threshold=True), 4, "on")
    assert not groups_images(SimpleNamespace(entry=None, model=SimpleNamespace(dynamic=False)), 4, "on")   # reference
    assert groups_images(SimpleNamespace(entry=None, model=SimpleNamespace(dynamic=True), device="cuda:0"), 4)
    with pytest.raises(ConfigError, match="--grouping"):
        groups_images(cpu, 4, "sometimes")


def test_cli_grouping_and_the_summary_line(dyn, tmp_path, capsys):
    from algm_export.cli import main

    base = ["predict", str(dyn.imgs / f"0_{PHOTOS[0]}.png"), str(dyn.imgs / f"1_{PHOTOS[1]}.png"),
            "--engine", str(dyn.onnx), "--no-merge"]
    assert main(base + ["--out", str(tmp_path / "a"), "--grouping", "on"]) == 0
    assert "FLOP ratio" in capsys.readouterr().out
    assert json.loads((tmp_path / "a" / "run.json").read_text())["grouping"]["images"] == 2
    assert main(base + ["--out", str(tmp_path / "b")]) == 0          # auto: off on the CPU
    assert json.loads((tmp_path / "b" / "run.json").read_text())["grouping"] == {"grouped": False}


@pytest.mark.slow
def test_ray_local_forms_the_single_process_batches(dyn, tmp_path):
    pytest.importorskip("ray.data")
    with pytest.warns(UserWarning):
        single = _run(dyn, tmp_path / "single", batch_size=3, group="on")
    with pytest.warns(UserWarning):
        ray = _run(dyn, tmp_path / "ray", batch_size=3, ray="local", actors=2, group="on")
    assert ray["executor"] == "ray" and ray["done"] == 13 and ray["failed"] == 1
    assert ray["grouping"] == single["grouping"]
    a, b = _outputs(tmp_path / "single"), _outputs(tmp_path / "ray")
    assert a.keys() == b.keys()
    assert [k for k in a if not np.array_equal(a[k][0], b[k][0])] == []
    drop = ("seconds", "ms", "worker", "run_key")
    assert all({k: v for k, v in a[n][1].items() if k not in drop} == {k: v for k, v in b[n][1].items() if k not in drop}
               for n in a)
