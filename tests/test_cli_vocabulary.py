"""One CLI vocabulary: every command and flag that a message or help text suggests exists, and the
shared options mean the same thing in every command.

Suggestions are collected from the string literals of the package: `algm-export CMD ... --flag`
(the flags after the command up to the end of the quoted command or sentence), and
`re-export with --flag` (the export command). A flag that a message names on its own
(`use --x`, `give --x`) must exist in at least one command.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from algm_export.cli import build_parser
from algm_export.cli import NAMES

ROOT = Path(__file__).resolve().parents[1] / "algm_export"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
SUGGESTION = re.compile(r"algm-export ([a-z][a-z-]*)((?: [a-z]+)?)([^`\n;]*)")


def strings() -> list[tuple[str, str]]:
    out = []
    for f in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
                out.append((str(f.relative_to(ROOT)), text))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.append((str(f.relative_to(ROOT)), node.value))
    return out


def parsers() -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                out[name] = p
                for a in p._actions:
                    if isinstance(a, argparse._SubParsersAction):
                        out.update({f"{name} {n}": q for n, q in a.choices.items()})
    return out


def flags(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions for s in a.option_strings}


def suggestions() -> list[tuple[str, str, str]]:
    """(where, command, flag) for every suggested command line; flag '' for the command alone."""
    out = []
    for where, text in strings():
        for m in SUGGESTION.finditer(text):
            cmd, sub, rest = m.group(1), m.group(2).strip(), m.group(3)
            if cmd.replace("-", "_") not in NAMES:
                continue  # prose: "algm-export run holds ...", "an algm-export checkout"
            name = f"{cmd} {sub}" if cmd == "plugins" and sub else cmd
            out.append((where, name, ""))
            out += [(where, name, fl) for fl in FLAG.findall(rest.replace("...", "~").split(". ")[0])]
        for m in re.finditer(r"re-export with (--[a-z][a-z0-9-]*)", text):
            out.append((where, "export", m.group(1)))
    return out


def test_suggestions_are_found():
    found = {(c, f) for _, c, f in suggestions()}
    assert ("export", "--precision") in found and ("build", "") in found and ("export", "--force") in found


@pytest.mark.parametrize("where,command,flag", sorted(set(suggestions())))
def test_every_suggested_command_and_flag_exists(where, command, flag):
    ps = parsers()
    assert command in ps, f"{where} suggests `algm-export {command}`, which is not a command"
    if flag:
        assert flag in flags(ps[command]), f"{where} suggests `algm-export {command} ... {flag}`: no such option"


def test_flags_named_alone_exist_somewhere():
    every = set().union(*(flags(p) for p in parsers().values()))
    for where, text in strings():
        for m in re.finditer(r"\b(?:use|give|pass|with) (--[a-z][a-z0-9-]*)", text):
            assert m.group(1) in every, f"{where}: {text!r} names {m.group(1)}, which no command has"


def test_shared_options_mean_one_thing():
    ps = parsers()
    for name in ("validate", "bench"):
        images = next(a for a in ps[name]._actions if "--images" in a.option_strings)
        assert images.metavar == "DIR" and images.type is None, name
    assert "--images" not in flags(ps["report"]) and "--merge-pictures" in flags(ps["report"])
    for name in ("export", "build", "validate", "bench"):
        prec = next(a for a in ps[name]._actions if "--precision" in a.option_strings)
        assert tuple(prec.choices) == ("fp32", "fp16"), name
    for name in ("validate", "bench", "build", "predict"):
        assert "--backend" in flags(ps[name]), name
    for name in ("validate", "bench"):  # the thresholds of threshold-input entries (dynamic token mode)
        thr = next(a for a in ps[name]._actions if "--threshold" in a.option_strings)
        assert thr.metavar == "T[,T...]" and thr.default is None, name
        assert ps[name].parse_args(["D", "--threshold", "0.8, 0.9"]).threshold == [0.8, 0.9]


@pytest.mark.parametrize("argv,want", [
    (["validate", "D", "--backend", "ort"], "onnxruntime"),
    (["validate", "D", "--backend", "trt"], "tensorrt"),
    (["validate", "D", "--backend", "tensorrt-rtx"], "tensorrt-rtx"),
    (["bench", "D", "--backend", "torch,ort"], ["torch", "onnxruntime"]),
    (["bench", "D", "--backends", "ort"], ["onnxruntime"]),       # the deprecated spelling
    (["build", "D", "--backend", "trt"], "tensorrt"),
    (["predict", "x.png", "--backend", "onnxruntime"], "onnxruntime"),
])
def test_one_backend_vocabulary(argv, want):
    assert build_parser().parse_args(argv).backend == want


def test_unknown_backend_is_a_usage_error(capsys):
    from algm_export.cli import main

    assert main(["validate", "D", "--backend", "tflite"]) == 2
    assert "unknown backend 'tflite'; use one of torch, onnxruntime, tensorrt, tensorrt-rtx" in capsys.readouterr().err


def test_export_precision_and_its_old_spelling():
    p = build_parser()
    assert p.parse_args(["export", "--out", "D"]).precision == "fp32"
    assert p.parse_args(["export", "--out", "D", "--precision", "fp16"]).precision == "fp16"
    assert p.parse_args(["export", "--out", "D", "--fp16"]).precision == "fp16"
