"""`algm-export version`: the versions of algm-export, Python and the libraries it uses."""

from __future__ import annotations

import platform

from algm_export.cli import args as a


def add_parser(sub):
    p = a.command_parser(sub, "version", help="print the versions of algm-export and its tools",
                         description="Print the versions of algm-export, Python and the libraries it uses.",
                         example="algm-export version")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from algm_export import __version__
    from algm_export.artifacts import tool_versions

    print(f"algm-export {__version__}")
    print(f"python {platform.python_version()} ({platform.system()} {platform.machine()})")
    for name, ver in tool_versions().items():
        if name != "algm-export":
            print(f"{name} {ver}")
    try:
        import torch

        if torch.cuda.is_available():
            print(f"cuda {torch.version.cuda}: {torch.cuda.get_device_name(0)}")
        else:
            print("cuda: not available")
    except Exception as e:  # noqa: BLE001  (a broken CUDA setup must not break `version`)
        print(f"cuda: unknown ({e})")
    return 0
