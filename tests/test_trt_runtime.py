"""Backend selection, environment report, engine checks and the GPU runner.

Without a CUDA GPU only the checks run: the runner reports the missing GPU plainly. With one,
an engine is built for it and its outputs are compared with ONNX Runtime on the same ONNX.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from algm_export.core.errors import ArtifactError, BackendUnavailable, ConfigError, InputError
from algm_export.runtimes.tensorrt import loader

HAS_RTX = loader.is_available("tensorrt-rtx")
HAS_TRT = loader.is_available("tensorrt")
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="TensorRT-RTX (tensorrt_rtx) is not installed")


def _gpu() -> dict:
    return loader.cuda_device()


def test_backend_names_and_selection():
    assert loader.normalize_backend("RTX") == "tensorrt-rtx"
    assert loader.normalize_backend("tensorrt_rtx") == "tensorrt-rtx"
    assert loader.normalize_backend("trt") == "tensorrt"
    with pytest.raises(ConfigError, match="unknown TensorRT backend"):
        loader.normalize_backend("onnxruntime")
    if HAS_TRT or HAS_RTX:
        assert loader.resolve_backend(None) == ("tensorrt" if HAS_TRT else "tensorrt-rtx")
    if not HAS_TRT:
        with pytest.raises(BackendUnavailable, match="pip install tensorrt"):
            loader.resolve_backend("tensorrt")


def test_describe_environment():
    env = loader.describe_environment()
    assert set(env) >= {"tensorrt", "tensorrt-rtx", "default_backend", "cuda"}
    assert env["tensorrt-rtx"]["installed"] == HAS_RTX
    if HAS_RTX:
        import tensorrt_rtx

        assert env["tensorrt-rtx"]["version"] == tensorrt_rtx.__version__
    assert isinstance(env["cuda"]["available"], bool)
    if env["cuda"]["available"]:
        assert isinstance(env["cuda"]["compute_capability"], int)
    else:
        assert env["cuda"]["reason"]


@needs_rtx
def test_rtx_env_links_the_unversioned_library(tmp_path, monkeypatch):
    monkeypatch.setenv("ALGM_EXPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere/else")
    env = loader.rtx_env()
    first, *rest = env["LD_LIBRARY_PATH"].split(os.pathsep)
    link = Path(first) / "libtensorrt_rtx.so"
    assert link.exists() and link.resolve() == loader.find_rtx_library().resolve()
    assert rest == ["/somewhere/else"]
    assert loader.rtx_env(env)["LD_LIBRARY_PATH"] == env["LD_LIBRARY_PATH"]  # idempotent


def test_engine_record_checks():
    rec = {"file": "engines/t.fp32.engine", "backend": "tensorrt-rtx", "backend_version": "1.7.1.116",
           "compute_capabilities": [86, 89]}
    gpu = {"available": True, "name": "RTX 4090", "compute_capability": 89}
    loader.check_engine_record(rec, "tensorrt-rtx", "1.7.1.116", gpu)  # fine
    loader.check_engine_record(rec, "tensorrt-rtx", "1.7.1.116", {"available": False})
    with pytest.raises(ArtifactError, match=r"built with TensorRT-RTX 1.7.1.116, but 1.8.0.1 is installed"):
        loader.check_engine_record(rec, "tensorrt-rtx", "1.8.0.1", gpu)
    with pytest.raises(ArtifactError, match=r"SM86, SM89, but this GPU \(RTX 5090\) is SM120; rebuild with --compute-capability 120"):
        loader.check_engine_record(rec, "tensorrt-rtx", "1.7.1.116",
                                   {"available": True, "name": "RTX 5090", "compute_capability": 120})
    with pytest.raises(ArtifactError, match="built with TensorRT-RTX; load it with backend 'tensorrt-rtx'"):
        loader.check_engine_record(rec, "tensorrt", "10.9.0", gpu)
    with pytest.raises(BackendUnavailable, match=r"TensorRT-RTX does not run on this GPU \(H100, SM90"):
        loader.check_engine_record(rec, "tensorrt-rtx", "1.7.1.116",
                                   {"available": True, "name": "H100", "compute_capability": 90}, [80, 86, 89, 120])
    full = {"file": "engines/t.fp32.engine", "backend": "tensorrt", "backend_version": "10.9.0",
            "compute_capabilities": [90]}
    with pytest.raises(ArtifactError, match="rebuild the engine on this GPU"):
        loader.check_engine_record(full, "tensorrt", "10.9.0", gpu)


@needs_rtx
def test_deserialising_garbage_says_malformed():
    import tensorrt_rtx as trt

    logger = loader.make_logger(trt, "none")
    runtime = trt.Runtime(logger)
    with pytest.raises(ArtifactError, match="could not load bad.engine: .*malformed engine"):
        loader.deserialize_engine(trt, runtime, b"garbage" * 100, "bad.engine", logger)


@needs_rtx
def test_plugin_library_must_exist(tmp_path):
    import tensorrt_rtx as trt

    with pytest.raises(BackendUnavailable, match="does not exist"):
        loader.load_plugin_library(trt, tmp_path / "libnope.so")
    bad = tmp_path / "libbad.so"
    bad.write_bytes(b"\x7fELF not really")
    with pytest.raises(BackendUnavailable, match="refused"):
        loader.load_plugin_library(trt, bad)


@pytest.mark.skipif(_gpu().get("available"), reason="a CUDA GPU is present")
def test_runner_without_gpu_says_so(tmp_path):
    from algm_export.runtimes.tensorrt.runner import TrtRunner

    if not (HAS_RTX or HAS_TRT):
        pytest.skip("no TensorRT backend installed")
    with pytest.raises(BackendUnavailable, match="no CUDA GPU / TensorRT runtime present"):
        TrtRunner(tmp_path / "x.engine")


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu().get("available"), reason="needs a CUDA GPU (engines only build here)")
def test_runner_matches_onnxruntime_on_gpu(tmp_path):
    import onnxruntime as ort
    import torch

    from algm_export.tasks.build import build_engines
    from algm_export.runtimes.tensorrt.runner import TrtRunner

    from _helpers.trt_build import make_export

    cc = _gpu()["compute_capability"]
    backend = loader.resolve_backend(None)
    if backend == "tensorrt-rtx" and cc not in (80, 86, 89, 120):
        pytest.skip(f"TensorRT-RTX does not run on SM{cc}")
    d = make_export(tmp_path, thresholds=(0.9,), fp16=False)
    build_engines(d, backend=backend, compute_capabilities=[cc] if backend == "tensorrt-rtx" else None,
                  batch=(1, 2, 4), progress=False)
    rng = np.random.default_rng(0)
    for setting in ("baseline", "t0.900"):
        runner = TrtRunner.from_manifest(d, setting=setting, backend=backend)
        sess = ort.InferenceSession(str(d / f"{setting}.onnx"), providers=["CPUExecutionProvider"])
        for b in (1, 3):
            img = rng.random((b, 3, 16, 16), dtype=np.float32)
            want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": img})))
            got = runner.infer(torch.from_numpy(img).cuda())
            torch.cuda.synchronize()
            assert set(got) == set(want)
            np.testing.assert_allclose(got["logits"].cpu().numpy(), want["logits"], rtol=1e-3, atol=1e-3)
            if "merge_stats" in want:
                assert got["merge_stats"].dtype == torch.int32
                np.testing.assert_array_equal(got["merge_stats"].cpu().numpy(), want["merge_stats"])
        with pytest.raises(InputError, match="outside the engine's profile"):
            runner.infer(torch.zeros(5, 3, 16, 16, device="cuda"))
