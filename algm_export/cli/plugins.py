"""`algm-export plugins build`: the CUDA kernels and TensorRT plugins (CMake)."""

from __future__ import annotations

from algm_export.cli import args as a


def add_parser(sub):
    p = a.command_parser(sub, "plugins", help="build the CUDA kernels and TensorRT plugins",
                         description="Build plugins/ with CMake: the kernel library (nvcc alone) and, when TensorRT "
                                     "headers are found, the IPluginV3 plugin library.",
                         example="algm-export plugins build --archs 86,89")
    sp = p.add_subparsers(dest="plugins_cmd", metavar="ACTION")
    b = a.command_parser(sp, "build", help="run cmake and build", description="Run cmake and build plugins/.",
                         example="algm-export plugins build --tensorrt-include /usr/include/x86_64-linux-gnu")
    b.add_argument("--build-dir", default=None)
    b.add_argument("--tensorrt-include", default=None, metavar="DIR", help="TensorRT include/ folder")
    b.add_argument("--archs", default=None, help="CUDA architectures, e.g. 86,87,89 (default: Turing..Blackwell)")
    b.set_defaults(func=run_build)
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])
    return p


def run_build(args) -> int:
    from algm_export.tasks.plugins import build_plugins

    res = build_plugins(build_dir=args.build_dir, tensorrt_include=args.tensorrt_include, archs=args.archs)
    for k, v in (res.items() if isinstance(res, dict) else []):
        print(f"{k}: {v}")
    return 0


run = run_build
