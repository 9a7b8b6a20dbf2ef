"""mmsegmentation / mmengine Python configs, parsed and never executed.

An mmsegmentation config is a Python file whose top-level assignments are the settings
(`model = dict(type='EncoderDecoder', backbone=dict(...), ...)`), with `_base_` naming the
files it inherits from. mmengine runs such a file with `exec`; this module reads it with
`ast.parse` and evaluates only literal forms, so a config can be inspected without trusting it:

* `dict(k=v, **other)` calls and `len(x)` of a value built here (the only calls), `{k: v}` / `[...]` / `(...)` / `{...}` literals
  (`*x` / `**x` splats of values built here),
* numbers, strings (and f-strings of such values), `True` / `False` / `None`,
* unary `-` / `+` / `not`, arithmetic on numbers (`+ - * / // % **`), `+` on strings, lists
  and tuples, list / tuple / string repetition by an int (sizes bounded),
* names that refer to earlier top-level assignments of the same file (`norm_cfg = dict(...)`
  then `norm_cfg=norm_cfg`), constant subscripts of such values (`crop_size[0]`),
* `_base_.a.b` / `_base_['a']` and `{{_base_.a.b}}` references to the inherited settings, and
  the predefined `{{ fileDirname }}`-style placeholders mmengine substitutes.

Everything else (other calls, attribute access, lambdas, comprehensions, imports, `if`,
`def`, ...) raises `ConfigError` naming the file, line and construct. `_base_` files (a string
or a list of strings, resolved relative to the config's folder; `.py`, `.json`, `.yaml`) are
merged the way mmengine's `Config.fromfile` does: bases in order (a key defined by two bases
is an error), then the file's own settings on top; dicts merge recursively, `_delete_=True` in
a child dict replaces the base dict instead; every other value (lists included) replaces.

`parse_config(path_or_text)` also accepts the config text that training stores in a
checkpoint (`meta['cfg']` in mmsegmentation 1.x, `meta['config']` in 0.x: the config's
`pretty_text`, already flattened); see `config_text_from_meta`.
"""

from __future__ import annotations

import ast
import copy
import json
import operator
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from algm_export.core.errors import ConfigError

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
PARSED_NOT_EXECUTED = "mmsegmentation configs are parsed here, never executed"
MAX_ITEMS = 1_000_000          # longest string / list a repetition or concatenation may build
MAX_INT_BITS = 4096            # largest integer arithmetic may build
MAX_BASE_DEPTH = 32            # longest _base_ chain

_BIN_OPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_NUMBER = (int, float)
_PLACEHOLDER_BASE = re.compile(r"\{\{\s*_base_\.([\w.]+)\s*\}\}")
_PREDEFINED = ("fileDirname", "fileBasename", "fileBasenameNoExtension", "fileExtname")


class _Base:
    """The merged settings of the `_base_` files, as the name `_base_` sees them."""

    def __init__(self, cfg: dict):
        self.cfg = cfg


class _Evaluator:
    """Evaluates the literal forms of one config file's top-level statements."""

    def __init__(self, where: str, base: dict):
        self.where = where
        self.env: dict[str, Any] = {}
        self.base = _Base(base)
        self.scopes: list[dict] = []  # comprehension variables

    # -- errors
    def fail(self, node: ast.AST, what: str) -> ConfigError:
        line = getattr(node, "lineno", None)
        at = f"{self.where}, line {line}" if line else self.where
        return ConfigError(
            f"{at}: {what} ({PARSED_NOT_EXECUTED}: only dict(...) and len(...) calls, literals, names assigned "
            f"earlier in the file, arithmetic on numbers and _base_ references are evaluated)"
        )

    def refuse(self, node: ast.AST) -> ConfigError:
        return self.fail(node, f"{_describe(node)} is not allowed")

    # -- statements
    def run(self, tree: ast.Module) -> dict:
        for stmt in tree.body:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
                continue  # a docstring
            if isinstance(stmt, ast.Pass):
                continue
            if isinstance(stmt, ast.Assign):
                targets = stmt.targets
                value_node = stmt.value
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None and stmt.simple:
                targets = [stmt.target]
                value_node = stmt.value
            else:
                raise self.refuse(stmt)
            for t in targets:
                if not isinstance(t, ast.Name):
                    raise self.fail(t, f"assignment to {_describe(t)} is not allowed (only `name = value`)")
                if t.id == "dict":
                    raise self.fail(t, "assigning the name 'dict' is not allowed")
            if len(targets) == 1 and targets[0].id == BASE_KEY:
                continue  # read by _base_files
            value = self.eval(value_node)
            for t in targets:
                if t.id == BASE_KEY:
                    raise self.fail(t, "`_base_` must be assigned on its own")
                self.env[t.id] = copy.deepcopy(value) if len(targets) > 1 else value
        return self.env

    # -- expressions
    def eval(self, node: ast.AST) -> Any:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise self.refuse(node)
        return method(node)

    def _Constant(self, node: ast.Constant):
        v = node.value
        if isinstance(v, (bool, int, float, str)) or v is None:
            return v
        raise self.fail(node, f"the constant {type(v).__name__} {v!r} is not allowed")

    def _Name(self, node: ast.Name):
        for scope in reversed(self.scopes):
            if node.id in scope:
                return copy.deepcopy(scope[node.id])
        if node.id == BASE_KEY:
            return self.base
        if node.id in self.env:
            return copy.deepcopy(self.env[node.id])
        raise self.fail(node, f"the name {node.id!r} is not assigned earlier in this file")

    def _Attribute(self, node: ast.Attribute):
        obj = self.eval(node.value)
        if isinstance(obj, _Base):
            return self._base_lookup(node, obj.cfg, node.attr)
        if isinstance(obj, _BaseValue):
            return self._base_lookup(node, obj.value, node.attr)
        raise self.fail(node, f"attribute access `.{node.attr}` is not allowed")

    def _base_lookup(self, node, cfg, key):
        if not isinstance(cfg, dict) or key not in cfg:
            raise self.fail(node, f"_base_ has no setting {key!r}")
        v = cfg[key]
        return _BaseValue(v) if isinstance(v, dict) else copy.deepcopy(v)

    def _Subscript(self, node: ast.Subscript):
        obj = self.eval(node.value)
        key = self.eval(node.slice)
        if isinstance(obj, _Base):
            return self._base_lookup(node, obj.cfg, key)
        if isinstance(obj, _BaseValue):
            return self._base_lookup(node, obj.value, key)
        if isinstance(key, slice) and isinstance(obj, (list, tuple, str)):
            return obj[key]
        if isinstance(obj, (list, tuple, str)) and isinstance(key, int) and not isinstance(key, bool):
            try:
                return obj[key]
            except IndexError:
                raise self.fail(node, f"index {key} is out of range") from None
        if isinstance(obj, dict) and (isinstance(key, (str, int, float, bool, tuple)) or key is None):
            if key not in obj:
                raise self.fail(node, f"key {key!r} is not in the dict")
            return obj[key]
        raise self.fail(node, f"subscript [{key!r}] of a {type(obj).__name__} is not allowed")

    def _Slice(self, node: ast.Slice):
        parts = [None if p is None else self.eval(p) for p in (node.lower, node.upper, node.step)]
        if not all(p is None or (isinstance(p, int) and not isinstance(p, bool)) for p in parts):
            raise self.fail(node, "slice bounds must be integers")
        return slice(*parts)

    def _Call(self, node: ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id == "len":
            return self._len(node)
        if not (isinstance(node.func, ast.Name) and node.func.id == "dict"):
            raise self.fail(node, f"the call {_call_name(node)}(...) is not allowed (only dict(...) and len(...))")
        if len(node.args) > 1 or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(node, "dict(...) takes at most one positional argument (a dict)")
        out: dict = {}
        if node.args:
            first = self._plain(node.args[0], self.eval(node.args[0]))
            if not isinstance(first, dict):
                raise self.fail(node.args[0], "dict(x) needs a dict x here")
            out.update(first)
        for kw in node.keywords:
            if kw.arg is None:
                value = self._plain(kw.value, self.eval(kw.value))
                if not isinstance(value, dict):
                    raise self.fail(kw.value, "`**` needs a dict")
                out.update(value)
            else:
                out[kw.arg] = self._plain(kw.value, self.eval(kw.value))
        return out

    def _len(self, node: ast.Call) -> int:
        """`len(x)` of a list, tuple, string or dict built here (SegViT: `use_stages=len(out_indices)`)."""
        if len(node.args) != 1 or node.keywords or isinstance(node.args[0], ast.Starred):
            raise self.fail(node, "len(...) takes exactly one positional argument")
        value = self._plain(node.args[0], self.eval(node.args[0]))
        if not isinstance(value, (list, tuple, str, dict)):
            raise self.fail(node.args[0], f"len() of a {type(value).__name__} is not allowed")
        return len(value)

    def _Dict(self, node: ast.Dict):
        out: dict = {}
        for k, v in zip(node.keys, node.values):
            value = self._plain(v, self.eval(v))
            if k is None:
                if not isinstance(value, dict):
                    raise self.fail(v, "`**` needs a dict")
                out.update(value)
                continue
            key = self.eval(k)
            if not isinstance(key, (str, int, float, bool, tuple)) and key is not None:
                raise self.fail(k, f"a dict key of type {type(key).__name__} is not allowed")
            out[key] = value
        return out

    def _items(self, elts) -> list:
        out = []
        for e in elts:
            if isinstance(e, ast.Starred):
                v = self._plain(e.value, self.eval(e.value))
                if not isinstance(v, (list, tuple)):
                    raise self.fail(e, "`*` needs a list or tuple")
                out.extend(v)
            else:
                out.append(self._plain(e, self.eval(e)))
        if len(out) > MAX_ITEMS:
            raise self.fail(elts[0] if elts else None, "the literal is too long")
        return out

    def _List(self, node: ast.List):
        return self._items(node.elts)

    def _Tuple(self, node: ast.Tuple):
        return tuple(self._items(node.elts))

    def _Set(self, node: ast.Set):
        items = self._items(node.elts)
        try:
            return set(items)
        except TypeError:
            raise self.fail(node, "a set of unhashable values (a `{{...}}` placeholder mmengine "
                                  "would substitute?) is not allowed") from None

    def _ListComp(self, node: ast.ListComp):
        """`[expr for name in seq]`: one loop over a list / tuple / string built here, no `if`."""
        if len(node.generators) != 1:
            raise self.fail(node, "a comprehension with more than one `for` is not allowed")
        gen = node.generators[0]
        if gen.ifs or gen.is_async or not isinstance(gen.target, ast.Name):
            raise self.fail(node, "only `[expr for name in sequence]` comprehensions (no `if`) are allowed")
        seq = self._plain(gen.iter, self.eval(gen.iter))
        if not isinstance(seq, (list, tuple, str)):
            raise self.fail(gen.iter, f"a comprehension over a {type(seq).__name__} is not allowed")
        out = []
        for item in seq:
            self.scopes.append({gen.target.id: item})
            try:
                out.append(self._plain(node.elt, self.eval(node.elt)))
            finally:
                self.scopes.pop()
        return out

    def _JoinedStr(self, node: ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value))
                continue
            if not isinstance(v, ast.FormattedValue):
                raise self.refuse(v)
            value = self._plain(v.value, self.eval(v.value))
            if not isinstance(value, (str, int, float, bool)) and value is not None:
                raise self.fail(v, f"formatting a {type(value).__name__} in an f-string is not allowed")
            if v.conversion == ord("r"):
                value = repr(value)
            elif v.conversion == ord("s"):
                value = str(value)
            elif v.conversion == ord("a"):
                value = ascii(value)
            spec = "" if v.format_spec is None else self.eval(v.format_spec)
            try:
                parts.append(format(value, spec))
            except (ValueError, TypeError) as e:
                raise self.fail(v, f"bad format spec {spec!r}: {e}") from None
        return "".join(parts)

    def _UnaryOp(self, node: ast.UnaryOp):
        v = self._plain(node.operand, self.eval(node.operand))
        if isinstance(node.op, ast.Not):
            return not v
        if isinstance(node.op, (ast.USub, ast.UAdd)) and isinstance(v, _NUMBER):
            return -v if isinstance(node.op, ast.USub) else +v
        raise self.fail(node, f"unary {type(node.op).__name__} on a {type(v).__name__} is not allowed")

    def _BinOp(self, node: ast.BinOp):
        op = _BIN_OPS.get(type(node.op))
        if op is None:
            raise self.fail(node, f"the operator {type(node.op).__name__} is not allowed")
        a = self._plain(node.left, self.eval(node.left))
        b = self._plain(node.right, self.eval(node.right))
        if isinstance(a, _NUMBER) and isinstance(b, _NUMBER):
            if op is operator.pow and isinstance(a, int) and isinstance(b, int) and b > 0:
                if abs(a) > 1 and b * max(abs(a).bit_length(), 1) > MAX_INT_BITS:
                    raise self.fail(node, "the power is too large")
            if op is operator.mul and isinstance(a, int) and isinstance(b, int):
                if abs(a).bit_length() + abs(b).bit_length() > MAX_INT_BITS:
                    raise self.fail(node, "the product is too large")
            try:
                out = op(a, b)
            except (ArithmeticError, ValueError) as e:
                raise self.fail(node, f"arithmetic error: {e}") from None
            if isinstance(out, complex):
                raise self.fail(node, "a complex result is not allowed")
            return out
        if op is operator.add and type(a) is type(b) and isinstance(a, (str, list, tuple)):
            if len(a) + len(b) > MAX_ITEMS:
                raise self.fail(node, "the result is too long")
            return a + b
        if op is operator.mul:
            seq, n = (a, b) if isinstance(b, int) and not isinstance(b, bool) else (b, a)
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and not isinstance(n, bool):
                if len(seq) * max(n, 0) > MAX_ITEMS:
                    raise self.fail(node, "the repetition is too long")
                return seq * n
        raise self.fail(node, f"{type(node.op).__name__} on {type(a).__name__} and {type(b).__name__} "
                              "is not allowed")

    def _plain(self, node, value):
        """A value to store: `_base_` dict references become (copied) dicts."""
        if isinstance(value, _BaseValue):
            return copy.deepcopy(value.value)
        if isinstance(value, _Base):
            raise self.fail(node, "`_base_` itself cannot be stored (reference one of its settings)")
        return value


class _BaseValue:
    """A dict reached through `_base_` (so that `_base_.model.backbone` keeps looking up)."""

    def __init__(self, value):
        self.value = value


def _call_name(node: ast.Call) -> str:
    try:
        return ast.unparse(node.func)
    except Exception:  # pragma: no cover - unparse of any parsed expression works
        return type(node.func).__name__


_CONSTRUCTS = {
    "Import": "an import", "ImportFrom": "an import", "Lambda": "a lambda", "FunctionDef": "a function definition",
    "AsyncFunctionDef": "a function definition", "ClassDef": "a class definition", "ListComp": "a comprehension",
    "SetComp": "a comprehension", "DictComp": "a comprehension", "GeneratorExp": "a generator expression",
    "If": "an if statement", "IfExp": "a conditional expression", "For": "a for loop", "While": "a while loop",
    "With": "a with statement", "Try": "a try statement", "Compare": "a comparison", "BoolOp": "and/or",
    "NamedExpr": "an assignment expression", "Await": "await", "Yield": "yield", "AugAssign": "an augmented assignment",
    "Delete": "del", "Global": "global", "Nonlocal": "nonlocal", "Assert": "assert", "Raise": "raise",
    "Expr": "an expression statement",
}


def _describe(node: ast.AST) -> str:
    name = type(node).__name__
    text = _CONSTRUCTS.get(name, f"the construct {name}")
    try:
        src = ast.unparse(node)
    except Exception:  # pragma: no cover
        src = ""
    src = src.splitlines()[0] if src else ""
    if len(src) > 60:
        src = src[:57] + "..."
    return f"{text} `{src}`" if src else text


# ----------------------------------------------------------------------------- merging

def merge_a_into_b(a: Mapping, b: Mapping, where: str = "config") -> dict:
    """mmengine's `Config._merge_a_into_b` (non-inplace): `a`'s values over `b`'s."""
    out = dict(b)
    for k, v in a.items():
        if isinstance(v, dict):
            v = dict(v)
            delete = bool(v.pop(DELETE_KEY, False))
            if k in out and not delete:
                if not isinstance(out[k], dict):
                    raise ConfigError(
                        f"{where}: {k!r} is a dict here but a {type(out[k]).__name__} in the base config; "
                        f"set `{DELETE_KEY}=True` in it to replace the base value"
                    )
                out[k] = merge_a_into_b(v, out[k], where)
            else:
                out[k] = _strip_delete(v)
        else:
            out[k] = v
    return out


def _strip_delete(v):
    if isinstance(v, dict):
        return {k: _strip_delete(x) for k, x in v.items() if k != DELETE_KEY}
    if isinstance(v, list):
        return [_strip_delete(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_strip_delete(x) for x in v)
    return v


# ----------------------------------------------------------------------------- entry points

def _substitute_text(text: str, path: Optional[Path]) -> str:
    """mmengine's text-level placeholders: `{{ fileDirname }}`... and `{{_base_.x}}`."""
    if path is not None:
        values = {
            "fileDirname": str(path.parent), "fileBasename": path.name,
            "fileBasenameNoExtension": path.stem, "fileExtname": path.suffix,
        }
        for name in _PREDEFINED:
            text = re.sub(r"\{\{\s*" + name + r"\s*\}\}", values[name].replace("\\", "/"), text)
    return _PLACEHOLDER_BASE.sub(lambda m: "_base_." + m.group(1), text)


def _parse_text(text: str, where: str, path: Optional[Path], base_chain: tuple) -> dict:
    text = _substitute_text(text, path)
    try:
        tree = ast.parse(text, filename=where)
    except SyntaxError as e:
        raise ConfigError(f"{where}, line {e.lineno}: not valid Python syntax: {e.msg}") from None
    base_files = _base_files(tree, where)
    base: dict = {}
    if base_files:
        if path is None:
            raise ConfigError(f"{where}: `_base_` files {base_files} cannot be resolved for config text "
                              "(no folder to look in); pass the config file instead")
        base = _read_bases(base_files, path, base_chain, where)
    env = _Evaluator(where, base).run(tree)
    env.pop(BASE_KEY, None)
    own = {k: v for k, v in env.items() if not k.startswith("__")}
    merged = merge_a_into_b(own, base, where)
    return {k: _strip_delete(v) for k, v in merged.items() if not k.startswith("__")}


def _read_bases(names: list[str], path: Path, base_chain: tuple, where: str) -> dict:
    """The settings of a config's `_base_` files (beside `path`), each read once per chain; a key may
    come from one base only, as in mmengine."""
    base: dict = {}
    for name in names:
        if "::" in name:
            raise ConfigError(f"{where}: the base {name!r} names a package config (`scope::path`), "
                              "which is not supported; copy that file beside the config and name it by path")
        bpath = (path.parent / name).resolve()
        if not bpath.is_file():
            raise ConfigError(f"{where}: the base config {name!r} was not found (looked for {bpath})")
        if bpath in base_chain or len(base_chain) >= MAX_BASE_DEPTH:
            raise ConfigError(f"{where}: the base config {name!r} inherits from itself ({bpath})")
        cfg = _parse_file(bpath, base_chain + (bpath,))
        dup = set(base) & set(cfg)
        if dup:
            raise ConfigError(f"{where}: the bases define the same settings {sorted(dup)} "
                              f"(a key may come from one base only, as in mmengine); last: {bpath}")
        base.update(cfg)
    return base


def _base_files(tree: ast.Module, where: str) -> list[str]:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == BASE_KEY for t in stmt.targets):
            v = stmt.value
            if isinstance(v, ast.Constant) and isinstance(v.value, str):
                return [v.value]
            if isinstance(v, (ast.List, ast.Tuple)) and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in v.elts):
                return [e.value for e in v.elts]
            raise ConfigError(f"{where}, line {stmt.lineno}: `_base_` must be a string or a list of strings "
                              f"({PARSED_NOT_EXECUTED})")
    return []


def _parse_file(path: Path, base_chain: tuple) -> dict:
    where = str(path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the config {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the config {path} is not UTF-8 text") from None
    if suffix == ".py":
        return _parse_text(text, where, path, base_chain)
    if suffix in (".json", ".yaml", ".yml"):
        try:
            if suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as e:
            raise ConfigError(f"{where}: not valid {suffix[1:]}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: a config must hold a mapping at the top")
        bases = data.pop(BASE_KEY, [])
        bases = [bases] if isinstance(bases, str) else list(bases)
        base = _read_bases([str(name) for name in bases], path, base_chain, where)
        return _strip_delete(merge_a_into_b(data, base, where))
    raise ConfigError(f"{where}: a config must be a .py, .json, .yaml or .yml file")


def parse_config(source: Union[str, os.PathLike], where: Optional[str] = None) -> dict:
    """The settings of an mmsegmentation config: a file path, or config text (e.g. from a checkpoint).

    A string is taken as a path when it names an existing file or ends in `.py`/`.json`/`.yaml`
    without a newline; otherwise as config text (`where` names it in errors).
    """
    if isinstance(source, os.PathLike) or (isinstance(source, str) and _looks_like_path(source)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"the config file {path} does not exist")
        resolved = path.resolve()
        return _parse_file(resolved, (resolved,))
    if not isinstance(source, str):
        raise ConfigError(f"a config must be a path or text, not {type(source).__name__}")
    return _parse_text(source, where or "<config text>", None, ())


def _looks_like_path(s: str) -> bool:
    if "\n" in s:
        return False
    if os.path.isfile(os.path.expanduser(s)):
        return True
    return s.strip().lower().endswith((".py", ".json", ".yaml", ".yml")) and "=" not in s


def config_text_from_meta(meta: Any) -> Optional[str]:
    """The config text a checkpoint's `meta` holds: `cfg` (1.x) or `config` (0.x), else None."""
    if not isinstance(meta, Mapping):
        return None
    for key in ("cfg", "config"):
        v = meta.get(key)
        if isinstance(v, str) and v.strip():
            return v
    return None
