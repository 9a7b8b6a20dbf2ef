"""Engine building with TensorRT-RTX ahead of time (no GPU needed): `algm_export.tasks.build`.

The export folders are tiny stand-ins (tests/_helpers/trt_build.py) with the real
contract: input `image`, outputs `logits` / `merge_stats`, `algm` custom nodes with
model-local function bodies. Engines are built for SM86 and cannot be deserialised here
(no GPU); TensorRT-RTX's engine-validity check still tells a well-formed engine from garbage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import algm_export

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (pip install tensorrt-rtx-cu13) is not installed")

from algm_export.tasks.build import EngineBuildError, build_engines, engine_filename, find_engine_record  # noqa: E402
from algm_export.core.errors import AlgmError, BackendUnavailable, ConfigError  # noqa: E402
from algm_export.core.manifest import load_manifest, sha256_file  # noqa: E402
from algm_export.runtimes.tensorrt.loader import make_logger, rtx_env, rtx_link_dir  # noqa: E402

from _helpers.trt_build import make_export, make_model, replace_onnx

TESTS = Path(__file__).resolve().parent
RTX = dict(backend="tensorrt-rtx", compute_capabilities=[86], progress=False)
RECORD_KEYS = {"setting", "file", "sha256", "bytes", "backend", "backend_version", "precision", "fp16_mode",
               "strongly_typed", "tf32", "onnx", "onnx_sha256", "input", "profile", "compute_capabilities", "device",
               "plugin_library", "plugin_sha256", "plugin_creators", "functions", "build_seconds",
               "parse_seconds", "wall_seconds", "layers", "io", "built"}


def _well_formed(path: Path) -> bool:
    """TensorRT-RTX's engine-validity diagnostics flag MALFORMED_ENGINE for a bad plan, even without a GPU."""
    runtime = trt.Runtime(make_logger(trt, "none"))
    _validity, diag = runtime.get_engine_validity(path.read_bytes())
    return not int(diag) & int(trt.EngineInvalidityDiagnostics.MALFORMED_ENGINE)


def _engine_files(d: Path) -> list[str]:
    return sorted(p.name for p in (d / "engines").iterdir())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = make_export(tmp_path_factory.mktemp("export"))
    t = time.perf_counter()
    fp32 = build_engines(d, precision="fp32", **RTX)
    fp16 = build_engines(d, precision="fp16", batch=(1, 2, 4), **RTX)
    print(f"\n6 engines built in {time.perf_counter() - t:.1f}s: "
          + ", ".join(f"{r['setting']}.{r['precision']} {r['build_seconds']:.2f}s (wall {r['wall_seconds']:.2f}s)"
                      for r in fp32 + fp16))
    return d, fp32, fp16


@pytest.mark.slow
def test_fp32_engines_and_manifest(built):
    d, recs, _ = built
    assert [r["setting"] for r in recs] == ["baseline", "t0.900", "t0.950"]
    data = load_manifest(d, verify=True)  # every listed file exists with its sha256
    for r in recs:
        assert set(r) >= RECORD_KEYS
        assert r in data["engines"]
        path = d / r["file"]
        assert r["file"] == engine_filename(r["setting"], "fp32", False) == f"engines/{r['setting']}.fp32.engine"
        assert path.stat().st_size == r["bytes"] > 0 and sha256_file(path) == r["sha256"]
        assert _well_formed(path)
        assert r["backend"] == "tensorrt-rtx" and r["backend_version"] == trt.__version__
        assert r["precision"] == "fp32" and r["fp16_mode"] is None and r["strongly_typed"] is True
        assert r["tf32"] is False
        assert r["profile"] == [1, 1, 8] and r["compute_capabilities"] == [86] and r["input"] == "image"
        assert r["plugin_library"] is None and r["plugin_sha256"] is None and r["layers"]["plugin_layers"] == []
        assert r["onnx"] == f"{r['setting']}.onnx" and r["build_seconds"] > 0
        assert r["io"]["inputs"]["image"]["shape"] == [-1, 3, 16, 16]
        assert r["io"]["outputs"]["logits"] == {"dtype": "float", "shape": [-1, 3, 16, 16]}
        assert r["layers"]["count"] > 0 and r["layers"]["half_outputs"] == 0
    base, s1, _ = recs
    assert base["layers"]["algm_nodes"] == 0 and base["functions"] == "none"
    # The parser inlined the model-local algm functions: no plugin layers, every node accounted for.
    assert s1["functions"] == "parser"
    assert s1["layers"]["algm_ops"] == {"AlgmClap": 1, "AlgmGbm": 1} and s1["layers"]["algm_plugin_layers"] == 0
    assert s1["io"]["outputs"]["merge_stats"] == {"dtype": "int32", "shape": [-1, 2, 2]}
    assert find_engine_record(data, "t0.900", "fp32") == s1


@pytest.mark.slow
def test_fp16_engines(built):
    d, fp32, recs = built
    data = load_manifest(d, verify=True)
    assert len(data["engines"]) == 6  # fp32 and fp16 records live side by side
    for r in recs:
        assert r["file"] == f"engines/{r['setting']}.fp16.engine" and _well_formed(d / r["file"])
        assert r["onnx"] == f"{r['setting']}.fp16.onnx" and r["fp16_mode"] == "onnx"
        assert r["profile"] == [1, 2, 4]
        assert r["layers"]["half_outputs"] > 0  # the precision came from the fp16 graph
        assert r["io"]["inputs"]["image"]["dtype"] == "float"  # the interface stays float32
    assert {r["sha256"] for r in recs}.isdisjoint({r["sha256"] for r in fp32})


def test_well_formed_check_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"not an engine" * 100)
    assert not _well_formed(bad)


def test_fp16_without_fp16_onnx_asks_for_reexport(tmp_path):
    d = make_export(tmp_path, thresholds=(0.9,), fp16=False)
    before = (d / "manifest.json").read_text()
    with pytest.raises(ConfigError, match="re-export with --precision fp16"):
        build_engines(d, precision="fp16", **RTX)
    assert (d / "manifest.json").read_text() == before


def test_bad_arguments(tmp_path):
    d = make_export(tmp_path, thresholds=(0.9,), fp16=False)
    with pytest.raises(ConfigError, match="precision"):
        build_engines(d, precision="int8", **RTX)
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        build_engines(d, batch=(4, 1, 8), **RTX)
    with pytest.raises(ConfigError, match="no setting t0.500"):
        build_engines(d, settings=["t0.500"], **RTX)
    with pytest.raises(ConfigError, match="cannot target compute capability 90"):
        build_engines(d, backend="tensorrt-rtx", compute_capabilities=[90], progress=False, settings=["baseline"])
    with pytest.raises(BackendUnavailable, match="does not exist"):
        build_engines(d, plugins=tmp_path / "nope.so", **RTX)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
            build_engines(d, backend="tensorrt", progress=False)
    else:
        with pytest.raises(ConfigError, match="TensorRT-RTX only"):
            build_engines(d, backend="tensorrt", compute_capabilities=[86], progress=False)
    assert not list((d / "engines").glob("*.engine"))


@pytest.mark.slow
def test_rebuild_replaces_records(tmp_path):
    d = make_export(tmp_path, thresholds=(0.9,))
    first = build_engines(d, **RTX)
    build_engines(d, precision="fp16", settings=["t0.900"], **RTX)
    second = build_engines(d, batch=(1, 4, 8), **RTX)
    data = load_manifest(d, verify=True)
    keys = [(r["setting"], r["backend"], r["precision"], bool(r["plugin_library"])) for r in data["engines"]]
    assert len(keys) == len(set(keys)) == 3
    for old, new in zip(first, second):
        assert new in data["engines"] and old not in data["engines"]
        assert new["profile"] == [1, 4, 8] and new["file"] == old["file"]
    assert find_engine_record(data, "t0.900", "fp16")["profile"] == [1, 1, 8]
    assert _engine_files(d) == ["baseline.fp32.engine", "t0.900.fp16.engine", "t0.900.fp32.engine"]


@pytest.mark.slow
def test_worker_killed_mid_write_keeps_previous_state(tmp_path, monkeypatch):
    d = make_export(tmp_path, thresholds=(0.9, 0.95), fp16=False)
    old = {r["setting"]: r for r in build_engines(d, **RTX)}
    monkeypatch.setenv("ALGM_EXPORT_WORKER_FAULT", "kill-mid-write:t0.900")
    with pytest.raises(EngineBuildError, match=r"(?s)worker for t0.900 was killed by SIGKILL.*Last lines"):
        build_engines(d, batch=(1, 2, 2), **RTX)
    data = load_manifest(d, verify=True)  # valid, and every file matches its record
    recs = {r["setting"]: r for r in data["engines"]}
    assert recs["baseline"]["profile"] == [1, 2, 2]            # rebuilt before the crash
    assert recs["t0.900"] == old["t0.900"] and recs["t0.950"] == old["t0.950"]  # untouched
    assert _engine_files(d) == ["baseline.fp32.engine", "t0.900.fp32.engine", "t0.950.fp32.engine"]
    assert not list((d / "engines").glob(".*.partial"))       # the half-written engine is gone

    d2 = make_export(tmp_path / "fresh", thresholds=(0.9,), fp16=False)
    with pytest.raises(EngineBuildError, match="SIGKILL"):
        build_engines(d2, **RTX)
    data = load_manifest(d2, verify=True)
    assert [r["setting"] for r in data["engines"]] == ["baseline"]
    assert _engine_files(d2) == ["baseline.fp32.engine"]


@pytest.mark.slow
def test_parent_killed_mid_build_leaves_valid_manifest(tmp_path):
    d = make_export(tmp_path, thresholds=(0.9, 0.95, 0.97), fp16=False)
    script = (f"from algm_export.tasks.build import build_engines; "
              f"build_engines({str(d)!r}, backend='tensorrt-rtx', compute_capabilities=[86], progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            # one engine recorded and the next one's worker started (its job folder exists)
            recorded = json.loads((d / "manifest.json").read_text()).get("engines")
            if recorded and list((d / "engines").glob(".worker-*")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the build finished before it could be interrupted"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the parent and its worker, mid-build
        except ProcessLookupError:
            pass
        proc.wait()
        for _ in range(200):  # until the worker has exited too
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    data = load_manifest(d, verify=True)
    assert 1 <= len(data["engines"]) < 4
    assert not [p for p in (d / "engines").glob("*.engine") if p.name not in {Path(r["file"]).name for r in data["engines"]}]
    assert list((d / "engines").glob(".worker-*"))  # the killed worker's job folder is left behind
    build_engines(d, **RTX)  # a new build completes and removes the killed build's temporary files
    assert len(load_manifest(d, verify=True)["engines"]) == 4
    assert not list((d / "engines").glob(".*.partial")) and not list((d / "engines").glob(".worker-*"))


def test_unknown_custom_op_is_a_clear_error(tmp_path):
    d = make_export(tmp_path, thresholds=(0.9,), fp16=False)
    replace_onnx(d, "t0.900", threshold=0.9, unknown_op="AlgmMystery")
    with pytest.raises(EngineBuildError) as e:
        build_engines(d, **RTX)
    msg = str(e.value)
    assert "AlgmMystery" in msg and "no function body" in msg and "--plugins" in msg
    assert "Traceback" not in msg
    assert [r["setting"] for r in load_manifest(d, verify=True)["engines"]] == ["baseline"]


# ----------------------------------------------------------------------------------- plugins

_PLUGIN_WORKER = textwrap.dedent("""
    import json, sys, types
    pkg = types.ModuleType("algm_export"); pkg.__path__ = [{pkg!r}]; sys.modules["algm_export"] = pkg
    sys.path.insert(0, {tests!r})
    import tensorrt_rtx as trt
    from _helpers.trt_build import register_python_algm_plugins
    keep = register_python_algm_plugins(trt, {ops!r})
    from algm_export.runtimes.tensorrt.worker import main
    sys.exit(main([{job!r}, {result!r}]))
""")


def _plugin_worker(tmp_path, onnx_path, ops, env) -> tuple[int, dict | None]:
    """The build worker, with build-only Python plugins registered for `ops` first."""
    job, result = tmp_path / "job.json", tmp_path / "result.json"
    result.unlink(missing_ok=True)
    job.write_text(json.dumps({"name": "t", "onnx": str(onnx_path), "engine": str(tmp_path / "t.engine"),
                               "backend": "tensorrt-rtx", "profile": [1, 1, 4], "compute_capabilities": [86],
                               "registered_plugins": True}))
    code = _PLUGIN_WORKER.format(pkg=str(Path(algm_export.__file__).parent), tests=str(TESTS), ops=list(ops), job=str(job), result=str(result))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, (json.loads(result.read_text()) if result.exists() else None)


def _env_without_link() -> dict:
    env = dict(os.environ)
    link = str(rtx_link_dir())
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep)
                                             if p and p != link)
    return env


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_plugin_path_makes_every_algm_node_a_plugin_layer(tmp_path, fp16):
    """Function bodies are removed and both algm nodes become PLUGIN_V3 layers (Python stand-in plugins)."""
    onnx_path = make_model(tmp_path / "m.onnx", fp16=fp16)
    rc, res = _plugin_worker(tmp_path, onnx_path, ["AlgmClap", "AlgmGbm"], rtx_env())
    assert rc == 0 and res["ok"], res
    assert res["functions"] == "plugins" and res["functions_removed"] == 2
    assert res["plugin_creators"] == ["algm::AlgmClap/1", "algm::AlgmGbm/1"]
    layers = res["layers"]
    assert layers["algm_plugin_layers"] == layers["algm_nodes"] == 2
    assert {(p["layer"], p["type"], p["plugin"]) for p in layers["plugin_layers"]} == {
        ("algm_clap", "PLUGIN_V3", "algm::AlgmClap/1"), ("algm_gbm", "PLUGIN_V3", "algm::AlgmGbm/1")}
    assert (tmp_path / "t.engine").stat().st_size == res["engine_bytes"] > 0


def test_plugin_path_missing_op_is_a_clear_error(tmp_path):
    rc, res = _plugin_worker(tmp_path, make_model(tmp_path / "m.onnx"), ["AlgmClap"], rtx_env())
    assert rc == 2 and res["error_type"] == "BackendUnavailable"
    assert "does not register AlgmGbm" in res["error"]


def test_rtx_parser_quirk_aborts_without_the_link(tmp_path):
    """The TensorRT-RTX 1.7 parser dlopens libtensorrt_rtx.so once a node becomes a plugin
    layer: without `rtx_env()` the process aborts (with it, the plugin tests above pass)."""
    onnx_path = make_model(tmp_path / "m.onnx")
    rc, res = _plugin_worker(tmp_path, onnx_path, ["AlgmClap", "AlgmGbm"], _env_without_link())
    if rc == 0:
        pytest.skip(f"TensorRT-RTX {trt.__version__} no longer aborts without the link (quirk fixed)")
    assert rc == -signal.SIGABRT and res is None




@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plugin_library_build(tmp_path, plugin_library, precision):
    """With the real plugin library: every algm node is a PLUGIN_V3 layer of the engine."""
    d = make_export(tmp_path, thresholds=(0.9,))
    recs = build_engines(d, plugins=plugin_library, precision=precision, **RTX)
    data = load_manifest(d, verify=True)
    s = find_engine_record(data, "t0.900", precision, plugins=True)
    assert s["file"] == f"engines/t0.900.{precision}.plugins.engine" and s in recs
    # the library is copied into the folder (engines travel with it) and named relative to it
    assert s["plugin_library"].startswith("engines/plugins/") and s["plugin_sha256"] == sha256_file(plugin_library)
    assert sha256_file(d / s["plugin_library"]) == s["plugin_sha256"]
    assert {"algm::AlgmClap/1", "algm::AlgmGbm/1"} <= set(s["plugin_creators"])
    assert s["functions"] == "plugins" and s["layers"]["algm_plugin_layers"] == s["layers"]["algm_nodes"] == 2
    assert _well_formed(d / s["file"])
    # Plugin and function-body engines of a setting are separate records and files.
    build_engines(d, precision=precision, settings=["t0.900"], **RTX)
    data = load_manifest(d, verify=True)
    assert find_engine_record(data, "t0.900", precision, plugins=False)["functions"] == "parser"
    assert find_engine_record(data, "t0.900", precision, plugins=True) == s
