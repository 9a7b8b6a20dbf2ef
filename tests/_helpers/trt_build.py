"""Small stand-in exports for the TensorRT build tests (no tests in here).

Until the exporter's real models are used, `make_export` writes a folder shaped like a real
export: ``baseline.onnx`` and one ONNX per threshold setting (plus ``*.fp16.onnx``), each a tiny
ViT-like segmenter (patch embed, class token, attention, linear head, unmerge by ``assign``,
bilinear upsampling) with input ``image`` [B, 3, 16, 16] float32 and output ``logits``
[B, n_cls, 16, 16] float32; the settings also output ``merge_stats`` int32 [B, 2, 2]. Their
``algm::AlgmClap`` / ``algm::AlgmGbm`` nodes have the contract's inputs, outputs and attributes
(ALGM.md section 3) and model-local function bodies (domain ``algm``) built from standard ops,
like the exporter's. The bodies are shape-correct stand-ins, not the real merge arithmetic:
these models test building, not numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

from algm_export.core.manifest import save_manifest, sha256_file

OPSET = 18
IMAGE, PATCH, DIM, N_CLS = 16, 4, 8, 3
GRID = IMAGE // PATCH
N = GRID * GRID
P = 1                 # class token
C1, C2 = 10, 7        # capacities: W=4 <= C1 <= N; C1+1-ceil((P+C1)/2) <= C2 <= C1


def _ref(out: str, attr: str, kind: str) -> onnx.NodeProto:
    """Constant whose value is the calling node's attribute `attr` (value_int / value_float)."""
    node = h.make_node("Constant", [], [out])
    typ = onnx.AttributeProto.INT if kind == "value_int" else onnx.AttributeProto.FLOAT
    node.attribute.append(onnx.AttributeProto(name=kind, ref_attr_name=attr, type=typ))
    return node


def _stats(thr_attr: str) -> list:
    """stats [B, 2] int32 = (#tokens whose fp32 norm > the attribute, 0)."""
    return [h.make_node("Cast", ["x"], ["xf"], to=T.FLOAT), _ref("thr", thr_attr, "value_float"),
            h.make_node("Constant", [], ["ax_last"], value_ints=[-1]),
            h.make_node("ReduceL2", ["xf", "ax_last"], ["nrm"], keepdims=0),
            h.make_node("Greater", ["nrm", "thr"], ["hit"]),
            h.make_node("Cast", ["hit"], ["hiti"], to=T.INT32),
            h.make_node("Constant", [], ["ax1"], value_ints=[1]),
            h.make_node("ReduceSum", ["hiti", "ax1"], ["cnt"], keepdims=1),
            h.make_node("Sub", ["cnt", "cnt"], ["zero"]),
            h.make_node("Concat", ["cnt", "zero"], ["stats"], axis=1)]


def _keep_first() -> list:
    """end = num_prefix + capacity, as a 1-d tensor, for Slice(..., 0:end, axis 1)."""
    return [_ref("cap", "capacity", "value_int"), _ref("pre", "num_prefix", "value_int"),
            h.make_node("Add", ["cap", "pre"], ["end0"]),
            h.make_node("Constant", [], ["shape1"], value_ints=[1]),
            h.make_node("Reshape", ["end0", "shape1"], ["end"]),
            h.make_node("Constant", [], ["zero1"], value_ints=[0]),
            h.make_node("Constant", [], ["axis1"], value_ints=[1])]


def algm_functions() -> list:
    common = ["plugin_version", "plugin_namespace"]
    clap = h.make_function(
        "algm", "AlgmClap", ["x"], ["y", "size", "assign", "stats"],
        _keep_first() + _stats("threshold") + [
            h.make_node("Slice", ["x", "zero1", "end", "axis1"], ["y"]),
            h.make_node("Shape", ["y"], ["ysh"], start=0, end=2),
            h.make_node("ConstantOfShape", ["ysh"], ["size"],
                        value=numpy_helper.from_array(np.array([1.0], np.float32))),
            _ref("gh", "grid_h", "value_int"), _ref("gw", "grid_w", "value_int"),
            h.make_node("Mul", ["gh", "gw"], ["n0"]),
            h.make_node("Reshape", ["n0", "shape1"], ["n1"]),
            h.make_node("Shape", ["x"], ["b1"], start=0, end=1),
            h.make_node("Concat", ["b1", "n1"], ["ash"], axis=0),
            h.make_node("ConstantOfShape", ["ash"], ["assign"],
                        value=numpy_helper.from_array(np.array([0], np.int32)))],
        [h.make_opsetid("", OPSET)],
        attributes=["grid_h", "grid_w", "window_h", "window_w", "num_prefix", "capacity",
                    "threshold"] + common)
    gbm = h.make_function(
        "algm", "AlgmGbm", ["x", "size_in", "assign_in"], ["y", "size", "assign", "stats"],
        _keep_first() + _stats("divisor") + [
            h.make_node("Slice", ["x", "zero1", "end", "axis1"], ["y"]),
            h.make_node("Slice", ["size_in", "zero1", "end", "axis1"], ["size"]),
            h.make_node("Identity", ["assign_in"], ["assign"])],
        [h.make_opsetid("", OPSET)],
        attributes=["num_prefix", "capacity", "divisor"] + common)
    return [clap, gbm]


def make_model(path: str | Path, *, algm: bool = True, fp16: bool = False, seed: int = 0,
               threshold: float = 0.9, unknown_op: str | None = None, functions: bool = True) -> Path:
    """Write one tiny segmenter ONNX. `unknown_op`: add an ``algm`` node with no function body."""
    rng = np.random.default_rng(seed)
    ft, et = (np.float16, T.FLOAT16) if fp16 else (np.float32, T.FLOAT)
    inits = []

    def w(name, *shape, scale=0.3):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(ft), name))

    def i64(name, *vals):
        inits.append(numpy_helper.from_array(np.array(vals, np.int64), name))

    w("pe_w", DIM, 3, PATCH, PATCH)
    w("pe_b", DIM)
    w("cls", 1, 1, DIM)
    w("head_w", DIM, N_CLS)
    w("head_b", N_CLS)
    inits.append(numpy_helper.from_array(np.array(DIM ** -0.5, ft), "scale"))
    i64("tok_shape", 0, DIM, -1)
    i64("grid_shape", 0, N_CLS, GRID, GRID)
    i64("one_dim", 1, DIM)
    i64("n_ncls", N, N_CLS)
    i64("one", 1)
    i64("big", 1 << 30)
    i64("ax1", 1)
    i64("ax_last", -1)
    inits.append(numpy_helper.from_array(np.array([1, 1, PATCH, PATCH], np.float32), "up"))

    nodes = [h.make_node("Cast", ["image"], ["img"], to=et) if fp16 else h.make_node("Identity", ["image"], ["img"]),
             h.make_node("Conv", ["img", "pe_w", "pe_b"], ["pe"], strides=[PATCH, PATCH], name="patch_embed"),
             h.make_node("Reshape", ["pe", "tok_shape"], ["pe_t"]),
             h.make_node("Transpose", ["pe_t"], ["patches"], perm=[0, 2, 1]),
             h.make_node("Shape", ["img"], ["b1"], start=0, end=1),
             h.make_node("Concat", ["b1", "one_dim"], ["cls_shape"], axis=0),
             h.make_node("Expand", ["cls", "cls_shape"], ["cls_b"]),
             h.make_node("Concat", ["cls_b", "patches"], ["x0"], axis=1)]

    def block(i, x):
        w(f"wq{i}", DIM, DIM)
        w(f"wk{i}", DIM, DIM)
        w(f"wv{i}", DIM, DIM)
        nodes.extend([
            h.make_node("MatMul", [x, f"wq{i}"], [f"q{i}"]), h.make_node("MatMul", [x, f"wk{i}"], [f"k{i}"]),
            h.make_node("MatMul", [x, f"wv{i}"], [f"v{i}"]),
            h.make_node("Transpose", [f"k{i}"], [f"kt{i}"], perm=[0, 2, 1]),
            h.make_node("MatMul", [f"q{i}", f"kt{i}"], [f"s0{i}"]),
            h.make_node("Mul", [f"s0{i}", "scale"], [f"s{i}"]),
            h.make_node("Softmax", [f"s{i}"], [f"a{i}"], axis=-1),
            h.make_node("MatMul", [f"a{i}", f"v{i}"], [f"av{i}"]),
            h.make_node("Add", [x, f"av{i}"], [f"blk{i}"], name=f"block{i}")])
        return f"blk{i}"

    outputs = [h.make_tensor_value_info("logits", T.FLOAT, ["B", N_CLS, IMAGE, IMAGE])]
    x = block(0, "x0")
    common = dict(domain="algm", plugin_version="1", plugin_namespace="algm")
    if algm:
        nodes.append(h.make_node("AlgmClap", [x], ["x_c", "size_c", "assign_c", "st1"], name="algm_clap",
                                 grid_h=GRID, grid_w=GRID, window_h=2, window_w=2, num_prefix=P,
                                 capacity=C1, threshold=threshold, **common))
        x = block(1, "x_c")
        nodes += [h.make_node("AlgmGbm", [x, "size_c", "assign_c"], ["x_g", "size_g", "assign", "st2"],
                              name="algm_gbm", num_prefix=P, capacity=C2, divisor=5.0, **common),
                  h.make_node("Unsqueeze", ["st1", "ax1"], ["st1u"]),
                  h.make_node("Unsqueeze", ["st2", "ax1"], ["st2u"]),
                  h.make_node("Concat", ["st1u", "st2u"], ["merge_stats"], axis=1)]
        x = "x_g"
        outputs.append(h.make_tensor_value_info("merge_stats", T.INT32, ["B", 2, 2]))
    else:
        x = block(1, x)
    if unknown_op:
        nodes.append(h.make_node(unknown_op, [x], ["x_u"], name="algm_mystery", **common))
        x = "x_u"
    nodes += [h.make_node("Slice", [x, "one", "big", "ax1"], ["tok"]),          # drop the class token
              h.make_node("MatMul", ["tok", "head_w"], ["lt0"]),
              h.make_node("Add", ["lt0", "head_b"], ["lt"])]
    if algm:  # unmerge: every patch takes the logits of the token that holds it
        nodes += [h.make_node("Unsqueeze", ["assign", "ax_last"], ["asg"]),
                  h.make_node("Concat", ["b1", "n_ncls"], ["gshape"], axis=0),
                  h.make_node("Expand", ["asg", "gshape"], ["idx"]),
                  h.make_node("GatherElements", ["lt", "idx"], ["lp"], axis=1)]
    else:
        nodes.append(h.make_node("Identity", ["lt"], ["lp"]))
    nodes += [h.make_node("Transpose", ["lp"], ["ltt"], perm=[0, 2, 1]),
              h.make_node("Reshape", ["ltt", "grid_shape"], ["lg"]),
              h.make_node("Resize", ["lg", "", "up"], ["lup"], mode="linear"),
              h.make_node("Cast", ["lup"], ["logits"], to=T.FLOAT) if fp16 else h.make_node("Identity", ["lup"], ["logits"])]
    graph = h.make_graph(nodes, "tiny_segmenter",
                         [h.make_tensor_value_info("image", T.FLOAT, ["B", 3, IMAGE, IMAGE])], outputs, inits)
    opsets = [h.make_opsetid("", OPSET)] + ([h.make_opsetid("algm", 1)] if algm or unknown_op else [])
    model = h.make_model(graph, opset_imports=opsets, functions=algm_functions() if (algm and functions) else [])
    model.ir_version = 10
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def make_export(out: str | Path, thresholds=(0.9, 0.95), fp16: bool = True) -> Path:
    """A minimal export folder with its manifest (format algm-export/1)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def entry(name, algm, **extra):
        kw = {"threshold": extra["threshold"]} if algm else {}
        e = {"name": name, "onnx": f"{name}.onnx", "precision": "fp32", **extra}
        e["sha256"] = sha256_file(make_model(out / e["onnx"], algm=algm, **kw))
        if fp16:
            e["onnx_fp16"] = f"{name}.fp16.onnx"
            e["sha256_fp16"] = sha256_file(make_model(out / e["onnx_fp16"], algm=algm, fp16=True, **kw))
        return e

    data = {"created": "2026-11-24T10:00:00Z",
            "model": {"source": "test:tiny", "checkpoint_sha256": None, "n_cls": N_CLS,
                      "image_size": [IMAGE, IMAGE], "patch_size": PATCH, "grid": [GRID, GRID],
                      "num_prefix": P, "normalization": "vit", "backbone": "tiny", "decoder": "linear"},
            "baseline": entry("baseline", False),
            "settings": [entry(f"t{t:.3f}", True, threshold=t, window=[2, 2], layers=[1, 2],
                               policy="per_image", capacities=[C1, C2]) for t in thresholds],
            "engines": [], "versions": {}}
    save_manifest(out, data)
    return out


def replace_onnx(export_dir: Path, setting: str, **model_kw) -> None:
    """Rewrite one setting's fp32 ONNX (e.g. with `unknown_op`) and fix its sha256 in the manifest."""
    import json

    data = json.loads((export_dir / "manifest.json").read_text())
    for e in [data["baseline"]] + data["settings"]:
        if e["name"] == setting:
            e["sha256"] = sha256_file(make_model(export_dir / e["onnx"], **model_kw))
    save_manifest(export_dir, data)


def register_python_algm_plugins(trt, ops=("AlgmClap", "AlgmGbm")) -> list:
    """Register build-only TensorRT Python plugins (namespace ``algm``, version ``1``) for `ops`.

    They stand in for the C++ plugin library when testing the builder's plugin path: the ops'
    output shapes and types (ALGM.md section 3) from the node's attributes; `enqueue` is never
    called (engines are only built here). Keep the returned creators alive while building.
    """

    class Plugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        def __init__(self, name, attrs):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.num_outputs = 4
            self.plugin_namespace = "algm"
            self.plugin_name = name
            self.plugin_version = "1"
            self.attrs = attrs

        def get_capability_interface(self, _type):
            return self

        def get_output_data_types(self, input_types):
            return [input_types[0], trt.DataType.FLOAT, trt.DataType.INT32, trt.DataType.INT32]

        def get_output_shapes(self, inputs, _shape_inputs, eb):
            b = inputs[0][0]
            y = trt.DimsExprs(3)
            y[0], y[1], y[2] = b, eb.constant(self.attrs["num_prefix"] + self.attrs["capacity"]), inputs[0][2]
            size = trt.DimsExprs(2)
            size[0], size[1] = b, y[1]
            assign = trt.DimsExprs(2)
            n = (self.attrs["grid_h"] * self.attrs["grid_w"]) if self.plugin_name == "AlgmClap" else None
            assign[0], assign[1] = b, (eb.constant(n) if n else inputs[2][1])
            stats = trt.DimsExprs(2)
            stats[0], stats[1] = b, eb.constant(2)
            return [y, size, assign, stats]

        def supports_format_combination(self, pos, in_out, num_inputs):
            d = in_out[pos].desc
            if d.format != trt.TensorFormat.LINEAR:
                return False
            if pos == 0:
                return d.type in (trt.DataType.FLOAT, trt.DataType.HALF)
            if pos == num_inputs:                       # y: like x
                return d.type == in_out[0].desc.type
            role = ["x", "size", "assign"][pos] if pos < num_inputs else ["y", "size", "assign", "stats"][pos - num_inputs]
            return d.type == (trt.DataType.FLOAT if role == "size" else trt.DataType.INT32)

        def configure_plugin(self, _inp, _out):
            pass

        def on_shape_change(self, _inp, _out):
            pass

        def get_fields_to_serialize(self):
            return trt.PluginFieldCollection([])

        def enqueue(self, *args):
            raise RuntimeError("build-only test plugin")

        def attach_to_context(self, _ctx):
            return self.clone()

        def set_tactic(self, _tactic):
            pass

        def clone(self):
            return Plugin(self.plugin_name, dict(self.attrs))

    class Creator(trt.IPluginCreatorV3One):
        def __init__(self, name):
            trt.IPluginCreatorV3One.__init__(self)
            self.name = name
            self.plugin_namespace = "algm"
            self.plugin_version = "1"
            # The ONNX parser passes only the attributes a creator declares here.
            ints = ["grid_h", "grid_w", "window_h", "window_w", "num_prefix", "capacity"]
            self.field_names = trt.PluginFieldCollection(
                [trt.PluginField(a, np.zeros(1, np.int32), trt.PluginFieldType.INT32) for a in ints]
                + [trt.PluginField(a, np.zeros(1, np.float32), trt.PluginFieldType.FLOAT32)
                   for a in ("threshold", "divisor")])

        def create_plugin(self, _name, fields, _phase):
            attrs = {}
            for f in fields:
                data = np.asarray(f.data)
                if f.type == trt.PluginFieldType.INT32:
                    attrs[f.name] = int(data.ravel()[0])
            return Plugin(self.name, attrs)

    registry = trt.get_plugin_registry()
    creators = [Creator(op) for op in ops]
    for c in creators:
        registry.register_creator(c, "algm")
    return creators
