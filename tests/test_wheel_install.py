"""The wheel works from a plain `pip install`: built here, installed into a fresh venv (no editable
install, no checkout on sys.path), then `--version`, a `predict` on a built-in and the CUDA kernel
build with nvcc from the plugin sources the wheel ships."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    # a copy of the sources, so that building leaves nothing in the checkout
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                            ".pytest_cache", ".hypothesis", "algm-demo", "plugins/build*"))
    shutil.rmtree(src / "plugins" / "build", ignore_errors=True)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)])
    wheels = list(dist.glob("algm_export-*.whl"))
    assert len(wheels) == 1
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    # The dependencies come from the test environment's site-packages, appended as a plain path:
    # its .pth files (among them the editable install of this checkout) are not processed.
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = sysconfig.get_paths()["purelib"]
    # pip of the test environment, installing for the fresh interpreter (console scripts included)
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-compile",
          str(wheels[0])])
    (site / "zz_test_deps.pth").write_text(deps + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ALGM_PLUGINS_SRC", "ALGM_PLUGINS_BUILD")}
    env["XDG_CACHE_HOME"] = str(tmp / "cache")
    return venv, site, env, tmp


def test_installed_package_is_the_wheel(fresh_venv):
    venv, site, env, tmp = fresh_venv
    out = _run([str(venv / "bin" / "python"), "-c", "import algm_export, sys; print(algm_export.__file__); "
                "print(any('__editable__' in p for p in sys.meta_path.__repr__().split()))"],
               env=env, cwd=tmp).stdout.split()
    assert out[0].startswith(str(site)) and not out[0].startswith(str(ROOT)), out
    assert (site / "algm_export" / "plugin_src" / "CMakeLists.txt").is_file()
    assert (site / "algm_export" / "plugin_src" / "algmClap" / "algmClapKernel.cu").is_file()


def test_cli_version_and_predict(fresh_venv):
    venv, site, env, tmp = fresh_venv
    exe = venv / "bin" / "algm-export"
    assert "algm-export" in _run([str(exe), "version"], env=env, cwd=tmp).stdout
    _run([str(exe), "predict", "sample:coffee", "--model", "builtin:vit_ti16_512", "--out", str(tmp / "pred"), "-q"],
         env=env, cwd=tmp)
    assert (tmp / "pred" / "coffee_seg.png").is_file() and (tmp / "pred" / "coffee_tokens.json").is_file()


def test_kernel_build_from_the_wheel(fresh_venv):
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("nvcc (CUDA toolkit) is not installed here")
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed here")
    venv, site, env, tmp = fresh_venv
    env = {k: v for k, v in env.items() if k != "ALGM_TENSORRT_INCLUDE"}
    _run([str(venv / "bin" / "algm-export"), "plugins", "build", "--archs", "86"], env=env, cwd=tmp)
    # one build folder per installation (source folder + version) under the user cache
    built = list((tmp / "cache" / "algm-export" / "plugins-build").glob("*/libalgm_kernels.so"))
    assert len(built) == 1, "the kernel library was not built into the user cache"
