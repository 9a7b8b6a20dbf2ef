"""Export folders from elsewhere are checked before use, and one writer at a time works on a folder
(issue "Untrusted artifacts", docs/security.md).

* manifest.json is checked against its schema; every name and path in it must stay inside the
  folder (no `..`, no absolute paths, no symlinks leading out), or the command stops with exit 2
  before it writes anything;
* files are sha256-checked before they are parsed;
* `export`, `build`, `validate`, `bench` and `report` hold the folder's lock; a second writer
  stops with exit 2 naming the holder (or waits with --wait).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from algm_export.cli import main
from algm_export.core.errors import ArtifactError, FolderInUse
from algm_export.core.lock import LOCK_NAME, folder_lock
from algm_export.core.manifest import (check_manifest, load_manifest, resolve_inside, save_manifest, sha256_file)

REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path, inside: Path) -> dict:
    """Every file and folder under `root` outside `inside`, with sizes and modification times."""
    out = {}
    for p in root.rglob("*"):
        if p == inside or inside in p.parents:
            continue
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def folder(tiny_export, tmp_path):
    """A copy of the session's export folder two levels below tmp_path (room for `../../x`)."""
    _ck, src, images = tiny_export
    d = tmp_path / "work" / "export"
    shutil.copytree(src, d)
    return d


def edit_manifest(d: Path, change) -> None:
    data = json.loads((d / "manifest.json").read_text())
    change(data)
    (d / "manifest.json").write_text(json.dumps(data))


def run(capsys, *argv) -> tuple[int, list[str], str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("error:")], err


def commands(d: Path, images: Path) -> dict:
    return {
        "build": ["build", d, "--backend", "tensorrt-rtx", "--compute-capability", "86"],
        "validate": ["validate", d, "--images", images, "--max-images", "1"],
        "bench": ["bench", d, "--backend", "ort", "--images", images, "--repeats", "1", "--warmup", "0",
                  "--settle-ms", "0"],
        "report": ["report", d, "--merge-pictures", "1"],
    }


def assert_refused(capsys, d, images, words, root):
    before = snapshot(root, d)
    for name, argv in commands(d, images).items():
        code, errors, err = run(capsys, *argv)
        assert code == 2, (name, err)
        assert len(errors) == 1 and all(w in errors[0] for w in words), (name, errors)
        assert "Traceback" not in err
    assert snapshot(root, d) == before            # nothing written outside the folder
    for sub in ("validation", "bench", "report"):  # ... and nothing inside it either
        assert not (d / sub).exists(), sub
    assert not list((d / "engines").glob("*")) if (d / "engines").exists() else True


def test_setting_name_with_a_path_is_refused(capsys, folder, tiny_export, tmp_path):
    """The issue's second case: a setting named `../../x` wrote engines and outputs outside."""
    edit_manifest(folder, lambda m: m["settings"][0].update(name="../../x"))
    assert_refused(capsys, folder, tiny_export[2], ["settings[0].name", "'../../x'", "not starting with '.'",
                                                    "re-export"], tmp_path)
    assert not list(tmp_path.rglob("x.*"))


@pytest.mark.parametrize("key,value", [
    ("onnx", "../outside.onnx"), ("onnx", "/etc/hostname"), ("onnx", "a\\b.onnx"), ("onnx", "a/./b.onnx"),
    ("onnx", "x\x00.onnx"), ("onnx", ""), ("onnx_fp16", "../../y.onnx"),
])
def test_paths_leading_out_are_refused(capsys, folder, tiny_export, tmp_path, key, value):
    def change(m):
        m["settings"][0][key] = value
        m["settings"][0].setdefault("sha256_fp16", m["settings"][0]["sha256"])

    edit_manifest(folder, change)
    code, errors, _ = run(capsys, *commands(folder, tiny_export[2])["validate"])
    assert code == 2 and f"settings[0].{key} must be a plain relative path inside the export folder" in errors[0]


def test_symlink_leading_out_is_refused(capsys, folder, tiny_export, tmp_path):
    target = tmp_path / "elsewhere.onnx"
    shutil.move(folder / "baseline.onnx", target)
    (folder / "baseline.onnx").symlink_to(target)               # same bytes, same sha256, but outside
    assert_refused(capsys, folder, tiny_export[2], ["'baseline.onnx' (baseline.onnx) leads out of the export folder"], tmp_path)


@pytest.mark.slow
def test_output_folder_symlinked_out_is_refused(capsys, folder, tiny_export, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    for sub in ("validation", "bench", "report", "engines"):
        (folder / sub).symlink_to(outside, target_is_directory=True)
    for name, argv in commands(folder, tiny_export[2]).items():
        code, errors, err = run(capsys, *argv)
        assert code == 2 and "leads out of the export folder" in errors[0], (name, err)
    assert not list(outside.iterdir())


def test_plugin_library_outside_the_folder_is_refused(capsys, folder, tiny_export):
    lib = folder / "engines" / "plugins" / "0123456789abcdef" / "libalgm_plugins.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF not really")
    eng = folder / "engines" / "baseline.fp32.engine"
    eng.write_bytes(b"fake engine")

    def change(m, plugin):
        m["engines"] = [{"setting": "baseline", "file": "engines/baseline.fp32.engine", "sha256": sha256_file(eng),
                         "backend": "tensorrt-rtx", "precision": "fp32", "plugin_library": plugin,
                         "plugin_sha256": sha256_file(lib)}]

    edit_manifest(folder, lambda m: change(m, str(lib)))          # an absolute path, as builds used to write
    code, errors, _ = run(capsys, *commands(folder, tiny_export[2])["report"])
    assert code == 2 and "engines[0].plugin_library must be a plain relative path" in errors[0]
    edit_manifest(folder, lambda m: change(m, str(lib.relative_to(folder))))
    assert load_manifest(folder, verify=True)["engines"][0]["plugin_library"].startswith("engines/plugins/")
    lib.write_bytes(b"\x7fELF changed")                             # checked like every other listed file
    with pytest.raises(ArtifactError, match="libalgm_plugins.so: sha256 does not match"):
        load_manifest(folder, verify=True)


def test_schema_messages_name_the_key(folder):
    man = load_manifest(folder)
    bad = json.loads(json.dumps(man))
    bad["settings"][0]["capacities"] = "abc"
    with pytest.raises(ArtifactError) as e:
        check_manifest(bad)
    msg = str(e.value)
    assert msg.startswith("manifest.json: settings[0].capacities must be a list of integers")
    assert msg.endswith("found 'abc'; re-export the folder (`algm-export export ... --out DIR --force`) or "
                        "restore its manifest.json")
    for change, words in [
        (lambda m: m.pop("baseline"), "baseline is missing"),
        (lambda m: m["model"].update(image_size=[64, 10**12]), "model.image_size must be a list of integers in [1, 8192]"),
        (lambda m: m["settings"][0].update(threshold=float("nan")), "settings[0].threshold must be a finite number"),
        (lambda m: m["settings"][0].update(sha256="abc"), "settings[0].sha256 must be a sha256"),
        (lambda m: m["settings"][0].pop("sha256"), "settings[0].sha256 is missing"),
        (lambda m: m["settings"].append(dict(m["settings"][0])), "settings[1].name 't0.900_l1-5' repeats"),
        (lambda m: m.update(engines=[{"setting": "baseline"}]), "engines[0].file is missing"),
        (lambda m: m.update(format="algm-export/0"), "has format 'algm-export/0', expected 'algm-export/1'"),
    ]:
        bad = json.loads(json.dumps(man))
        change(bad)
        with pytest.raises(ArtifactError, match=None) as e:
            check_manifest(bad)
        assert words in str(e.value), (words, str(e.value))
    (folder / "manifest.json").write_text('{"format": "algm-export/1", "model": NaN}')
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_manifest(folder)


def test_resolve_inside(folder):
    assert resolve_inside(folder, "baseline.onnx", "x") == (folder / "baseline.onnx").resolve()
    for rel in ("..", "../x", "/x", "a//b", "a/", ".hidden", "a/../b", "C:\\x", None, 3):
        with pytest.raises(ArtifactError, match="not a plain relative path"):
            resolve_inside(folder, rel, "thing")


@pytest.mark.slow
def test_report_escapes_what_the_folder_says(capsys, folder, tiny_export):
    edit_manifest(folder, lambda m: m["model"].update(backbone="<script>alert(1)</script>", decoder="<b>"))
    (folder / "bench").mkdir()
    (folder / "bench" / "bench.json").write_text(json.dumps({
        "results": [], "machine": {"cpus": 2, "processor": "x", "threads": 2}, "repeats": 1, "plot": "/etc/hostname"}))
    # the report draws its own charts: a path bench.json names is never read
    code, errors, _ = run(capsys, "report", folder, "--merge-pictures", "1")
    assert code == 0, errors
    page = (folder / "report" / "index.html").read_text()
    assert "/etc/hostname" not in page and "<script>alert(1)</script>" not in page
    shutil.rmtree(folder / "bench")
    assert run(capsys, "report", folder, "--merge-pictures", "1")[0] == 0
    page = (folder / "report" / "index.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.slow
def test_predict_engine_file_is_checked_against_its_manifest(capsys, folder, tiny_export, tmp_path):
    ck = tiny_export[0]
    onnx = folder / "t0.900_l1-5.onnx"
    argv = ["predict", "sample:coffee", "--model", ck, "--threshold", "0.9", "--engine", onnx,
            "--out", tmp_path / "pred", "-q"]
    assert run(capsys, *argv)[0] == 0
    onnx.write_bytes(onnx.read_bytes()[:-4] + b"XXXX")
    code, errors, _ = run(capsys, *argv)
    assert code == 2 and "sha256 does not match the manifest" in errors[0]


def test_corrupt_files_are_typed_errors(capsys, folder, tiny_export, tmp_path):
    images = tiny_export[2]
    onnx = folder / "t0.900_l1-5.onnx"
    data = onnx.read_bytes()
    onnx.write_bytes(data[: len(data) // 2])                       # truncated, and its digest updated
    edit_manifest(folder, lambda m: m["settings"][0].update(sha256=sha256_file(onnx)))
    code, errors, _ = run(capsys, *commands(folder, images)["validate"])
    # the graph is parsed (without its external data) before any runtime opens it
    assert code == 2 and "is not a readable ONNX model" in errors[0] and "re-export it" in errors[0]
    onnx.write_bytes(data)
    edit_manifest(folder, lambda m: m["settings"][0].update(sha256=sha256_file(onnx)))
    assert not (folder / "validation").exists()                   # refused before anything was written
    (folder / "validation").mkdir()
    (folder / "validation" / "report.onnxruntime.fp32.json").write_text('{"entries": [{"name": "x", "summary": {}}]}')
    code, errors, _ = run(capsys, "report", folder, "--merge-pictures", "1")
    assert code == 2 and "report.onnxruntime.fp32.json" in errors[0] and "run `algm-export validate DIR` again" in errors[0]


def test_checkpoint_named_by_the_manifest_is_checked_before_it_is_read(capsys, folder, tiny_export, tmp_path):
    """A folder whose checkpoint was swapped for a shell-command pickle: refused by its sha256, never read."""
    import torch

    ck = tmp_path / "ck"
    shutil.copytree(tiny_export[0], ck)
    edit_manifest(folder, lambda m: m["model"]["files"]["checkpoint"].update(path=str(ck / "checkpoint.pth")))
    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {}, "x": Evil()}, ck / "checkpoint.pth")
    for name in ("validate", "bench", "report"):
        code, errors, err = run(capsys, *commands(folder, tiny_export[2])[name])
        assert code == 2 and "checkpoint.pth (checkpoint) changed since the export (sha256 differs)" in errors[0], (name, err)
    edit_manifest(folder, lambda m: m["model"]["files"]["checkpoint"].update(sha256=sha256_file(ck / "checkpoint.pth")))
    code, errors, _ = run(capsys, *commands(folder, tiny_export[2])["validate"])
    assert code == 2 and "refers to posix.system" in errors[0] and "--trust-checkpoint" in errors[0]
    assert not marker.exists()


# ----------------------------------------------------------------------------- one writer per folder

HOLD = ("import sys, time; from algm_export.core.lock import folder_lock\n"
        "with folder_lock(sys.argv[1], 'test holder'):\n"
        "    print('held', flush=True); time.sleep(float(sys.argv[2]))\n")


def _env():
    return dict(os.environ, ALGM_QUIET="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def hold(d: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(d), str(seconds)], stdout=subprocess.PIPE, text=True,
                         env=_env())
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.slow
def test_second_writer_stops_and_names_the_holder(capsys, folder, tiny_export, tmp_path):
    holder = hold(folder, 120)
    try:
        before = sorted(p.name for p in folder.iterdir())
        argv = dict(commands(folder, tiny_export[2]),
                    export=["export", tiny_export[0], "--out", folder, "--force", "--thresholds", "0.8"])
        for name, a in argv.items():
            code, errors, err = run(capsys, *a)
            assert code == 2, (name, err)
            assert f"is in use by another algm-export run (pid {holder.pid} on " in errors[0], errors
            assert "test holder" in errors[0] and "--wait" in errors[0]
        assert sorted(p.name for p in folder.iterdir()) == before
    finally:
        holder.kill()                                 # a killed holder never leaves the folder locked
        holder.wait()
    with folder_lock(folder, "after"):
        assert "after" in (folder / LOCK_NAME).read_text()
    assert (folder / LOCK_NAME).read_text() == ""    # released: no holder named any more


@pytest.mark.slow
def test_wait_waits_for_the_holder(capsys, folder):
    holder = hold(folder, 3)
    t0 = time.monotonic()
    code = main(["report", str(folder), "--merge-pictures", "1", "--wait"])
    err = capsys.readouterr().err
    holder.wait()
    assert code == 0, err
    assert "waiting for" in err and f"pid {holder.pid}" in err and time.monotonic() - t0 > 1
    with pytest.raises(FolderInUse, match="still in use"):
        holder = hold(folder, 30)
        try:
            with folder_lock(folder, "x", wait=0.5):
                pass
        finally:
            holder.kill()
            holder.wait()


def test_lock_is_reentrant_in_one_process(folder):
    with folder_lock(folder, "outer"):
        with folder_lock(folder, "inner"):
            pass
        assert "outer" in (folder / LOCK_NAME).read_text()


@pytest.mark.slow
def test_concurrent_exports_into_one_new_folder(tiny_export, tmp_path):
    """The issue's third case: two exports started together into one new folder. Whichever takes the
    lock is frozen (SIGSTOP) until the other has finished, so the two certainly overlap."""
    ck, _src, images = tiny_export
    out = tmp_path / "new"
    cmds = {t: [sys.executable, "-m", "algm_export", "export", str(ck), "--out", str(out), "--thresholds", t,
                "--calib-images", str(images)] for t in ("0.8", "0.9")}
    procs = {t: subprocess.Popen(c, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for t, c in cmds.items()}
    lock = out / LOCK_NAME
    deadline = time.monotonic() + 240
    holder_pid = None
    while time.monotonic() < deadline and holder_pid is None:
        text = lock.read_text() if lock.exists() else ""
        if text.startswith("pid "):
            holder_pid = int(text.split()[1])
        elif all(p.poll() is not None for p in procs.values()):
            break
        time.sleep(0.01)
    assert holder_pid in {p.pid for p in procs.values()}
    os.kill(holder_pid, signal.SIGSTOP)
    try:
        other = next(p for p in procs.values() if p.pid != holder_pid)
        other.wait(timeout=240)
    finally:
        os.kill(holder_pid, signal.SIGCONT)
    results = {t: (p.wait(timeout=300), *p.communicate()) for t, p in procs.items()}
    ok = [t for t, (code, _o, _e) in results.items() if code == 0]
    assert len(ok) == 1, results
    for t, (code, _out, err) in results.items():
        if code != 0:
            assert code == 2 and "Traceback" not in err
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and f"is in use by another algm-export run (pid {holder_pid} " in errors[0], err
    man = load_manifest(out, verify=True)                      # every listed file matches its sha256
    assert [s["threshold"] for s in man["settings"]] == [float(ok[0])]
    for e in [man["baseline"]] + man["settings"]:
        assert sha256_file(out / e["onnx"]) == e["sha256"]
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) == sorted(
        ["manifest.json", "baseline.onnx", man["settings"][0]["onnx"]])


def test_save_manifest_refuses_what_readers_would_refuse(folder):
    man = load_manifest(folder)
    man["settings"][0]["name"] = "../x"
    with pytest.raises(ArtifactError, match="settings\\[0\\].name"):
        save_manifest(folder, man)
