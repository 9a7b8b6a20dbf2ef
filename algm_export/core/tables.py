"""Plain-text tables for the terminal (no dependency, aligned columns)."""

from __future__ import annotations


def format_table(headers, rows, align=None) -> str:
    cols = [list(map(str, headers))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(headers))]
    align = align or ["<"] + [">"] * (len(headers) - 1)

    def line(r):
        return "  ".join(f"{v:{a}{w}}" for v, a, w in zip(r, align, widths)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cols[0]), sep] + [line(r) for r in cols[1:]])


def tokens_text(tokens, dynamic: bool) -> str:
    """Patch tokens processed per image after each merge step, as bench.json records them
    (`{"mean": [..], "min": [..], "max": [..]}`): static `C1/C2` (its capacities), dynamic
    `mean1/mean2 (min1-max1/min2-max2)` over the images run; "-" for none (the baseline)."""
    if not tokens:
        return "-"
    if not dynamic:
        return "/".join(str(int(v)) for v in tokens["mean"])
    rng = "/".join(f"{lo}-{hi}" for lo, hi in zip(tokens["min"], tokens["max"]))
    return "/".join(f"{v:.0f}" for v in tokens["mean"]) + f" ({rng})"
