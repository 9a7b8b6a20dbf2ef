"""Fuzzing of the artifacts algm-export reads: shared by tests/test_fuzz_artifacts.py (a few hundred
cases in CI) and scripts/fuzz_artifacts.py (long runs, `--cases N --seed S`).

One real export folder of a micro Segmenter (64x64, 5 classes, one ALGM setting, with a
validation report and a benchmark) is made once. Every case copies it (hard links: algm-export
only ever replaces files, never rewrites them in place), corrupts it at random with the case's
seed -- manifest keys removed, retyped, set to huge numbers or to paths leading out; manifest,
ONNX, engine, checkpoint and report bytes flipped or truncated, with or without their sha256
updated; symlinks leading out -- and runs one command in-process (`algm_export.cli.main`).

A case passes when the command ends with exit 0 or 2 (validate: also 3, a parity failure), with
exactly one `error:` line when it fails, no traceback, within the time limit, and nothing
written outside the export folder (the listing around it is compared before and after).
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

SIZE = 64
WEIRD = [None, "abc", "", -1, 0, 2**31, 2**63, 10**30, 1e308, -1e308, 0.5, True, [], {}, [1], {"a": 1},
         "../../x", "/etc/hostname", "t0.9\\x", "a/../b", ".hidden", "x" * 300, [None], ["abc"], [-5, 2**40]]
TRAVERSAL = ["../../x", "../x", "..", "/etc/hostname", "/tmp", "a/../../b", "engines/../../z", ".", "./x",
             "x\\..\\y", "x\x00y", "", "a//b", ".algm-export.lock", "manifest.json/..", "~/x", "C:\\x"]
PATH_KEYS = ["name", "onnx", "onnx_fp16", "onnx_inlined"]
ENGINE_KEYS = ["setting", "file", "plugin_library"]


class CaseTimeout(Exception):
    pass


# ----------------------------------------------------------------------------- the base folder

def make_base(root: Path) -> dict:
    """Checkpoint, images and the export folder every case starts from (validated and benched once)."""
    import torch
    from PIL import Image

    from algm_export.tasks.bench import bench
    from algm_export.export.pipeline import export_folder
    from algm_export.models.images import sample_images
    from algm_export.models.registry import resolve_model
    from algm_export.models.formats.published_segmenter import save_segmenter
    from algm_export.models.families.segmenter import DecoderConfig, SegmenterConfig
    from algm_export.models.families.segmenter import Segmenter
    from algm_export.tasks.validate import validate

    root.mkdir(parents=True, exist_ok=True)
    cfg = SegmenterConfig(backbone="vit_micro_fuzz", d_model=64, n_heads=2, n_layers=6, patch_size=16,
                          image_size=(SIZE, SIZE), n_cls=5, decoder=DecoderConfig(name="linear"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Segmenter(cfg).eval()
    ck = root / "ckpt"
    save_segmenter(model, ck)
    images = root / "images"
    images.mkdir(exist_ok=True)
    for name, img in sample_images(names=["coffee"]):
        Image.fromarray(img).resize((SIZE + 16, SIZE)).save(images / f"{name}.png")
    out = root / "export"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_folder(resolve_model(str(ck)), str(ck), out, thresholds=[0.9], calib_images=images, force=True)
        validate(out, images=images, limit_images=1)
        bench(out, backends=["ort"], images=images, repeats=1, warmup=0, settle_s=0, threads=1)
    finally:
        torch.set_num_threads(threads)
    fake = out / "engines" / "baseline.fp32.engine"  # no GPU needed: a stand-in engine file with a record
    fake.parent.mkdir(exist_ok=True)
    fake.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4096)))
    man = json.loads((out / "manifest.json").read_text())
    from algm_export.core.manifest import save_manifest, sha256_file

    man["engines"] = [{"setting": "baseline", "file": "engines/baseline.fp32.engine", "sha256": sha256_file(fake),
                       "bytes": fake.stat().st_size, "backend": "tensorrt-rtx", "backend_version": "0",
                       "precision": "fp32", "profile": [1, 1, 8], "compute_capabilities": [86],
                       "plugin_library": None, "plugin_sha256": None, "build_seconds": 1.0,
                       "layers": {"count": 1, "plugin_layers": []}}]
    save_manifest(out, man)
    return {"root": root, "ckpt": ck, "images": images, "export": out}


def copy_base(base: dict, case_root: Path) -> dict:
    """A case's own export folder and checkpoint (hard links; mutated files are replaced, not edited)."""
    case_root.mkdir(parents=True)
    d = case_root / "case" / "export"
    ignore = shutil.ignore_patterns(".algm-export.lock")
    shutil.copytree(base["export"], d, copy_function=os.link, ignore=ignore)
    ck = case_root / "case" / "ckpt"
    shutil.copytree(base["ckpt"], ck, copy_function=os.link)
    return {"dir": d, "ckpt": ck, "images": base["images"], "root": case_root}


# ----------------------------------------------------------------------------- helpers

def _replace(path: Path, data: bytes) -> None:
    """Write `data` as a new file at `path` (never through a hard link to the base)."""
    if path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _inside(c: dict, rel: Any) -> Path:
    """The fuzzer's own writes stay in the case folder, whatever an earlier mutation put in the manifest."""
    from algm_export.core.manifest import is_plain_relpath

    p = (c["dir"] / str(rel)).resolve()
    if not is_plain_relpath(rel) or c["dir"].resolve() not in p.parents or not p.is_file():
        raise ValueError(f"{rel!r} is no file of the case folder")
    return p


def _manifest(d: Path) -> Any:
    return json.loads((d / "manifest.json").read_text())


def _save(d: Path, data: Any) -> None:
    _replace(d / "manifest.json", json.dumps(data).encode())


def _sha(path: Path) -> str:
    from algm_export.core.manifest import sha256_file

    return sha256_file(path)


def _nodes(obj: Any, path=()) -> list[tuple]:
    """Every (container path, key) in a JSON document."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(path + (k,))
            out += _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append(path + (i,))
            out += _nodes(v, path + (i,))
    return out


def _get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


def _flip(rng: random.Random, data: bytes, n: int) -> bytes:
    b = bytearray(data)
    for _ in range(n):
        if b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _corrupt_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    kind = rng.choice(["truncate", "flip", "flip", "garbage", "empty", "zero-run"])
    if kind == "truncate":
        n = rng.randrange(len(data) + 1) if data else 0
        return data[:n], f"truncated to {n} bytes"
    if kind == "flip":
        n = rng.choice([1, 2, 8, 64])
        return _flip(rng, data, n), f"{n} bits flipped"
    if kind == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.choice([1, 100, 5000]))), "random bytes"
    if kind == "zero-run":
        if not data:
            return data, "empty (zero run)"
        i = rng.randrange(len(data))
        n = rng.randrange(1, 4096)
        return data[:i] + b"\0" * n + data[i + n:], f"{n} bytes zeroed at {i}"
    return b"", "emptied"


# ----------------------------------------------------------------------------- mutations

def m_drop_key(rng, c):
    man = _manifest(c["dir"])
    nodes = [p for p in _nodes(man) if isinstance(_get(man, p[:-1]), dict)]
    p = rng.choice(nodes)
    del _get(man, p[:-1])[p[-1]]
    _save(c["dir"], man)
    return f"manifest: removed {'.'.join(map(str, p))}"


def m_retype(rng, c):
    man = _manifest(c["dir"])
    p = rng.choice(_nodes(man))
    v = rng.choice(WEIRD)
    _get(man, p[:-1])[p[-1]] = v
    _save(c["dir"], man)
    return f"manifest: {'.'.join(map(str, p))} = {v!r:.40}"


def m_huge(rng, c):
    man = _manifest(c["dir"])
    nums = [p for p in _nodes(man) if isinstance(_get(man, p), (int, float)) and not isinstance(_get(man, p), bool)]
    p = rng.choice(nums)
    v = rng.choice([2**31, 2**62, 10**400, -(2**31), 1e308, float("inf"), float("nan"), 8192, 8193, 0, -1])
    _get(man, p[:-1])[p[-1]] = v
    text = json.dumps(man)  # 10**400 stays an integer literal; inf/nan become Infinity/NaN
    _replace(c["dir"] / "manifest.json", text.encode())
    return f"manifest: {'.'.join(map(str, p))} = {str(v)[:20]}"


def m_traversal(rng, c):
    man = _manifest(c["dir"])
    v = rng.choice(TRAVERSAL)
    if rng.random() < 0.3 and man.get("engines"):
        key = rng.choice(ENGINE_KEYS)
        man["engines"][0][key] = v
        where = f"engines[0].{key}"
    else:
        entry, where = (man["baseline"], "baseline") if rng.random() < 0.3 else (man["settings"][0], "settings[0]")
        key = rng.choice(PATH_KEYS)
        entry[key] = v
        where += f".{key}"
    _save(c["dir"], man)
    return f"manifest: {where} = {v!r}"


def m_structure(rng, c):
    man = _manifest(c["dir"])
    kind = rng.choice(["dup-setting", "no-settings", "settings-dict", "engines-str", "model-list", "not-object",
                       "format", "nested"])
    if kind == "dup-setting":
        man["settings"].append(dict(man["settings"][0]))
    elif kind == "no-settings":
        man["settings"] = []
    elif kind == "settings-dict":
        man["settings"] = {"0": man["settings"][0]}
    elif kind == "engines-str":
        man["engines"] = "engines/"
    elif kind == "model-list":
        man["model"] = [man["model"]]
    elif kind == "not-object":
        man = [man]
    elif kind == "format":
        man["format"] = rng.choice(["algm-export/2", None, 1, ""])
    else:  # deeper than json's encoder goes: written as text
        n = rng.choice([10, 100, 5000])
        man["versions"] = "@DEEP@"
        text = json.dumps(man).replace('"@DEEP@"', "[" * n + "0" + "]" * n)
        _replace(c["dir"] / "manifest.json", text.encode())
        return f"manifest: versions nested {n} deep"
    _save(c["dir"], man)
    return f"manifest: {kind}"


def m_manifest_bytes(rng, c):
    p = c["dir"] / "manifest.json"
    data, how = _corrupt_bytes(rng, p.read_bytes())
    _replace(p, data)
    return f"manifest.json {how}"


def _listed(man) -> list[tuple[dict, str, str]]:
    out = []
    for e in [man.get("baseline") or {}] + list(man.get("settings") or []):
        for key, hkey in (("onnx", "sha256"), ("onnx_fp16", "sha256_fp16"), ("onnx_inlined", "sha256_inlined")):
            if e.get(key):
                out.append((e, key, hkey))
    return out


def m_onnx(rng, c):
    man = _manifest(c["dir"])
    e, key, hkey = rng.choice(_listed(man))
    p = _inside(c, e[key])
    data, how = _corrupt_bytes(rng, p.read_bytes())
    _replace(p, data)
    fixed = rng.random() < 0.7
    if fixed:
        e[hkey] = _sha(p)
        _save(c["dir"], man)
    return f"{e[key]} {how}" + (" (sha256 updated)" if fixed else "")


def m_engine(rng, c):
    man = _manifest(c["dir"])
    rec = man["engines"][0]
    p = _inside(c, rec["file"])
    data, how = _corrupt_bytes(rng, p.read_bytes())
    _replace(p, data)
    if rng.random() < 0.5:
        lib = c["dir"] / "engines" / "plugins" / "00" / "libalgm_plugins.so"
        _replace(lib, bytes(rng.randrange(256) for _ in range(256)))
        rec["plugin_library"] = str(lib.relative_to(c["dir"])) if rng.random() < 0.7 else str(lib)
        rec["plugin_sha256"] = _sha(lib) if rng.random() < 0.8 else None
        how += ", with a plugin library"
    fixed = rng.random() < 0.7
    if fixed:
        rec["sha256"] = _sha(p)
    _save(c["dir"], man)
    return f"{rec['file']} {how}" + (" (sha256 updated)" if fixed else "")


def _json_file(rng, c, rel: str) -> str:
    p = c["dir"] / rel
    if not p.exists():
        return f"{rel}: absent"
    if rng.random() < 0.4:
        data, how = _corrupt_bytes(rng, p.read_bytes())
        _replace(p, data)
        return f"{rel} {how}"
    doc = json.loads(p.read_text())
    nodes = _nodes(doc)
    path = rng.choice(nodes)
    if rng.random() < 0.5 and isinstance(_get(doc, path[:-1]), dict):
        del _get(doc, path[:-1])[path[-1]]
        how = f"removed {'.'.join(map(str, path))}"
    else:
        v = rng.choice(WEIRD)
        _get(doc, path[:-1])[path[-1]] = v
        how = f"{'.'.join(map(str, path))} = {v!r:.40}"
    _replace(p, json.dumps(doc).encode())
    return f"{rel}: {how}"


def m_reports(rng, c):
    rel = rng.choice(["validation/report.onnxruntime.fp32.json", "bench/bench.json"])
    return _json_file(rng, c, rel)


def m_checkpoint(rng, c):
    man = _manifest(c["dir"])
    ck = c["ckpt"] / "checkpoint.pth"
    what = rng.choice(["bytes", "variant", "payload"])
    if what == "bytes":
        data, how = _corrupt_bytes(rng, ck.read_bytes())
        _replace(ck, data)
    elif what == "variant":
        v = c["ckpt"] / "variant.yml"
        data, how = _corrupt_bytes(rng, v.read_bytes())
        _replace(v, data)
        if "variant_sha256" in man["model"] and rng.random() < 0.7:
            man["model"]["variant_sha256"] = _sha(v)
        how = "variant.yml " + how
    else:
        import torch

        obj = torch.load(ck, weights_only=True)
        obj[rng.choice(["extra", "model", "n_cls"])] = rng.choice([_Marker(c["root"] / "PWNED"), 3, "x", None])
        ck.unlink()
        torch.save(obj, ck)
        how = "payload changed (maybe a pickled shell command)"
    man["model"]["source"] = str(c["ckpt"])
    if rng.random() < 0.8:
        man["model"]["checkpoint_sha256"] = _sha(ck)
    _save(c["dir"], man)
    return f"checkpoint {how}"


class _Marker:
    """A pickle that would create a file if it were ever unpickled in full."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def m_symlink(rng, c):
    outside = c["root"] / "outside"
    outside.mkdir(exist_ok=True)
    kind = rng.choice(["listed", "dir"])
    if kind == "listed":
        man = _manifest(c["dir"])
        e, key, _h = rng.choice(_listed(man))
        p = _inside(c, e[key])
        target = outside / p.name
        shutil.copyfile(p, target)
        p.unlink()
        p.symlink_to(target)
        return f"{e[key]} is a symlink out of the folder"
    sub = rng.choice(["validation", "bench", "report", "engines"])
    p = c["dir"] / sub
    if p.exists():
        shutil.rmtree(p)
    p.symlink_to(outside, target_is_directory=True)
    return f"{sub}/ is a symlink out of the folder"


MUTATIONS: list[tuple[Callable, int]] = [
    (m_drop_key, 4), (m_retype, 6), (m_huge, 3), (m_traversal, 5), (m_structure, 3), (m_manifest_bytes, 2),
    (m_onnx, 5), (m_engine, 2), (m_reports, 3), (m_checkpoint, 2), (m_symlink, 2),
]


# ----------------------------------------------------------------------------- commands

def commands(c: dict) -> dict[str, list[str]]:
    d, images = str(c["dir"]), str(c["images"])
    man_onnx = "t0.900_l1-5.onnx"
    return {
        "validate": ["validate", d, "--images", images, "--max-images", "1"],
        "build": ["build", d, "--backend", "tensorrt-rtx", "--compute-capability", "1"],
        "bench": ["bench", d, "--backend", "ort", "--images", images, "--repeats", "1", "--warmup", "0",
                  "--settle-ms", "0"],
        "report": ["report", d, "--merge-pictures", "1"],
        "predict": ["predict", str(next(Path(images).iterdir())), "--model", str(c["ckpt"]), "--threshold", "0.9",
                    "--engine", str(Path(d) / man_onnx), "--out", str(c["root"] / "predictions"), "-q"],
    }


COMMAND_WEIGHTS = {"validate": 3, "build": 2, "bench": 1, "report": 2, "predict": 2}
EXITS = {"validate": {0, 2, 3}}


# ----------------------------------------------------------------------------- one case

@dataclass
class Result:
    index: int
    seed: int
    command: str
    mutations: list[str]
    code: Optional[int] = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    error: str = ""

    def describe(self) -> str:
        return (f"case {self.index} (seed {self.seed}): {self.command} after {'; '.join(self.mutations)} -> exit "
                f"{self.code} in {self.seconds:.1f}s: {'; '.join(self.problems)}\n    {self.error[-2000:]}")


def snapshot(root: Path, skip: list[Path]) -> dict:
    out = {}
    for p in [root.parent, *root.rglob("*")] if root.exists() else []:
        if any(p == s or s in p.parents for s in skip):
            continue
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        out[str(p)] = (st.st_size, st.st_mtime_ns) if p != root.parent else tuple(sorted(os.listdir(p)))
    return out


def _alarm(_signum, _frame):
    raise CaseTimeout()


def run_case(base: dict, work: Path, index: int, seed: int, timeout: float = 60.0) -> Result:
    """Corrupt a copy of the base folder with `seed`, run one command in-process, check the outcome."""
    from algm_export.cli import main

    rng = random.Random(seed)
    c = copy_base(base, work / f"c{index:05d}")
    command = rng.choices(list(COMMAND_WEIGHTS), weights=list(COMMAND_WEIGHTS.values()))[0]
    muts = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        fn = rng.choices([m for m, _ in MUTATIONS], weights=[w for _, w in MUTATIONS])[0]
        try:
            muts.append(fn(rng, c))
        except Exception:  # noqa: BLE001  (an earlier mutation broke what this one needs)
            muts.append(f"{fn.__name__}: not applicable after the earlier mutations")
    res = Result(index, seed, command, muts)
    argv = commands(c)[command]
    skip = [c["dir"], c["root"] / "predictions"]
    before = snapshot(c["root"], skip)
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    faulthandler.dump_traceback_later(timeout * 3, exit=True)  # a hang inside native code: fail loudly
    signal.setitimer(signal.ITIMER_REAL, timeout)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            res.code = main(argv)
    except CaseTimeout:
        res.problems.append(f"no result within {timeout:.0f} s (hang?)")
    except BaseException as e:  # noqa: BLE001  (anything that escapes main is a finding)
        res.problems.append(f"{type(e).__name__} escaped cli.main: {e}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, old)
        res.seconds = time.perf_counter() - t0
    text = err.getvalue()
    res.error = text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    if res.code is not None:
        if res.code not in EXITS.get(command, {0, 2}):
            res.problems.append(f"exit code {res.code}")
        if res.code == 2 and len(errors) != 1:
            res.problems.append(f"{len(errors)} error: lines")
        if res.code == 0 and errors:
            res.problems.append("error: line with exit code 0")
    if "Traceback" in text:
        res.problems.append("a traceback on stderr")
    after = snapshot(c["root"], skip)
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        res.problems.append(f"written outside the export folder: {[k for k, _ in changed][:5]}")
    if (c["root"] / "PWNED").exists():
        res.problems.append("a pickled shell command ran")
    return res


def run_cases(base: dict, work: Path, cases: int, seed: int, timeout: float = 60.0, keep: bool = False,
              progress: Optional[Callable[[Result], None]] = None) -> list[Result]:
    import torch

    os.environ.setdefault("ALGM_QUIET", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a micro model: more threads only spin (10x slower on a busy machine)
    results = []
    try:
        for i in range(cases):
            r = run_case(base, work, i, seed * 1_000_003 + i, timeout)
            results.append(r)
            if progress:
                progress(r)
            if not keep and not r.problems:
                shutil.rmtree(work / f"c{i:05d}", ignore_errors=True)
    finally:
        torch.set_num_threads(threads)
    return results
