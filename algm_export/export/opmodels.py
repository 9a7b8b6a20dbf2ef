"""One-node ONNX models of `AlgmClap` / `AlgmGbm` (with their function bodies), static (version 1)
and dynamic token mode (version 2): for op-level tests, for the plugin shape checks, and for
timing the ops alone."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from algm_export.export import functions


def _model(node, inputs, outputs, version: int = 1) -> onnx.ModelProto:
    graph = helper.make_graph([node], node.op_type, inputs, outputs)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", functions.OPSET_VERSION),
                                                helper.make_opsetid(functions.DOMAIN, version)])
    m.functions.extend(f for f in functions.function_protos(version) if f.name == node.op_type)
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


# ----------------------------------------------------------------------------- dynamic token mode

def clap_dynamic_model(D: int, grid, window, num_prefix: int, dtype=TensorProto.FLOAT, batch="B") -> onnx.ModelProto:
    """`AlgmClap` version 2: inputs x [B, P+N, D], threshold [B]; outputs with a token axis P + K
    ("T1", data-dependent) and `tokens` = P + K."""
    P = num_prefix
    N = grid[0] * grid[1]
    node = helper.make_node("AlgmClap", ["x", "threshold"], ["y", "size", "assign", "stats", "tokens"],
                            domain=functions.DOMAIN, grid_h=grid[0], grid_w=grid[1], window_h=window[0],
                            window_w=window[1], num_prefix=P, plugin_version="2", plugin_namespace="algm")
    return _model(node, [helper.make_tensor_value_info("x", dtype, [batch, P + N, D]),
                         helper.make_tensor_value_info("threshold", TensorProto.FLOAT, [batch])], [
        helper.make_tensor_value_info("y", dtype, [batch, "T1", D]),
        helper.make_tensor_value_info("size", TensorProto.FLOAT, [batch, "T1"]),
        helper.make_tensor_value_info("assign", TensorProto.INT32, [batch, N]),
        helper.make_tensor_value_info("stats", TensorProto.INT32, [batch, 2]),
        helper.make_tensor_value_info("tokens", TensorProto.INT32, [])], version=2)


def gbm_dynamic_model(D: int, N: int, num_prefix: int, divisor: float, dtype=TensorProto.FLOAT,
                      batch="B") -> onnx.ModelProto:
    """`AlgmGbm` version 2: inputs with any token count T; outputs with a token axis P + K2."""
    P = num_prefix
    node = helper.make_node("AlgmGbm", ["x", "size_in", "assign_in"], ["y", "size", "assign", "stats", "tokens"],
                            domain=functions.DOMAIN, num_prefix=P, divisor=float(divisor), plugin_version="2",
                            plugin_namespace="algm")
    return _model(node, [helper.make_tensor_value_info("x", dtype, [batch, "T", D]),
                         helper.make_tensor_value_info("size_in", TensorProto.FLOAT, [batch, "T"]),
                         helper.make_tensor_value_info("assign_in", TensorProto.INT32, [batch, N])], [
        helper.make_tensor_value_info("y", dtype, [batch, "T2", D]),
        helper.make_tensor_value_info("size", TensorProto.FLOAT, [batch, "T2"]),
        helper.make_tensor_value_info("assign", TensorProto.INT32, [batch, N]),
        helper.make_tensor_value_info("stats", TensorProto.INT32, [batch, 2]),
        helper.make_tensor_value_info("tokens", TensorProto.INT32, [])], version=2)
