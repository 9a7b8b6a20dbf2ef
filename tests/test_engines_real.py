"""TensorRT-RTX ahead-of-time engines (SM86) from real exports of a small Segmenter + ALGM."""

import pytest

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (tensorrt-rtx-cu13) is not installed")

from algm_export.tasks.build import build_engines  # noqa: E402
from algm_export.core.manifest import load_manifest, sha256_file  # noqa: E402

pytestmark = pytest.mark.slow  # TensorRT-RTX engine builds of real exports


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from algm_export import create_segmenter
    from algm_export.export.pipeline import export_folder

    out = tmp_path_factory.mktemp("rtx")
    m = create_segmenter("vit_tiny", "linear", 128, n_cls=21, seed=0)
    export_folder(m, "builtin-test", out, thresholds=[0.88], calib_limit=4, fp16=True, force=True)
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_rtx_builds_real_exports(export_dir, precision):
    recs = build_engines(export_dir, backend="tensorrt-rtx", precision=precision, compute_capabilities=[86],
                         batch=(1, 2, 4), progress=False)
    assert [r["setting"] for r in recs] == ["baseline", "t0.880_l1-5"]
    man = load_manifest(export_dir, verify=True)
    mine = [e for e in man["engines"] if e["precision"] == precision]
    assert len(mine) == 2
    for e in mine:
        assert (export_dir / e["file"]).stat().st_size > 100_000
        assert sha256_file(export_dir / e["file"]) == e["sha256"]
        assert e["backend"] == "tensorrt-rtx" and e["compute_capabilities"] == [86]
        assert e["profile"] == [1, 2, 4] and e["build_seconds"] > 0
        assert e["layers"]["count"] > 0
    algm = [e for e in mine if e["setting"] != "baseline"][0]
    # no plugin library: the parser expanded the algm functions into standard layers
    assert not algm["layers"].get("plugin_layers")
