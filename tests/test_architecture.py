"""The layers only point down (docs/architecture.md), read from every module's imports (ast).

    core       errors, progress, tables, manifest, lock, published
    model      models, merging, export, images, calibrate, flops, visualize
    artifacts  artifacts (the export folder)
    runtimes   runtimes (the Runner interface, the registry, torch / onnxruntime / tensorrt)
    library    validate, bench, build, predict, report, plugins (one workflow each, none imports another)
    workflow   demo (composes the library workflows)
    commands   commands.<name>: argument parsing and printing; only commands.args is shared
    entry      cli, __main__

Every import counts, also those inside functions (they are how optional pieces load lazily).
Above the artifacts layer, the export folder is read and written through `algm_export.artifacts`
only: the file format (`manifest`) and the locks (`lock`) are imported by the core, the model
layer (the exporter writes the folder) and artifacts itself, by nothing above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "algm_export"

LAYERS = [
    ("core", ["errors", "progress", "tables", "manifest", "lock", "published", ""]),
    ("model", ["models", "merging", "export", "images", "calibrate", "flops", "visualize"]),
    ("artifacts", ["artifacts"]),
    ("runtimes", ["runtimes"]),
    ("library", ["validate", "bench", "build", "predict", "report", "plugins"]),
    ("workflow", ["demo"]),
    ("commands", ["commands"]),
    ("entry", ["cli", "__main__"]),
]
RANK = {top: i for i, (_, tops) in enumerate(LAYERS) for top in tops}
LIBRARY = set(LAYERS[4][1])


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = ("algm_export",) + f.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(path: Path) -> set[str]:
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "algm_export":  # `from algm_export import x`: x may be a module
                deps.update(f"algm_export.{a.name}" for a in node.names)
            elif node.module.startswith("algm_export."):
                deps.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; write `from algm_export... import`")
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name.startswith("algm_export."))
    return deps


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(module: str) -> int:
    t = top(module)
    if t not in RANK:
        raise AssertionError(f"{module}: no layer for algm_export.{t}; add it to LAYERS and docs/architecture.md")
    return RANK[t]


MODULES = modules()


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


def violations() -> list[str]:
    bad = []
    for mod, path in MODULES.items():
        here = layer_of(mod)
        for dep in imports(path):
            if top(dep) not in RANK:
                # `from algm_export import __version__`: a name of the package itself
                if dep.startswith("algm_export.") and not (ROOT / top(dep)).exists() \
                        and not (ROOT / f"{top(dep)}.py").exists():
                    continue
                bad.append(f"{mod} imports {dep}, which has no layer")
                continue
            there = layer_of(dep)
            if there > here:
                bad.append(f"{mod} ({LAYERS[here][0]}) imports {dep} ({LAYERS[there][0]}): upward")
            elif top(mod) == "commands" and top(dep) == "commands":
                if dep not in ("algm_export.commands", "algm_export.commands.args") and dep != mod:
                    bad.append(f"{mod} imports the command {dep}: share it through commands.args or a library module")
            elif top(mod) in LIBRARY and top(dep) in LIBRARY and top(dep) != top(mod):
                bad.append(f"{mod} imports {dep}: library workflows do not import each other; move the shared "
                           "piece down (artifacts, runtimes, or a core/model module)")
    return bad


def test_imports_only_point_down():
    assert violations() == []


FOLDER_FORMAT = {"algm_export.manifest", "algm_export.lock"}


def format_violations() -> list[str]:
    """Modules above the artifacts layer that import the folder's file format or locks directly."""
    above = RANK["artifacts"]
    return [f"{mod} imports {dep}: use algm_export.artifacts (ExportFolder, EngineRecord, the helpers it re-exports)"
            for mod, path in MODULES.items() if layer_of(mod) > above
            for dep in sorted(imports(path) & FOLDER_FORMAT)]


def test_the_export_folder_is_read_and_written_through_artifacts():
    assert format_violations() == []


def test_the_format_check_catches_a_direct_import(tmp_path):
    fake = tmp_path / "validate.py"
    fake.write_text("from algm_export.manifest import save_manifest\nimport algm_export.lock\n")
    assert imports(fake) & FOLDER_FORMAT == FOLDER_FORMAT


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "bench.py"
    fake.write_text("def f():\n    from algm_export.validate import validate\n"
                    "from algm_export.commands.export import run\n")
    deps = imports(fake)
    assert {"algm_export.validate", "algm_export.commands.export"} <= deps
    assert layer_of("algm_export.commands.export") > layer_of("algm_export.bench")


def test_one_module_per_command():
    from algm_export.commands import NAMES

    for name in NAMES:
        mod = __import__(f"algm_export.commands.{name}", fromlist=["add_parser", "run"])
        assert callable(mod.add_parser) and callable(mod.run), name


@pytest.mark.parametrize("name", ["export", "build", "validate", "bench", "report", "predict", "demo", "plugins",
                                  "version"])
def test_every_command_help_has_an_example(name, capsys):
    from algm_export.cli import main

    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example:\n  algm-export " + name in out
