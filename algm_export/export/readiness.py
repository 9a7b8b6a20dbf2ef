"""TensorRT readiness of an exported graph, checked without TensorRT.

* every standard op (in the graph and inside the `algm` function bodies) is one that
  TensorRT's ONNX parser supports;
* integer tensors are int32/int64/bool (the index types TensorRT accepts), no float64;
* every `algm` node carries the plugin attributes of spec section 3.
The authoritative check is a real parse (`algm-export build`); this one runs anywhere.
"""

from __future__ import annotations

import onnx

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
OK_INT_TYPES = {onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.BOOL}
BAD_TYPES = {onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.UINT64: "uint64", onnx.TensorProto.UINT32: "uint32",
             onnx.TensorProto.INT16: "int16", onnx.TensorProto.UINT16: "uint16"}


def check_readiness(model: onnx.ModelProto) -> dict:
    """Returns {"ready": bool, "problems": [...], "ops": {op: count}, "algm_nodes": n}."""
    problems: list[str] = []
    ops: dict[str, int] = {}

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
                need = ALGM_REQUIRED_ATTRS.get(n.op_type)
                if need is None:
                    problems.append(f"{where}: unknown algm op {n.op_type}")
                    continue
                have = {a.name for a in n.attribute}
                if need - have:
                    problems.append(f"{where}: {n.op_type} node {n.name!r} lacks attributes {sorted(need - have)}")
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                if attrs.get("plugin_version") not in (b"1", "1") or attrs.get("plugin_namespace") not in (b"algm", "algm"):
                    problems.append(f"{where}: {n.op_type} node {n.name!r} must carry plugin_version='1', plugin_namespace='algm'")

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
    return {"ready": not problems, "problems": problems, "ops": dict(sorted(ops.items())), "algm_nodes": algm_nodes}
