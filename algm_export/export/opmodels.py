"""One-node ONNX models of `AlgmClap` / `AlgmGbm` (with their function bodies): for op-level tests,
for the plugin shape checks, and for timing the ops alone."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from algm_export.export import functions


def _model(node, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph([node], node.op_type, inputs, outputs)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", functions.OPSET_VERSION),
                                                helper.make_opsetid(functions.DOMAIN, 1)])
    m.functions.extend(f for f in functions.function_protos() if f.name == node.op_type)
    m.ir_version = 10
    return m


def clap_model(T: int, D: int, grid, window, num_prefix: int, capacity: int, threshold: float,
               dtype=TensorProto.FLOAT, batch="B") -> onnx.ModelProto:
    P, C = num_prefix, capacity
    N = grid[0] * grid[1]
    node = helper.make_node("AlgmClap", ["x"], ["y", "size", "assign", "stats"], domain=functions.DOMAIN,
                            grid_h=grid[0], grid_w=grid[1], window_h=window[0], window_w=window[1],
                            num_prefix=P, capacity=C, threshold=float(threshold), plugin_version="1",
                            plugin_namespace="algm")
    return _model(node, [helper.make_tensor_value_info("x", dtype, [batch, T, D])], [
        helper.make_tensor_value_info("y", dtype, [batch, P + C, D]),
        helper.make_tensor_value_info("size", TensorProto.FLOAT, [batch, P + C]),
        helper.make_tensor_value_info("assign", TensorProto.INT32, [batch, N]),
        helper.make_tensor_value_info("stats", TensorProto.INT32, [batch, 2])])


def gbm_model(T: int, D: int, N: int, num_prefix: int, capacity: int, divisor: float,
              dtype=TensorProto.FLOAT, batch="B") -> onnx.ModelProto:
    P, C = num_prefix, capacity
    node = helper.make_node("AlgmGbm", ["x", "size_in", "assign_in"], ["y", "size", "assign", "stats"],
                            domain=functions.DOMAIN, num_prefix=P, capacity=C, divisor=float(divisor),
                            plugin_version="1", plugin_namespace="algm")
    return _model(node, [helper.make_tensor_value_info("x", dtype, [batch, T, D]),
                         helper.make_tensor_value_info("size_in", TensorProto.FLOAT, [batch, T]),
                         helper.make_tensor_value_info("assign_in", TensorProto.INT32, [batch, N])], [
        helper.make_tensor_value_info("y", dtype, [batch, P + C, D]),
        helper.make_tensor_value_info("size", TensorProto.FLOAT, [batch, P + C]),
        helper.make_tensor_value_info("assign", TensorProto.INT32, [batch, N]),
        helper.make_tensor_value_info("stats", TensorProto.INT32, [batch, 2])])
