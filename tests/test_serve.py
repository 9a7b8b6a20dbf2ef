"""Serving on Triton: `algm-export serve` (PyTriton, a real server on loopback ports the tests pick)
and `algm-export triton-repo` (configs checked as Triton's ModelConfig).

The session's export folders (`conftest.dynamic_folders`: a 6-block ViT-Ti Segmenter at 128 px, 21
classes, layers 1 and 5): `mixed` (baseline, static 0.88, dynamic 0.88) and `tin` (baseline and one
threshold-input dynamic file for 0.80 and 0.88). The served answers are compared with ONNX Runtime on the same files.
Tests that need a server skip when the serving extra is not installed (`algm-export[serve]`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from algm_export.artifacts import ExportFolder, sha256_file
from algm_export.cli import main
from algm_export.core.errors import AlgmError, ConfigError
from algm_export.runtimes.registry import make_runner
from algm_export.runtimes.triton.names import triton_name, triton_names

ROOT = Path(__file__).resolve().parents[1]


def serving_missing() -> str:
    """'' when a server can start here, else why not."""
    from algm_export.runtimes.triton.server import check_serving_available

    try:
        check_serving_available()
    except AlgmError as e:
        return str(e)
    return ""


def tritonclient_missing() -> str:
    try:
        from tritonclient.grpc import model_config_pb2  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"tritonclient is not installed ({e}); pip install 'algm-export[serve]'"
    return ""


needs_server = pytest.mark.skipif(bool(serving_missing()), reason=serving_missing() or "-")
needs_tritonclient = pytest.mark.skipif(bool(tritonclient_missing()), reason=tritonclient_missing() or "-")


@pytest.fixture(scope="module")
def folders(dynamic_folders):
    f = dynamic_folders
    xs = np.concatenate([x.numpy() for _, x in ExportFolder.load(f["mixed"]).inputs(f["images"], model=f["model"])])
    return {**f, "image_dir": f["images"], "images": xs}


def reference(folder, entry: str, x, threshold=None):
    with make_runner("onnxruntime", ExportFolder.load(folder).entry(entry)) as r:
        return r.infer(x, **({} if threshold is None else {"threshold": threshold}))


def test_a_dynamic_entry_on_a_cpu_answers_a_triton_batch_one_image_per_forward():
    """`ServedModel.per_image`: the runner sees images one at a time, the answers keep the requests'
    order and each request gets its own rows (thresholds per image too); without it one forward."""
    from algm_export.runtimes.base import RunOutput
    from algm_export.runtimes.triton.server import ServedModel, TensorSpec, make_infer_fn

    class Runner:
        def __init__(self):
            self.batches = []

        def infer(self, x, threshold=None):
            self.batches.append((x.shape[0], None if threshold is None else threshold.tolist()))
            return RunOutput(logits=x[:, :1] * 2, merge_stats=np.full((x.shape[0], 2, 2), x.shape[0], np.int32))

    spec = [TensorSpec("image", np.float32, (3, 2, 2)), TensorSpec("threshold", np.float32, (1,), optional=True)]
    outs = [TensorSpec("logits", np.float32, (1, 2, 2)), TensorSpec("merge_stats", np.int32, (2, 2))]
    xs = [np.random.default_rng(k).normal(size=(n, 3, 2, 2)).astype(np.float32) for k, n in enumerate((2, 1))]
    reqs = [{"image": xs[0], "threshold": np.array([[0.5], [0.75]], np.float32)}, {"image": xs[1]}]
    for per_image, seen, stats in ((True, [(1, [0.5]), (1, [0.75]), (1, [0.25])], 1),
                                   (False, [(3, [0.5, 0.75, 0.25])], 3)):
        r = Runner()
        m = ServedModel("t", "t", "onnxruntime", spec, outs, 1, default_threshold=0.25, per_image=per_image)
        ans = make_infer_fn(r, m)(reqs)
        assert r.batches == seen
        assert [a["logits"].shape[0] for a in ans] == [2, 1]
        np.testing.assert_array_equal(ans[0]["logits"], xs[0][:, :1] * 2)
        np.testing.assert_array_equal(ans[1]["logits"], xs[1][:, :1] * 2)
        assert (ans[0]["merge_stats"] == stats).all() and (ans[1]["merge_stats"] == stats).all()


def test_a_request_gets_the_outputs_it_asks_for_and_labels_without_logits():
    """Requests that name their outputs get those only; `labels` is each pixel's class (the first of
    equal maxima) in the declared dtype; logits asked by nobody in a batch are not kept."""
    from algm_export.runtimes.base import RunOutput
    from algm_export.runtimes.triton.server import ServedModel, TensorSpec, labels_of, make_infer_fn

    logits = np.random.default_rng(0).normal(size=(3, 4, 2, 2)).astype(np.float32)
    logits[0, :, 0, 0] = 1.0                          # a tie: the first class wins

    class Runner:
        def infer(self, x, threshold=None):
            n = x.shape[0]
            return RunOutput(logits=logits[:n] if n == 3 else logits[int(x[0, 0, 0, 0]):][:1],
                             merge_stats=np.ones((n, 2, 2), np.int32))

    class Req(dict):
        def __init__(self, data, names):
            super().__init__(data)
            self.requested_output_names = names

    spec = [TensorSpec("image", np.float32, (3, 2, 2))]
    outs = [TensorSpec("logits", np.float32, (4, 2, 2)), TensorSpec("labels", np.uint8, (2, 2)),
            TensorSpec("merge_stats", np.int32, (2, 2))]
    xs = np.zeros((3, 3, 2, 2), np.float32)
    xs[:, 0, 0, 0] = np.arange(3)                     # which row of `logits` the per-image runner answers
    want = logits.argmax(1)
    assert want[0, 0, 0] == 0 and (labels_of(logits) == want).all() and labels_of(logits).dtype == np.uint8
    for per_image in (False, True):
        m = ServedModel("t", "t", "onnxruntime", spec, outs, 1, per_image=per_image)
        infer = make_infer_fn(Runner(), m)
        ans = infer([Req({"image": xs[:2]}, ["labels"]), Req({"image": xs[2:]}, ["labels", "merge_stats"])])
        assert [set(a) for a in ans] == [{"labels"}, {"labels", "merge_stats"}]
        np.testing.assert_array_equal(np.concatenate([a["labels"] for a in ans]), want)
        assert ans[0]["labels"].dtype == np.uint8
        ans = infer([Req({"image": xs[:1]}, None), Req({"image": xs[1:]}, ["logits"])])
        assert [set(a) for a in ans] == [{"logits", "labels", "merge_stats"}, {"logits"}]
        np.testing.assert_array_equal(np.concatenate([a["logits"] for a in ans]), logits)


# --------------------------------------------------------------------------- names

def test_triton_names_keep_what_triton_accepts_and_replace_the_rest():
    assert triton_name("t0.880_l1-5_dyn") == "t0.880_l1-5_dyn"
    assert triton_name("a b/c:d") == "a_b_c_d"
    assert triton_name(".hidden") == "_hidden" and triton_name("") == "_"
    assert triton_names(["a/b", "a:b", "a_b"]) == {"a/b": "a_b", "a:b": "a_b_2", "a_b": "a_b_3"}


# --------------------------------------------------------------------------- triton-repo

def _parse_config(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


def _onnx_shapes(path):
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph

    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]

    return {v.name: dims(v) for v in list(g.input) + list(g.output)}


@pytest.mark.slow
@needs_tritonclient
def test_triton_repo_onnx_configs_parse_as_model_config_and_match_the_files(folders, tmp_path, capsys):
    for kind in ("mixed", "tin"):
        repo = tmp_path / kind
        assert main(["triton-repo", str(folders[kind]), "--out", str(repo), "--max-batch", "4",
                     "--instances", "2", "--device", "cpu"]) == 0
        folder = ExportFolder.load(folders[kind])
        names = sorted(p.name for p in (repo / "models").iterdir())
        assert names == sorted(e.name for e in folder.entries)
        for e in folder.entries:
            cfg = _parse_config(repo / "models" / e.name / "config.pbtxt")
            model_file = repo / "models" / e.name / "1" / "model.onnx"
            assert cfg.name == e.name and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 4
            assert cfg.default_model_filename == "model.onnx"
            assert sha256_file(model_file) == e.raw["sha256"]
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
            assert cfg.instance_group[0].count == 2 and cfg.instance_group[0].kind == 2  # KIND_CPU
            shapes = _onnx_shapes(model_file)
            got = {t.name: [-1] + list(t.reshape.shape if t.HasField("reshape") else t.dims)
                   for t in list(cfg.input) + list(cfg.output)}
            assert got == shapes, e.name
            types = {t.name: t.data_type for t in list(cfg.input) + list(cfg.output)}
            assert types["image"] == 11 and types["logits"] == 11  # TYPE_FP32
            if not e.is_baseline:
                assert types["merge_stats"] == 8  # TYPE_INT32
            if e.takes_threshold:
                thr = next(t for t in cfg.input if t.name == "threshold")
                assert list(thr.dims) == [1] and thr.HasField("reshape") and list(thr.reshape.shape) == []
        readme = (repo / "README.md").read_text()
        assert "--model-repository=/repo/models" in readme and "onnxruntime_onnx" in readme
    capsys.readouterr()
    # an earlier repository is replaced only with --force; other folders are never touched
    assert main(["triton-repo", str(folders["tin"]), "--out", str(tmp_path / "tin")]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["triton-repo", str(folders["tin"]), "--out", str(tmp_path / "tin"), "--force"]) == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("mine")
    assert main(["triton-repo", str(folders["tin"]), "--out", str(tmp_path / "other"), "--force"]) == 2
    assert (tmp_path / "other" / "x").read_text() == "mine"
    assert main(["triton-repo", str(folders["tin"]), "--out", str(folders["tin"] / "repo")]) == 2
    assert main(["triton-repo", str(folders["tin"]), "--out", str(tmp_path / "r"), "--backend", "tensorrt-rtx"]) == 2
    assert "TensorRT-RTX" in capsys.readouterr().err


@pytest.mark.slow
@needs_tritonclient
def test_triton_repo_engines_as_tensorrt_plan_per_compute_capability(folders, tmp_path):
    """Engine records (fake engine bytes: triton-repo copies engines, it does not parse them) for two
    compute capabilities, built with the plugin library: cc_model_filenames, the library copied,
    the README's server command; the io comes from the build record."""
    d = tmp_path / "f"
    shutil.copytree(folders["mixed"], d)
    folder = ExportFolder.load(d)
    (d / "engines").mkdir()
    lib = d / "engines" / "libalgm_plugins.so"
    lib.write_bytes(b"plugin library bytes")
    recs = []
    for e in folder.entries:
        for cc in (86, 89):
            f = d / "engines" / f"{e.name}.sm{cc}.engine"
            f.write_bytes(os.urandom(64))
            io = {"inputs": {"image": {"dtype": "float", "shape": [-1, 3, 128, 128]}},
                  "outputs": {"logits": {"dtype": "float", "shape": [-1, 21, 128, 128]}}}
            if not e.is_baseline:
                io["outputs"]["merge_stats"] = {"dtype": "int32", "shape": [-1, 2, 2]}
            recs.append({"setting": e.name, "file": f"engines/{f.name}", "sha256": sha256_file(f),
                         "backend": "tensorrt", "backend_version": "10.13.0", "precision": "fp32",
                         "profile": [1, 4, 8], "compute_capabilities": [cc],
                         "plugin_library": "engines/libalgm_plugins.so", "plugin_sha256": sha256_file(lib), "io": io})
    folder.data["engines"] = recs
    folder.save()
    repo = tmp_path / "repo"
    assert main(["triton-repo", str(d), "--out", str(repo), "--backend", "tensorrt"]) == 0
    for e in folder.entries:
        cfg = _parse_config(repo / "models" / e.name / "config.pbtxt")
        assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 8
        assert dict(cfg.cc_model_filenames) == {"8.6": "model_sm86.plan", "8.9": "model_sm89.plan"}
        assert cfg.instance_group[0].kind == 1  # KIND_GPU
        for cc in (86, 89):
            assert sha256_file(repo / "models" / e.name / "1" / f"model_sm{cc}.plan") == \
                sha256_file(d / "engines" / f"{e.name}.sm{cc}.engine")
        assert [t.name for t in cfg.output] == (["logits"] if e.is_baseline else ["logits", "merge_stats"])
    assert (repo / "plugins" / "libalgm_plugins.so").read_bytes() == b"plugin library bytes"
    readme = (repo / "README.md").read_text()
    assert "--backend-config=tensorrt,plugins=/repo/plugins/libalgm_plugins.so" in readme
    assert "LD_PRELOAD=/repo/plugins/libalgm_plugins.so" in readme and "TensorRT 10.13.0" in readme
    # a larger batch than the engines' profile is refused
    assert main(["triton-repo", str(d), "--out", str(tmp_path / "r2"), "--backend", "tensorrt",
                 "--max-batch", "16"]) == 2
    # a changed engine is refused before it is copied (sha256 through the artifact layer)
    (d / "engines" / "baseline.sm86.engine").write_bytes(b"tampered")
    assert main(["triton-repo", str(d), "--out", str(tmp_path / "r3"), "--backend", "tensorrt"]) == 2
    assert not (tmp_path / "r3").exists()


def test_config_text_refuses_what_triton_would():
    if tritonclient_missing():
        pytest.skip(tritonclient_missing())
    from algm_export.tasks.triton_repo import Tensor, config_text, model_config

    good = model_config("m", "onnxruntime_onnx", [Tensor("image", "TYPE_FP32", [-1, 3, 8, 8])],
                        [Tensor("logits", "TYPE_FP32", [-1, 2, 8, 8])], 4, 100, 1, None, "model.onnx")
    assert "max_batch_size: 4" in config_text(good)
    with pytest.raises(ConfigError, match="not a Triton ModelConfig"):
        config_text({**good, "data_type_typo": 1})
    with pytest.raises(ConfigError, match="dims"):
        config_text({**good, "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": [0, 3]}]})


# --------------------------------------------------------------------------- serve

def test_serving_needs_numpy_1_and_says_so(monkeypatch):
    """PyTriton's Python backend answers empty tensors with numpy 2: refuse to start, naming the fix."""
    from algm_export.core.errors import BackendUnavailable
    from algm_export.runtimes.triton import server as srv

    monkeypatch.setattr(srv.np, "__version__", "2.4.6")
    with pytest.raises(BackendUnavailable, match=r"numpy < 2|pytriton and tritonclient") as e:
        srv.check_serving_available()
    assert "algm-export[serve]" in str(e.value)


@pytest.fixture(scope="module")
def server(folders):
    if serving_missing():
        pytest.skip(serving_missing())
    from algm_export.runtimes.triton.server import FolderServer

    srv = FolderServer(folders["mixed"], http_port=0, grpc_port=0, metrics_port=0, max_batch=8,
                       max_queue_delay_us=2000)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        assert not _tritonservers(srv.ports["http"])


def _tritonservers(port) -> list[str]:
    """Running tritonserver processes listening on `port` (by their command line)."""
    out = subprocess.run(["pgrep", "-af", "tritonserver"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if re.search(rf"--http-port[= ]{port}\b", ln)]


def _http_infer(srv, model, x, threshold=None, outputs=("logits", "merge_stats")):
    import tritonclient.http as th

    c = th.InferenceServerClient(srv.urls["http"][len("http://"):])
    try:
        ins = [th.InferInput("image", list(x.shape), "FP32")]
        ins[0].set_data_from_numpy(np.ascontiguousarray(x, np.float32))
        if threshold is not None:
            ins.append(th.InferInput("threshold", [x.shape[0], 1], "FP32"))
            ins[1].set_data_from_numpy(np.asarray(threshold, np.float32).reshape(-1, 1))
        res = c.infer(model, ins, outputs=[th.InferRequestedOutput(o) for o in outputs])
        return {o: res.as_numpy(o) for o in outputs}
    finally:
        c.close()


@pytest.mark.slow
def test_served_answers_equal_onnxruntime(server, folders):
    x = folders["images"][:3]
    assert [m.name for m in server.models] == ["baseline", "t0.880_l1-5", "t0.880_l1-5_dyn"]
    # on a CPU a dynamic entry answers a batch one image per forward (docs/decisions.md item 57)
    assert [m.per_image for m in server.models] == [False, False, True]
    for m in server.models:
        outs = ("logits",) if m.entry == "baseline" else ("logits", "merge_stats")
        got = _http_infer(server, m.name, x, outputs=outs)
        ref = reference(folders["mixed"], m.entry, x)
        if m.per_image:
            one = [reference(folders["mixed"], m.entry, x[i:i + 1]) for i in range(len(x))]
            ref.logits = np.concatenate([o.logits for o in one])
            ref.merge_stats = np.concatenate([o.merge_stats for o in one])
        np.testing.assert_array_equal(got["logits"], ref.logits, err_msg=m.name)
        if m.entry != "baseline":
            np.testing.assert_array_equal(got["merge_stats"], ref.merge_stats, err_msg=m.name)
            assert got["merge_stats"].dtype == np.int32
        # a client that wants the segmentation only: the classes, no logits sent
        cls = _http_infer(server, m.name, x, outputs=("labels",))
        assert set(cls) == {"labels"} and cls["labels"].dtype == np.uint8
        np.testing.assert_array_equal(cls["labels"], ref.logits.argmax(1), err_msg=m.name)
        from algm_export.runtimes.triton.client import TritonRunner

        asked = ["labels"] + ([] if m.entry == "baseline" else ["merge_stats"])
        with TritonRunner(server.urls["grpc"], m.name, outputs=asked) as r:
            o = r.infer(x)
        assert o.logits is None and "logits" not in o
        np.testing.assert_array_equal(o.labels, ref.logits.argmax(1), err_msg=m.name)
        if m.entry != "baseline":
            np.testing.assert_array_equal(o.merge_stats, ref.merge_stats, err_msg=m.name)


@pytest.mark.slow
def test_concurrent_grpc_requests_each_get_their_own_answer(server, folders):
    """24 requests from 4 clients, different images, both ALGM entries: dynamic batching forms
    batches of several requests, and every answer is that request's own image's."""
    from algm_export.runtimes.triton.client import TritonRunner

    xs = folders["images"]
    jobs = [(k, i % 2, i % len(xs)) for k in range(4) for i in range(6)]   # (client, model, image)
    names = ["t0.880_l1-5", "t0.880_l1-5_dyn"]
    refs = {(mi, ii): reference(folders["mixed"], names[mi], xs[ii:ii + 1]) for mi in (0, 1) for ii in range(len(xs))}
    start = threading.Barrier(4)

    def client(k):
        with TritonRunner(server.urls["grpc"], names[0]) as r0, TritonRunner(server.urls["grpc"], names[1]) as r1:
            start.wait()
            return [(mi, ii, (r0, r1)[mi].infer(xs[ii:ii + 1])) for kk, mi, ii in jobs if kk == k]

    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(client, range(4)) for r in rs]
    assert len(results) == 24
    for mi, ii, out in results:
        ref = refs[(mi, ii)]
        np.testing.assert_allclose(out.logits, ref.logits, atol=1e-4, err_msg=f"{names[mi]} image {ii}")
        np.testing.assert_array_equal(out.merge_stats, ref.merge_stats)
    counts = _metrics(server, names[1])
    assert counts["nv_inference_request_success"] >= 12 and counts["nv_inference_exec_count"] >= 1


def _metrics(srv, model) -> dict:
    """{metric: value summed over its labels} of one model from the Prometheus endpoint."""
    text = urllib.request.urlopen(srv.urls["metrics"]).read().decode()
    out = {}
    for m in re.finditer(r'^(nv_inference_\w+)\{[^}]*model="([^"]+)"[^}]*\} (\S+)$', text, re.M):
        if m.group(2) == model:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


@pytest.mark.slow
def test_malformed_requests_get_errors_and_the_server_stays_healthy(server, folders):
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    c = th.InferenceServerClient(server.urls["http"][len("http://"):])
    name = "t0.880_l1-5"

    def send(arr, dtype="FP32", shape=None):
        inp = th.InferInput("image", list(shape or arr.shape), dtype)
        inp.set_data_from_numpy(arr, binary_data=True)
        return c.infer(name, [inp])

    with pytest.raises(InferenceServerException, match="(?i)shape"):
        send(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(InferenceServerException, match="(?i)FP64|data.?type|datatype"):
        send(np.zeros((1, 3, 128, 128), np.float64), "FP64")
    with pytest.raises(InferenceServerException, match=f"error: {name}: image batch holds NaN"):
        send(np.full((1, 3, 128, 128), np.nan, np.float32))
    with pytest.raises(InferenceServerException):
        send(np.zeros((9, 3, 128, 128), np.float32))   # more than --max-batch
    with pytest.raises(InferenceServerException):
        c.infer("no-such-model", [th.InferInput("image", [1, 3, 128, 128], "FP32")])
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(name)
    x = folders["images"][:1]
    np.testing.assert_array_equal(send(x).as_numpy("logits"), reference(folders["mixed"], name, x).logits)
    c.close()
    counts = _metrics(server, name)
    assert counts["nv_inference_request_success"] >= 1 and counts["nv_inference_request_failure"] >= 1


@needs_server
@pytest.mark.slow
def test_cli_serves_a_threshold_input_entry_and_stops_on_sigterm(folders):
    """`algm-export serve` as a process: the ready line, a threshold-input entry over HTTP at two
    thresholds per batch (and its default without one), then SIGTERM stops it within seconds and
    leaves no tritonserver behind."""
    from algm_export.runtimes.triton.server import free_port

    ports = [free_port() for _ in range(3)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "ALGM_QUIET": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "algm_export", "serve", str(folders["tin"]), "--http-port",
                             str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("ready in"):
                break
        text = "".join(lines)
        assert lines and lines[-1].startswith("ready in"), text
        assert f"http://127.0.0.1:{ports[0]}" in text and "curl" in text and "tin_l1-5_dyn" in text
        assert "[1/2] model baseline ready" in text

        class Srv:
            urls = {"http": f"http://127.0.0.1:{ports[0]}"}

        x = folders["images"][:2]
        got = _http_infer(Srv, "tin_l1-5_dyn", x, threshold=[0.8, 0.88])
        ref = reference(folders["tin"], "tin_l1-5_dyn", x, threshold=np.array([0.8, 0.88], np.float32))
        np.testing.assert_array_equal(got["logits"], ref.logits)
        np.testing.assert_array_equal(got["merge_stats"], ref.merge_stats)
        default = _http_infer(Srv, "tin_l1-5_dyn", x)      # no threshold: its first exported one (0.8)
        np.testing.assert_array_equal(default["logits"], reference(folders["tin"], "tin_l1-5_dyn", x, 0.8).logits)
        assert _tritonservers(ports[0])
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert time.time() - t0 < 20 and "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for _ in range(20):
        if not _tritonservers(ports[0]):
            break
        time.sleep(0.25)
    assert not _tritonservers(ports[0])


@pytest.mark.slow
def test_serve_errors_name_the_problem(folders, tmp_path, capsys):
    if serving_missing():
        pytest.skip(serving_missing())
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert main(["serve", str(folders["mixed"]), "--http-port", str(busy)]) == 2
        err = capsys.readouterr().err
        assert f"--http-port {busy}" in err and "another port" in err
    assert main(["serve", str(folders["mixed"]), "--setting", "nope", "--http-port", "0"]) == 2
    assert "no setting nope" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--http-port", "0"]) == 2
    assert "not an export folder" in capsys.readouterr().err


def _example():
    import importlib.util

    spec = importlib.util.spec_from_file_location("triton_client_example", ROOT / "examples" / "triton_client.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_client_example_prepares_photos_as_the_models_expect(tmp_path):
    """The example's numpy preprocessing equals algm_export.models.images.to_model_input (both normalisations,
    down- and upscaling)."""
    from PIL import Image

    from algm_export.models.images import to_model_input
    from conftest import photo

    ex = _example()
    img = photo("chelsea")
    Image.fromarray(img).save(tmp_path / "p.png")
    custom = {"mean": (0.4, 0.5, 0.6), "std": (0.2, 0.25, 0.3)}
    for size, norm in (((128, 96), "vit"), ((512, 640), "deit"), ((100, 100), custom)):
        got = ex.prepare(str(tmp_path / "p.png"), *size, norm if isinstance(norm, str) else
                         (norm["mean"], norm["std"]))
        want = to_model_input(img, size, norm).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)   # float32 rounding, amplified by 1/std


@pytest.mark.slow
def test_client_example_writes_the_segmentation_png(server, folders, tmp_path, capsys):
    from PIL import Image

    from algm_export.models.images import to_model_input
    from conftest import photo

    ex = _example()
    img = photo("astronaut")
    Image.fromarray(img).save(tmp_path / "a.png")
    out = tmp_path / "seg.png"
    url = server.urls["http"][len("http://"):]
    assert ex.main([str(tmp_path / "a.png"), "--url", url, "--model", "t0.880_l1-5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "merges per ALGM step" in text and "written" in text
    seg = np.asarray(Image.open(out).convert("RGB"))
    assert seg.shape[:2] == img.shape[:2]
    ref = reference(folders["mixed"], "t0.880_l1-5", to_model_input(img, (128, 128), "vit").numpy())
    labels = ref.logits[0].argmax(0)
    want = np.asarray(Image.fromarray(ex.palette(21)[labels]).resize((img.shape[1], img.shape[0]), Image.NEAREST))
    assert (seg == want).all(1).mean() > 0.999     # the preprocessing matches to float rounding
    assert ex.main([str(tmp_path / "a.png"), "--url", url, "--model", "nope"]) == 2


@needs_server
@pytest.mark.slow
def test_bench_backend_triton_measures_served_throughput(folders, tmp_path):
    """`bench --backend triton`: one row per (slot, concurrency), a threshold-input entry per threshold,
    the baseline's speed-up 1, tokens of the dynamic entry from the served merge_stats."""
    from algm_export.tasks.bench import bench, format_bench

    d = tmp_path / "tin"
    shutil.copytree(folders["tin"], d)
    rep = bench(d, backends=["triton"], images=folders["image_dir"],
                repeats=1, warmup=0, concurrency=[1, 2], requests=1, threads=1, settle_s=0,
                model=folders["model"])
    rows = rep["results"]
    assert [(r["setting"], r.get("threshold") if r["setting"] != "baseline" else None, r["concurrency"])
            for r in rows] == [("baseline", None, 1), ("tin_l1-5_dyn", 0.8, 1), ("tin_l1-5_dyn", 0.88, 1),
                               ("baseline", None, 2), ("tin_l1-5_dyn", 0.8, 2), ("tin_l1-5_dyn", 0.88, 2)]
    for r in rows:
        assert r["backend"] == "triton" and r["images_per_s"] > 0 and r["requests"] == r["concurrency"]
        if r["setting"] == "baseline":
            assert r["speedup"] == 1.0
        else:
            assert r["token_mode"] == "dynamic" and r["tokens"]["images"] == r["concurrency"]
    assert rep["served"] == {"concurrency": [1, 2], "requests_per_client": 1, "runs_on": "onnxruntime",
                             "answer": "logits"}
    assert "c2" in format_bench(rep) and (d / "bench" / "bench.json").is_file()
