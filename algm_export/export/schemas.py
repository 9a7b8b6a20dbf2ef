"""ONNX OpSchemas of the `algm` domain (version 1: static ops, 2: dynamic ops), registered in-process so that the torch
exporter can emit `AlgmClap` / `AlgmGbm` nodes. Exported models carry the ops' behaviour as
model-local functions (`functions.py`); the schemas never leave this process."""

from __future__ import annotations

from onnx import defs

_DONE = False


def register_schemas() -> None:
    global _DONE
    if _DONE:
        return
    S = defs.OpSchema
    A = S.AttrType
    common = [S.Attribute("plugin_version", A.STRING, "TensorRT plugin version, '1'"),
              S.Attribute("plugin_namespace", A.STRING, "TensorRT plugin namespace, 'algm'")]
    outs = [S.FormalParameter("y", "T", "tokens, real first then zero padding"),
            S.FormalParameter("size", "tensor(float)", "patches per token, 0 for padding"),
            S.FormalParameter("assign", "tensor(int32)", "token index holding each original patch"),
            S.FormalParameter("stats", "tensor(int32)", "[merges done, forced merges] per image")]
    tc = [("T", ["tensor(float)", "tensor(float16)"], "token dtype")]
    tokens = S.FormalParameter("tokens", "tensor(int32)", "P + K: token slots of y (K = the largest real count)")
    for schema in (
        S("AlgmClap", "algm", 1, inputs=[S.FormalParameter("x", "T")], outputs=outs, type_constraints=tc,
          attributes=[S.Attribute(n, A.INT, n) for n in
                      ("grid_h", "grid_w", "window_h", "window_w", "num_prefix", "capacity")]
          + [S.Attribute("threshold", A.FLOAT, "cosine threshold")] + common),
        S("AlgmGbm", "algm", 1,
          inputs=[S.FormalParameter("x", "T"), S.FormalParameter("size", "tensor(float)"),
                  S.FormalParameter("assign", "tensor(int32)")],
          outputs=outs, type_constraints=tc,
          attributes=[S.Attribute("num_prefix", A.INT, ""), S.Attribute("capacity", A.INT, ""),
                      S.Attribute("divisor", A.FLOAT, "GBM threshold divisor (layer number)")] + common),
        # version 2: dynamic token mode (docs/algorithm.md: dynamic token mode): no capacity, the threshold an input, the
        # token slots P + K of the batch a fifth output (int32 scalar, the plugin's size tensor)
        S("AlgmClap", "algm", 2, inputs=[S.FormalParameter("x", "T"),
                                         S.FormalParameter("threshold", "tensor(float)", "[B] one per image")],
          outputs=outs + [tokens], type_constraints=tc,
          attributes=[S.Attribute(n, A.INT, n) for n in ("grid_h", "grid_w", "window_h", "window_w", "num_prefix")]
          + common),
        S("AlgmGbm", "algm", 2,
          inputs=[S.FormalParameter("x", "T"), S.FormalParameter("size", "tensor(float)"),
                  S.FormalParameter("assign", "tensor(int32)")],
          outputs=outs + [tokens], type_constraints=tc,
          attributes=[S.Attribute("num_prefix", A.INT, ""),
                      S.Attribute("divisor", A.FLOAT, "GBM threshold divisor (layer number)")] + common),
    ):
        try:
            found = defs.get_schema(schema.name, schema.since_version, schema.domain)
            if found.since_version == schema.since_version:
                continue
        except defs.SchemaError:
            pass
        defs.register_schema(schema)
    _DONE = True
