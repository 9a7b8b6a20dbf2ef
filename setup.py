"""Packaging hook: the wheel carries the CUDA / TensorRT plugin sources (`plugins/`, build folders
excluded) as `algm_export/plugin_src/`, so `algm-export plugins build` works from a plain
`pip install`. Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithPluginSources(build_py):
    def run(self):
        super().run()
        src = Path(__file__).resolve().parent / "plugins"
        if not src.is_dir():  # building from an sdist that already holds them under the package
            return
        dst = Path(self.build_lib) / "algm_export" / "plugin_src"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("build*", "__pycache__", "*.so", "*.o"))


setup(cmdclass={"build_py": BuildPyWithPluginSources})
