"""The layers only point down (docs/architecture.md), read from every module's imports (ast).

    core       core/ (errors, manifest, lock, tables, progress, published, names)
    models     models/ (the seam, backbones, decoders, families, formats, images, flops)
    merging    merging/ (reference method, static/dynamic ops, torch custom ops, setting, driver, calibration)
    export     export/ (ONNX: exporter, function bodies, fp16, the export pipeline)
    artifacts  artifacts/ (the export folder)
    runtimes   runtimes/ (the Runner interface, the registry, the plugin loader, torch / onnxruntime / tensorrt)
    tasks      tasks/ (validate, bench, build, predict, report, plugins, visualize; demo composes them)
    cli        cli/ (one module per command; args shared; entry = main)

Every import counts, also those inside functions (they are how optional pieces load lazily).
Above the artifacts layer, the export folder is read and written through `algm_export.artifacts`
only: the file format (`core.manifest`) and the locks (`core.lock`) are imported by the layers
below and by artifacts itself, by nothing above. No two packages import each other (a cycle),
and the package root holds only `__init__` and `__main__`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "algm_export"

LAYERS = [
    ("core", ["core", ""]),
    ("models", ["models"]),
    ("merging", ["merging"]),
    ("export", ["export"]),
    ("artifacts", ["artifacts"]),
    ("runtimes", ["runtimes"]),
    ("tasks", ["tasks"]),
    ("cli", ["cli", "__main__"]),
]
RANK = {top: i for i, (_, tops) in enumerate(LAYERS) for top in tops}
ROOT_MODULES = {"algm_export", "algm_export.__main__"}
# tasks that compose other tasks (everything else in tasks/ imports no other task)
COMPOSERS = {"algm_export.tasks.demo"}
SHARED_TASK_MODULES = {"algm_export.tasks.visualize"}  # drawing helpers several tasks use


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


def task_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:3]) if len(parts) > 2 else module


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
            elif top(mod) == "cli" and top(dep) == "cli":
                if dep not in ("algm_export.cli", "algm_export.cli.args", "algm_export.cli.entry") and dep != mod:
                    bad.append(f"{mod} imports the command {dep}: share it through cli.args or a task")
            elif top(mod) == "tasks" and top(dep) == "tasks" and task_of(dep) != task_of(mod) \
                    and task_of(mod) not in COMPOSERS and task_of(dep) not in SHARED_TASK_MODULES \
                    and dep != "algm_export.tasks":
                bad.append(f"{mod} imports {dep}: tasks do not import each other; move the shared piece down "
                           "(artifacts, runtimes, models, ...)")
    return bad


def package_of(module: str) -> str:
    """The top package of a module (`algm_export.models.families.setr` -> `algm_export.models`); a
    package's own sub-packages may import each other, packages may not."""
    return ".".join(module.split(".")[:2])


def package_cycles() -> list[list[str]]:
    """Strongly connected groups of more than one package in the package import graph."""
    graph: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        src = package_of(mod)
        for dep in imports(path):
            if dep in MODULES or any(m.startswith(dep + ".") for m in MODULES):
                dst = package_of(dep)
                if dst != src:
                    graph.setdefault(src, set()).add(dst)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_cycle_between_packages():
    assert package_cycles() == []


def test_the_package_root_holds_only_the_entry_points():
    assert sorted(m for m in MODULES if m.count(".") <= 1 and m not in ROOT_MODULES
                  and MODULES[m].name != "__init__.py") == []


def test_imports_only_point_down():
    assert violations() == []


FOLDER_FORMAT = {"algm_export.core.manifest", "algm_export.core.lock"}


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
    fake.write_text("from algm_export.core.manifest import save_manifest\nimport algm_export.core.lock\n")
    assert imports(fake) & FOLDER_FORMAT == FOLDER_FORMAT


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "bench.py"
    fake.write_text("def f():\n    from algm_export.tasks.validate import validate\n"
                    "from algm_export.cli.export import run\n")
    deps = imports(fake)
    assert {"algm_export.tasks.validate", "algm_export.cli.export"} <= deps
    assert layer_of("algm_export.cli.export") > layer_of("algm_export.tasks.bench")


def test_one_module_per_command():
    from algm_export.cli import NAMES

    for name in NAMES:
        mod = __import__(f"algm_export.cli.{name}", fromlist=["add_parser", "run"])
        assert callable(mod.add_parser) and callable(mod.run), name


@pytest.mark.parametrize("name", ["export", "build", "validate", "bench", "report", "predict", "demo", "plugins",
                                  "version"])
def test_every_command_help_has_an_example(name, capsys):
    from algm_export.cli import main

    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example:\n  algm-export " + name in out
    from algm_export.models.registry import FAMILY_MODULES

    flat = " ".join(out.split())
    missing = [title for title in FAMILY_MODULES.values() if title not in flat]
    assert not missing, f"algm-export {name} --help does not name the families {missing}"


def test_the_cycle_and_root_checks_can_fail(tmp_path, monkeypatch):
    import sys

    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from algm_export.export.pipeline import export_folder\n")
    b.write_text("def f():\n    from algm_export.merging.driver import apply_algm\n")
    me = sys.modules[__name__]
    monkeypatch.setattr(me, "MODULES", {"algm_export.merging.driver": a, "algm_export.export.pipeline": b,
                                        "algm_export.validate": b})
    assert package_cycles() == [["algm_export.export", "algm_export.merging"]]
    assert test_the_package_root_holds_only_the_entry_points.__code__  # the check below runs on the fake tree
    with pytest.raises(AssertionError):
        test_the_package_root_holds_only_the_entry_points()


def missing_modules() -> list[str]:
    """`from algm_export.x.y import z` / `import algm_export.x.y` naming a module that does not exist
    (e.g. an import left behind by a move); `from algm_export import name` may name a value."""
    bad = []
    for mod, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("algm_export."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("algm_export.")]
            bad += [f"{mod} imports {n}, which does not exist" for n in names if n not in MODULES]
    return bad


def test_every_imported_module_exists():
    assert missing_modules() == []
