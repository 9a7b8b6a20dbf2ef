"""TensorRT readiness of an exported graph, checked without TensorRT.

* every standard op (in the graph and inside the `algm` function bodies) is one that
  TensorRT's ONNX parser supports;
* integer tensors are int32/int64/bool (the index types TensorRT accepts), no float64;
* every `algm` node carries the plugin attributes of docs/algorithm.md: the ONNX/TensorRT contract, for its op version:
  version 1 (static token mode: `capacity`, `threshold` attributes, 1 / 3 inputs, 4 outputs) or
  version 2 (dynamic token mode: no capacity, CLAP's threshold an input, a fifth output `K`, the
  plugin's size tensor), the same version on every node and in the model's `algm` opset import.
The authoritative check is a real parse (`algm-export build`); this one runs anywhere.
"""

from __future__ import annotations

import onnx

from algm_export.core.names import TOKEN_MODES

# Standard ONNX ops TensorRT's parser (onnx-tensorrt, TensorRT 10 / TensorRT-RTX) supports.
TRT_SUPPORTED = set("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GroupNormalization HardSigmoid HardSwish Identity If
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
MatMul Max MaxPool Mean Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad Pow PRelu QuantizeLinear
Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScatterElements ScatterND Selu
Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum
Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

ALGM_REQUIRED_ATTRS = {
    "AlgmClap": {"grid_h", "grid_w", "window_h", "window_w", "num_prefix", "capacity", "threshold",
                 "plugin_version", "plugin_namespace"},
    "AlgmGbm": {"num_prefix", "capacity", "divisor", "plugin_version", "plugin_namespace"},
}
# version 2 (dynamic token mode): attributes, (inputs, outputs)
ALGM_V2_ATTRS = {
    "AlgmClap": {"grid_h", "grid_w", "window_h", "window_w", "num_prefix", "plugin_version", "plugin_namespace"},
    "AlgmGbm": {"num_prefix", "divisor", "plugin_version", "plugin_namespace"},
}
ALGM_IO = {1: {"AlgmClap": (1, 4), "AlgmGbm": (3, 4)}, 2: {"AlgmClap": (2, 5), "AlgmGbm": (3, 5)}}
VERSION_TOKEN_MODE = dict(zip((1, 2), TOKEN_MODES))  # algm op version -> token mode
BAD_TYPES = {onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.UINT64: "uint64", onnx.TensorProto.UINT32: "uint32",
             onnx.TensorProto.INT16: "int16", onnx.TensorProto.UINT16: "uint16"}


def check_readiness(model: onnx.ModelProto) -> dict:
    """Returns {"ready": bool, "problems": [...], "ops": {op: count}, "algm_nodes": n,
    "token_mode": "static" | "dynamic" | None}."""
    problems: list[str] = []
    ops: dict[str, int] = {}
    imported = next((int(o.version) for o in model.opset_import if o.domain == "algm"), None)
    versions: set = set()

    def visit(nodes, where):
        for n in nodes:
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            ops[key] = ops.get(key, 0) + 1
            if n.domain in ("", "ai.onnx") and n.op_type not in TRT_SUPPORTED:
                problems.append(f"{where}: op {n.op_type} is not supported by TensorRT's ONNX parser")
            if n.op_type == "Cast":
                to = next((a.i for a in n.attribute if a.name == "to"), None)
                if to in BAD_TYPES:
                    problems.append(f"{where}: Cast to {BAD_TYPES[to]} (TensorRT has no such type)")
            if n.domain == "algm":
                if n.op_type not in ALGM_REQUIRED_ATTRS:
                    problems.append(f"{where}: unknown algm op {n.op_type}")
                    continue
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                pv = attrs.get("plugin_version", b"1")
                pv = pv.decode() if isinstance(pv, bytes) else str(pv)
                version = int(pv) if pv in ("1", "2") else None
                if version is None:
                    problems.append(f"{where}: {n.op_type} node {n.name!r} has plugin_version {pv!r}; this library "
                                    "knows '1' (static token mode) and '2' (dynamic token mode)")
                    continue
                versions.add(version)
                need = ALGM_REQUIRED_ATTRS[n.op_type] if version == 1 else ALGM_V2_ATTRS[n.op_type]
                have = set(attrs)
                if need - have:
                    problems.append(f"{where}: {n.op_type} node {n.name!r} lacks attributes {sorted(need - have)}")
                if attrs.get("plugin_namespace") not in (b"algm", "algm"):
                    problems.append(f"{where}: {n.op_type} node {n.name!r} must carry plugin_namespace='algm'")
                n_in, n_out = ALGM_IO[version][n.op_type]
                if len(n.input) != n_in or len(n.output) != n_out:
                    problems.append(f"{where}: {n.op_type} version {version} node {n.name!r} has {len(n.input)} inputs "
                                    f"and {len(n.output)} outputs; the contract is {n_in} and {n_out} "
                                    "(TensorRT maps node outputs to plugin outputs one to one)")
                if where == "graph" and imported is not None and version != imported:
                    problems.append(f"{where}: {n.op_type} node {n.name!r} is version {version} but the model imports "
                                    f"algm version {imported}")

    visit(model.graph.node, "graph")
    for f in model.functions:
        visit(f.node, f"function {f.domain}::{f.name}")
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        t = vi.type.tensor_type.elem_type
        if t in BAD_TYPES:
            problems.append(f"tensor {vi.name!r} has type {BAD_TYPES[t]}, which TensorRT does not accept")
    for init in model.graph.initializer:
        if init.data_type in BAD_TYPES:
            problems.append(f"initializer {init.name!r} has type {BAD_TYPES[init.data_type]}")
    algm_nodes = sum(1 for n in model.graph.node if n.domain == "algm")
    funcs = {f.name for f in model.functions if f.domain == "algm"}
    used = {n.op_type for n in model.graph.node if n.domain == "algm"}
    if used - funcs:
        problems.append(f"algm nodes {sorted(used - funcs)} have no function body: ONNX Runtime and plugin-free builds need it")
    if len(versions) > 1:
        problems.append(f"the graph mixes algm op versions {sorted(versions)} (static and dynamic token mode)")
    mode = VERSION_TOKEN_MODE.get(next(iter(versions))) if len(versions) == 1 else None
    return {"ready": not problems, "problems": problems, "ops": dict(sorted(ops.items())), "algm_nodes": algm_nodes,
            "token_mode": mode}
