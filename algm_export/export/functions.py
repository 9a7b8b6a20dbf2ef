"""ONNX function bodies of `algm::AlgmClap` and `algm::AlgmGbm`, written with onnxscript.

They follow `algm_export/merging/static.py` op for op (see docs/static-ops.md): ranks by
counting, first-index argmax, scatters with unique indices, float32 math, any number of prefix
tokens (`num_prefix`). Every attribute is read through attribute references, so one
FunctionProto serves every node of the op. Only standard ops that TensorRT's ONNX parser
supports are used (no TopK, no sort, no loops). One source per op serves both token modes
(`algm` version 1 static, version 2 dynamic): see the end of this file.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset20 as op

DOMAIN = "algm"
OPSET_VERSION = 20  # default-domain opset of the exported models and of these functions
ALGM = onnxscript.values.Opset(DOMAIN, 1)            # static token mode: capacities
ALGM_DYNAMIC = onnxscript.values.Opset(DOMAIN, 2)    # dynamic token mode: data-dependent token slots
VERSIONS = {1: "static", 2: "dynamic"}


def _clap_function(dynamic: bool) -> onnxscript.OnnxFunction:
    """`AlgmClap` of one token mode: the same source, with `if DYNAMIC:` at the mode-specific steps."""
    DYNAMIC = dynamic

    @onnxscript.script(ALGM_DYNAMIC if dynamic else ALGM, default_opset=op)
    def AlgmClap(x, thresholds, grid_h: int, grid_w: int, window_h: int, window_w: int, num_prefix: int,
                 capacity: int, threshold: float, plugin_version: str, plugin_namespace: str):
        zero = op.Constant(value_int=0)
        one = op.Constant(value_int=1)
        gh = op.Constant(value_int=grid_h)
        gw = op.Constant(value_int=grid_w)
        wh = op.Constant(value_int=window_h)
        ww = op.Constant(value_int=window_w)
        P = op.Constant(value_int=num_prefix)
        if DYNAMIC:
            thr = op.Unsqueeze(op.Cast(thresholds, to=1), op.Constant(value_ints=[1]))   # [B, 1]: one per image
        else:
            C = op.Constant(value_int=capacity)
            thr = op.Constant(value_float=threshold)
        k = wh * ww
        N = gh * gw
        nwh = gh / wh
        nww = gw / ww
        W = nwh * nww
        vec = op.Constant(value_ints=[1])
        B = op.Shape(x, start=0, end=1)
        D = op.Shape(x, start=2, end=3)

        xf = op.Cast(x, to=1)
        prefix = op.Slice(xf, op.Constant(value_ints=[0]), op.Reshape(P, vec), vec)
        patches = op.Slice(xf, op.Reshape(P, vec), op.Constant(value_ints=[9223372036854775807]), vec)
        # windows [B, W, k, D], tokens row-major inside, windows row-major over the window grid
        s6 = op.Concat(B, op.Reshape(nwh, vec), op.Reshape(wh, vec), op.Reshape(nww, vec), op.Reshape(ww, vec), D, axis=0)
        p6 = op.Reshape(patches, s6)
        xw = op.Transpose(p6, perm=[0, 1, 3, 2, 4, 5])
        xw = op.Reshape(xw, op.Concat(B, op.Reshape(W, vec), op.Reshape(k, vec), D, axis=0))
        # window score: cosine matrix, diagonal zeroed by (1 - I), summed, / (k (k-1)), in the summation
        # order of the published code on CPU (torch's cosine_similarity over the channel axis), so that
        # near-equal windows order the same way (docs/algorithm.md: numerical sensitivity and docs/decisions.md, item 5):
        #   norm: one sequential sum over d of x*x
        #   dot:  d = 64 b + 4 j + q: sequential over j (blocks of 16), then over b, then over q
        #   then over the k x k matrix (j, then i), then / (k (k-1))
        # ONNX Runtime sums a *leading* axis row by row, so the channel axis leads in every reduction;
        # each Transpose is followed by a Reshape, which keeps graph optimisers from moving it past the
        # reductions (that would bring back a vectorised sum in another order).
        lead = op.Constant(value_ints=[0])
        kv = op.Reshape(k, vec)
        Wv = op.Reshape(W, vec)
        # patches -> [B, wh, ww, Gh/wh, Gw/ww, D] (D stays innermost: cheap) -> [D, B*k*W] (a 2-D transpose)
        xk = op.Transpose(p6, perm=[0, 2, 4, 1, 3, 5])
        xt = op.Transpose(op.Reshape(xk, op.Concat(op.Reshape(op.Mul(B, op.Reshape(N, vec)), vec), D, axis=0)), perm=[1, 0])
        xt = op.Reshape(xt, op.Concat(D, B, op.Reshape(N, vec), axis=0))                   # [D, B, k*W]
        nrm = op.Sqrt(op.ReduceSum(xt * xt, lead, keepdims=1))                              # [1, B, k*W]
        xn = xt / op.Max(nrm, op.Constant(value_float=1e-8))
        # zero channels up to a multiple of 64 leave every partial sum unchanged
        c64 = op.Constant(value_int=64)
        D64 = (D + c64 - one) / c64
        xn = op.Pad(xn, op.Concat(op.Constant(value_ints=[0, 0, 0]), D64 * c64 - D, op.Constant(value_ints=[0, 0]), axis=0))
        xn = op.Transpose(op.Reshape(xn, op.Concat(D64, op.Constant(value_ints=[16, 4, -1]), axis=0)), perm=[1, 0, 2, 3])
        s16 = op.Concat(op.Constant(value_ints=[16]), D64, op.Constant(value_ints=[4]), B, axis=0)
        xi = op.Reshape(xn, op.Concat(s16, kv, vec, Wv, axis=0))                            # [16, D/64, 4, B, k, 1, W]
        xj = op.Reshape(xn, op.Concat(s16, vec, kv, Wv, axis=0))                            # [16, D/64, 4, B, 1, k, W]
        dot = op.ReduceSum(op.ReduceSum(op.ReduceSum(xi * xj, lead, keepdims=0), lead, keepdims=0), lead, keepdims=0)
        cos = op.Transpose(dot, perm=[1, 2, 0, 3])                                          # [k, k, B, W]
        ark = op.Range(zero, k, one)
        offdiag = op.Cast(op.Not(op.Equal(op.Unsqueeze(ark, one), op.Unsqueeze(ark, zero))), to=1)
        offdiag = op.Unsqueeze(offdiag, op.Constant(value_ints=[2, 3]))
        kf = op.Cast(k, to=1)
        score = op.ReduceSum(op.ReduceSum(cos * offdiag, lead, keepdims=0), lead, keepdims=0) / (kf * (kf - op.Constant(value_float=1.0)))
        # how many windows merge
        m = op.ReduceSum(op.Cast(op.GreaterOrEqual(score, thr), to=7), vec, keepdims=0)   # [B]
        if DYNAMIC:
            # capacity N: need = 0, never a forced merge
            r = m
            forced = m - m
        else:
            need = op.Max(zero, (N - C + k - op.Constant(value_int=2)) / (k - one))
            r = op.Min(op.Max(m, need), W)
            forced = op.Max(r - m, zero)
        # rank by counting: descending, ties by lower index
        arw = op.Range(zero, W, one)
        vi = op.Unsqueeze(score, op.Constant(value_ints=[2]))
        vj = op.Unsqueeze(score, vec)
        lower = op.Less(op.Unsqueeze(arw, zero), op.Unsqueeze(arw, one))
        before = op.Or(op.Greater(vj, vi), op.And(op.Equal(vj, vi), lower))
        # counted in float32 (exact below 2^24, and ONNX Runtime's float reduction is much faster)
        rank = op.Cast(op.ReduceSum(op.Cast(before, to=1), op.Constant(value_ints=[2]), keepdims=0), to=7)   # [B, W]
        r1 = op.Unsqueeze(r, vec)
        merged_w = op.Less(rank, r1)
        # per patch: its window, merged or not, output position
        arn = op.Range(zero, N, one)
        wop = (arn / gw / wh) * nww + op.Mod(arn, gw) / ww
        merged_p = op.Gather(merged_w, wop, axis=1)
        rank_p = op.Gather(rank, wop, axis=1)
        unm_p = op.Not(merged_p)
        cum = op.CumSum(op.Cast(unm_p, to=7), one)
        pos_p = op.Where(merged_p, rank_p, r1 + cum - one)
        # values: window means and the patches, scattered to unique slots, cut to the capacity
        wmean = op.ReduceSum(xw, op.Constant(value_ints=[2]), keepdims=0) / kf
        dest = op.Concat(op.Where(merged_w, rank, N + arw), op.Where(unm_p, pos_p, N + W + arn), axis=1)
        # invert the unique-destination map: the candidate that lands in each slot (a zero row if none)
        zrow = op.ConstantOfShape(op.Concat(B, vec, D, axis=0), value=onnx.helper.make_tensor("z", 1, [1], [0.0]))
        vals = op.Concat(wmean, patches, zrow, axis=1)
        L = N + N + W
        ncand = W + N
        idx = op.Expand(ncand, op.Concat(B, op.Reshape(L, vec), axis=0))
        idx = op.ScatterElements(idx, dest, op.Expand(op.Range(zero, ncand, one), op.Shape(dest)), axis=1)
        if DYNAMIC:
            # the slots the batch needs: K = max_b real count = N - min_b r (k - 1). A Slice whose end
            # is computed from data: TensorRT's parser takes it as a data-dependent shape
            # (docs/static-ops.md)
            K = N - op.ReduceMin(r, keepdims=0) * (k - one)
        else:
            K = C
        src = op.Slice(idx, op.Constant(value_ints=[0]), op.Reshape(K, vec), vec)
        # a row gather over the flattened batch (no index per channel)
        Lr = W + N + one
        rows = src + op.Unsqueeze(op.Range(zero, op.Squeeze(B), one) * Lr, one)
        gathered = op.Gather(op.Reshape(vals, op.Concat(op.Constant(value_ints=[-1]), D, axis=0)), rows, axis=0)
        svals = op.Concat(op.Expand(kf, op.Concat(B, op.Reshape(W, vec), axis=0)),
                          op.Expand(op.Constant(value_float=1.0), op.Concat(B, op.Reshape(N, vec), axis=0)),
                          op.Expand(op.Constant(value_float=0.0), op.Concat(B, vec, axis=0)), axis=1)
        y = op.Concat(prefix, gathered, axis=1)
        ones_p = op.Expand(op.Constant(value_float=1.0), op.Concat(B, op.Reshape(P, vec), axis=0))
        size = op.Concat(ones_p, op.GatherElements(svals, src, axis=1), axis=1)
        assign = op.Cast(pos_p, to=6)
        stats = op.Cast(op.Concat(r1, op.Unsqueeze(forced, vec), axis=1), to=6)
        tokens = op.Cast(P + K, to=6)      # the token dimension (version 2's fifth output)
        return op.CastLike(y, x), size, assign, stats, tokens

    return AlgmClap




def _gbm_function(dynamic: bool) -> onnxscript.OnnxFunction:
    """`AlgmGbm` of one token mode: the same source, with `if DYNAMIC:` at the mode-specific steps."""
    DYNAMIC = dynamic

    @onnxscript.script(ALGM_DYNAMIC if dynamic else ALGM, default_opset=op)
    def AlgmGbm(x, size, assign, num_prefix: int, capacity: int, divisor: float, plugin_version: str,
                plugin_namespace: str):
        zero = op.Constant(value_int=0)
        one = op.Constant(value_int=1)
        two = op.Constant(value_int=2)
        vec = op.Constant(value_ints=[1])
        P = op.Constant(value_int=num_prefix)
        L_div = op.Constant(value_float=divisor)
        B = op.Shape(x, start=0, end=1)
        T = op.Squeeze(op.Shape(x, start=1, end=2))
        D = op.Shape(x, start=2, end=3)
        xf = op.Cast(x, to=1)
        sz = op.Cast(size, to=1)
        n_real = op.ReduceSum(op.Cast(op.Greater(sz, op.Constant(value_float=0.0)), to=7), vec, keepdims=0)   # [B]
        nr1 = op.Unsqueeze(n_real, vec)
        art = op.Range(zero, T, one)
        valid = op.Less(op.Unsqueeze(art, zero), nr1)                                 # [B, T]
        a_pos = op.Range(zero, T, two)
        b_pos = op.Range(one, T, two)
        nA = op.Shape(a_pos)
        nB = op.Shape(b_pos)
        va = op.Gather(valid, a_pos, axis=1)
        vb = op.Gather(valid, b_pos, axis=1)
        ara = op.Range(zero, op.Squeeze(nA), one)
        arb = op.Range(zero, op.Squeeze(nB), one)
        # prefix positions 0..P-1 split by parity: the first pA slots of A and the first pB of B
        pA = (P + one) / two
        pB = P / two
        row_ok = op.And(va, op.Unsqueeze(op.GreaterOrEqual(ara, pA), zero))   # prefix tokens never merge
        col_ok = op.And(vb, op.Unsqueeze(op.GreaterOrEqual(arb, pB), zero))   # ... nor receive a merge
        nrm = op.Sqrt(op.ReduceSum(xf * xf, op.Constant(value_ints=[-1]), keepdims=1))
        xn = xf / op.Max(nrm, op.Constant(value_float=1e-12))
        an = op.Gather(xn, a_pos, axis=1)
        bn = op.Gather(xn, b_pos, axis=1)
        s = op.MatMul(an, op.Transpose(bn, perm=[0, 2, 1]))                          # [B, nA, nB]
        ninf = op.Constant(value_float=float("-inf"))
        s = op.Where(op.And(op.Unsqueeze(row_ok, op.Constant(value_ints=[2])), op.Unsqueeze(col_ok, vec)), s, ninf)
        node_max = op.ReduceMax(s, op.Constant(value_ints=[-1]), keepdims=0)        # [B, nA]
        big = op.Cast(nB, to=7)
        # first index of the maximum, in float32 (exact indices below 2^24; faster than int64 here)
        cand_idx = op.Where(op.Equal(s, op.Unsqueeze(node_max, op.Constant(value_ints=[-1]))), op.Cast(arb, to=1),
                            op.Cast(big, to=1))
        node_idx = op.Min(op.Cast(op.ReduceMin(cand_idx, op.Constant(value_ints=[-1]), keepdims=0), to=7), big - one)
        # threshold statistics over the candidate rows
        c = op.ReduceSum(op.Cast(row_ok, to=7), vec, keepdims=0)
        cf = op.Cast(c, to=1)
        fzero = op.Constant(value_float=0.0)
        mu = op.ReduceSum(op.Where(row_ok, node_max, fzero), vec, keepdims=0) / cf
        dev = op.Where(row_ok, node_max - op.Unsqueeze(mu, vec), fzero)
        var = op.ReduceSum(dev * dev, vec, keepdims=0) / (cf - op.Constant(value_float=1.0))
        tau = mu + op.Sqrt(var) / L_div
        m = op.ReduceSum(op.Cast(op.And(row_ok, op.GreaterOrEqual(node_max, op.Unsqueeze(tau, vec))), to=7), vec, keepdims=0)
        if DYNAMIC:
            # capacity = every input slot: need = 0, never a forced merge
            r = op.Min(m, c)
        else:
            C = op.Constant(value_int=capacity)
            need = op.Max(n_real - P - C, zero)
            r = op.Min(op.Max(m, need), c)
        noop = op.Less(n_real - P, two)
        r = op.Where(noop, zero, r)
        m_eff = op.Where(noop, zero, m)
        forced = op.Max(r - m_eff, zero)
        # sources: the r best candidates (rank by counting among candidates)
        vi = op.Unsqueeze(node_max, op.Constant(value_ints=[2]))
        vj = op.Unsqueeze(node_max, vec)
        lower = op.Less(op.Unsqueeze(ara, zero), op.Unsqueeze(ara, one))
        before = op.And(op.Or(op.Greater(vj, vi), op.And(op.Equal(vj, vi), lower)), op.Unsqueeze(row_ok, vec))
        rank = op.Cast(op.ReduceSum(op.Cast(before, to=1), op.Constant(value_ints=[2]), keepdims=0), to=7)
        r1 = op.Unsqueeze(r, vec)
        is_src = op.And(row_ok, op.Less(rank, r1))
        # size-weighted merge into B through a one-hot matrix
        xs = xf * op.Unsqueeze(sz, op.Constant(value_ints=[-1]))
        xa = op.Gather(xs, a_pos, axis=1)
        xb = op.Gather(xs, b_pos, axis=1)
        sa = op.Gather(sz, a_pos, axis=1)
        sb = op.Gather(sz, b_pos, axis=1)
        onehot = op.And(op.Equal(op.Unsqueeze(node_idx, op.Constant(value_ints=[2])), arb),
                        op.Unsqueeze(is_src, op.Constant(value_ints=[2])))
        mt = op.Transpose(op.Cast(onehot, to=1), perm=[0, 2, 1])                     # [B, nB, nA]
        num_b = xb + op.MatMul(mt, xa)
        size_b = sb + op.Squeeze(op.MatMul(mt, op.Unsqueeze(sa, op.Constant(value_ints=[-1]))), op.Constant(value_ints=[-1]))
        sb3 = op.Unsqueeze(size_b, op.Constant(value_ints=[-1]))
        xb_new = op.Where(op.Greater(sb3, fzero), num_b / op.Max(sb3, op.Constant(value_float=1e-30)), fzero)
        # output positions
        # [prefix in original order, unmerged non-prefix A (ascending), non-prefix B]
        unm_a = op.And(va, op.Not(is_src))
        cand_unm = op.Cast(op.And(unm_a, op.Unsqueeze(op.GreaterOrEqual(ara, pA), zero)), to=7)
        U = op.ReduceSum(cand_unm, vec, keepdims=1)
        cum = op.CumSum(cand_unm, one)
        pos_a = op.Where(op.Less(ara, pA), two * ara, P + cum - one)
        pos_b = op.Where(op.Less(arb, pB), two * arb + one, P + U + arb - pB)
        dest = op.Concat(op.Where(unm_a, pos_a, T + ara), op.Where(vb, pos_b, T + op.Cast(nA, to=7) + arb), axis=1)
        zrow = op.ConstantOfShape(op.Concat(B, vec, D, axis=0), value=onnx.helper.make_tensor("z", 1, [1], [0.0]))
        vals = op.Concat(op.Gather(xf, a_pos, axis=1), xb_new, zrow, axis=1)
        svals = op.Concat(sa, size_b, op.Expand(fzero, op.Concat(B, vec, axis=0)), axis=1)
        ncand = op.Squeeze(op.Shape(dest, start=1, end=2))
        idx = op.Expand(ncand, op.Concat(B, op.Reshape(T + T, vec), axis=0))
        idx = op.ScatterElements(idx, dest, op.Expand(op.Range(zero, ncand, one), op.Shape(dest)), axis=1)
        # new assignment map
        q = op.Cast(assign, to=7) + P
        even = op.Equal(op.Mod(q, two), zero)
        a_idx = op.Min(q / two, op.Cast(nA, to=7) - one)
        # B positions with one spare column, so that every index is in range even when there is no B
        # slot at all (P = 0 and a single input slot: a no-op, whose map is the input's)
        pos_b1 = op.Concat(pos_b, op.Expand(zero, op.Concat(B, vec, axis=0)), axis=1)
        b_idx = op.Max(op.Min((q - one) / two, op.Cast(nB, to=7) - one), zero)
        to_b = op.GatherElements(pos_b1, op.Max(op.GatherElements(node_idx, a_idx, axis=1), zero), axis=1)
        src_q = op.GatherElements(is_src, a_idx, axis=1)
        new_pos = op.Where(even, op.Where(src_q, to_b, op.GatherElements(pos_a, a_idx, axis=1)),
                           op.GatherElements(pos_b1, b_idx, axis=1)) - P
        if DYNAMIC:
            # the slots the batch needs: P + K2 = max_b real count (a data-dependent Slice end, as in CLAP)
            keep0 = op.ReduceMax(n_real - r, keepdims=0)
        else:
            keep0 = P + C
        keep = op.Reshape(keep0, vec)
        start = op.Constant(value_ints=[0])
        noop2 = op.Unsqueeze(noop, vec)
        noop3 = op.Unsqueeze(noop, op.Constant(value_ints=[1, 2]))
        src = op.Slice(idx, start, keep, vec)
        Lr = op.Squeeze(op.Shape(vals, start=1, end=2))
        rows = src + op.Unsqueeze(op.Range(zero, op.Squeeze(B), one) * Lr, one)
        y_new = op.Gather(op.Reshape(vals, op.Concat(op.Constant(value_ints=[-1]), D, axis=0)), rows, axis=0)
        y = op.Where(noop3, op.Slice(xf, start, keep, vec), y_new)
        osize = op.Where(noop2, op.Slice(sz, start, keep, vec), op.GatherElements(svals, src, axis=1))
        new_assign = op.Cast(op.Where(noop2, op.Cast(assign, to=7), new_pos), to=6)
        stats = op.Cast(op.Concat(r1, op.Unsqueeze(forced, vec), axis=1), to=6)
        tokens = op.Cast(keep0, to=6)      # the token dimension (version 2's fifth output)
        return op.CastLike(y, x), osize, new_assign, stats, tokens

    return AlgmGbm




# ----------------------------------------------------------------------------- both token modes
# `algm` version 1 is the static token mode (capacities), version 2 the dynamic one (docs/algorithm.md):
# each op has ONE source above, and the `if DYNAMIC:` blocks (Python constants: onnxscript keeps
# only the branch taken) are the only places the two differ. Version 2 has capacity = every slot
# (so `need` is 0 and nothing is forced) and cuts the slot table to the slots the batch needs, K,
# computed from the merge counts; the token dimension P + K is its fifth output (int32 scalar: the
# plugin's size tensor, which TensorRT takes as the dimension itself), and CLAP reads its
# threshold from an input (float32 [B], one per image). The source declares the union of both
# interfaces; `_interface` removes what one version does not have (asserting that its body never
# reads it) and the nodes that only fed a removed output. tests/test_dynamic_tokens.py checks
# that the two bodies differ only in those blocks and that each dynamic body equals its static
# body at full capacity followed by the cut, bit for bit.

# what each version does not have: (inputs, outputs, attributes)
_NOT_IN = {
    ("AlgmClap", 1): (("thresholds",), ("tokens",), ()),
    ("AlgmClap", 2): ((), (), ("capacity", "threshold")),
    ("AlgmGbm", 1): ((), ("tokens",), ()),
    ("AlgmGbm", 2): ((), (), ("capacity",)),
}
_FUNCTIONS = {(name, version): make(version == 2) for version in (1, 2)
              for name, make in (("AlgmClap", _clap_function), ("AlgmGbm", _gbm_function))}


def _attribute_refs(node: onnx.NodeProto) -> set[str]:
    return {a.ref_attr_name for a in node.attribute if a.ref_attr_name}


def _interface(proto: onnx.FunctionProto, inputs=(), outputs=(), attributes=()) -> onnx.FunctionProto:
    """`proto` without the named formal inputs, outputs and attributes, and without the nodes that
    only fed a removed output. Refuses to remove an input or attribute the remaining body reads."""
    out = onnx.FunctionProto()
    out.CopyFrom(proto)
    del out.output[:]
    out.output.extend(o for o in proto.output if o not in outputs)
    live = set(out.output)
    kept = []
    for node in reversed(proto.node):
        if any(o in live for o in node.output):
            kept.append(node)
            live.update(i for i in node.input if i)
    kept.reverse()
    del out.node[:]
    out.node.extend(kept)
    read = set().union(*(_attribute_refs(n) for n in kept))
    bad = (set(inputs) & live) | (set(attributes) & read)
    if bad:
        raise AssertionError(f"{proto.name}: the body reads {sorted(bad)}, which this version does not have")
    del out.input[:]
    out.input.extend(i for i in proto.input if i not in inputs)
    del out.attribute[:]
    out.attribute.extend(a for a in proto.attribute if a not in attributes)
    keep_ap = [a for a in proto.attribute_proto if a.name not in attributes]
    del out.attribute_proto[:]
    out.attribute_proto.extend(keep_ap)
    return out


def function_proto(name: str, version: int) -> onnx.FunctionProto:
    """The FunctionProto of op `name` ("AlgmClap" | "AlgmGbm") in `algm` version `version`."""
    if (name, version) not in _FUNCTIONS:
        raise ValueError(f"no algm function {name!r} in version {version} (versions: 1 static, 2 dynamic)")
    inputs, outputs, attributes = _NOT_IN[(name, version)]
    return _interface(_FUNCTIONS[(name, version)].to_function_proto(), inputs, outputs, attributes)


def function_protos(version: int = 1) -> list[onnx.FunctionProto]:
    """The FunctionProtos to attach to an exported model (domain `algm`): version 1 the static
    ops, version 2 the dynamic ones (named `AlgmClap` / `AlgmGbm` in both: a model imports one
    version of the domain)."""
    if version not in VERSIONS:
        raise ValueError(f"algm domain version {version} unknown (1 static, 2 dynamic)")
    return [function_proto("AlgmClap", version), function_proto("AlgmGbm", version)]
