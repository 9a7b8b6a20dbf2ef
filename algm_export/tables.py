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
