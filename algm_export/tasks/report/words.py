"""The report's words for users: one sentence per setting (what it saves, what it costs, the parity
verdict) and the note on batches in dynamic token mode. Plain text; `html.py` escapes it."""

from __future__ import annotations

from typing import Optional, Sequence


def _key(name: str, threshold) -> tuple:
    return (name, None if threshold is None else round(float(threshold), 6))


def _x(v: float) -> str:
    return f"{v:.2f}x"


def setting_name(name: str, threshold: float, layers, token_mode: str) -> str:
    return f"threshold {threshold:.2f} at layers {', '.join(map(str, layers))}, {token_mode} token mode"


def _saves(rows: list[dict], n_patches: int) -> str:
    """What a setting saves: tokens kept, FLOP ratio, and the measured speed-up per backend and batch."""
    first = rows[0]
    tok = first.get("tokens") or {}
    if first.get("token_mode") == "dynamic" and tok:
        kept = (f"keeps {tok['mean'][-1]:.0f} of {n_patches} tokens per image on average after the last merge "
                f"({tok['min'][-1]}-{tok['max'][-1]} on the benchmark's images)")
    elif first.get("capacities"):
        c = first["capacities"][-1]
        kept = f"keeps {c} of {n_patches} tokens ({100 * c / n_patches:.0f} %) after the last merge"
    else:
        kept = "keeps every token"
    from algm_export.tasks.visualize import series_key

    one = sorted(rows, key=lambda r: (series_key(r)[1:], series_key(r)[0]))
    speeds = []
    for r in sorted(rows, key=series_key):
        k = series_key(r)
        where = f"with {k[2]} concurrent client{'s' if k[2] != 1 else ''}" if k[2] else f"at batch {k[1]}"
        speeds.append(f"{_x(r['speedup'])} on {r['backend']} {where}")
    slower = [r for r in rows if r["speedup"] < 1.0]
    tail = " (below 1x: slower than the baseline there)" if slower else ""
    return (f"it {kept}, {one[0]['flop_ratio']:.2f}x fewer multiply-adds per image than the baseline (FLOP ratio), "
            f"and measures a speed-up of {', '.join(speeds)}{tail}")


def _costs(key: tuple, agreement: Optional[dict], labels: Optional[dict], n_photos: int) -> str:
    if labels and key in labels and _key("baseline", None) in labels:
        m, b = labels[key], labels[_key("baseline", None)]
        return f"its mIoU on the labelled images is {m:.1f} % against the baseline's {b:.1f} % ({m - b:+.1f} points)"
    if agreement and key in agreement:
        return (f"{100 - agreement[key]:.1f} % of the pixels change class against the baseline's segmentation "
                f"on {n_photos} sample photo{'s' if n_photos != 1 else ''}")
    return "its effect on the segmentation was not measured (no model for the pictures, no labels)"


def _verdict(key: tuple, validation: Sequence[dict]) -> str:
    parts = []
    for rep in validation:
        for e in rep.get("entries", []):
            if _key(e["name"], e.get("threshold")) == key:
                s = e["summary"]
                ok = "PASS" if s.get("pass") else "FAIL"
                parts.append(f"{ok} on {rep['backend']} {rep['precision']} (argmax agreement "
                             f"{s['agreement_mean']:.3f} %, {s['images']} images)")
    if not parts:
        return "parity with PyTorch not checked yet (run `algm-export validate DIR`)"
    return "parity with PyTorch: " + "; ".join(parts)


def setting_sentences(settings: Sequence[tuple], results: Sequence[dict], validation: Sequence[dict],
                      n_patches: int, agreement: Optional[dict] = None, labels: Optional[dict] = None,
                      n_photos: int = 0) -> list[tuple[str, str]]:
    """[(setting name, sentence)]: per setting (`settings`: (entry name, threshold, layers, token_mode)),
    what it saves (tokens, FLOP ratio, measured speed-up), what it costs (pixels that change class, or
    the mIoU with labels) and the parity verdict against PyTorch."""
    out = []
    for name, threshold, layers, mode in settings:
        key = _key(name, threshold)
        rows = [r for r in results if _key(r["setting"], r.get("threshold")) == key]
        saves = _saves(rows, n_patches) if rows else "it has not been benchmarked yet (run `algm-export bench DIR`)"
        out.append((setting_name(name, threshold, layers, mode),
                    f"{saves}; {_costs(key, agreement, labels, n_photos)}; {_verdict(key, validation)}."))
    return out


def batch_note(results: Sequence[dict]) -> Optional[str]:
    """The note on batches in dynamic token mode, with this benchmark's numbers; None without dynamic
    rows at a batch above 1."""
    rows = [r for r in results if r.get("token_mode") == "dynamic" and int(r["batch"]) > 1
            and at_batch_max(r, results) is not None]
    if not rows:
        return None
    # an exported graph's backend first: PyTorch's dynamic mode is the reference, not a deployment
    r = sorted(rows, key=lambda x: (x["backend"] == "torch", int(x["batch"])))[0]
    at_max = at_batch_max(r, results)
    return (f"Batches in dynamic token mode: every image keeps as many tokens as it needs, but the images of a "
            f"batch are computed together, at the token count of the batch's largest image. So a batch pays "
            f"for its largest image: at batch {r['batch']}, {r['setting']} saves {r['flop_ratio']:.2f}x the "
            f"multiply-adds counted image by image, but at most {at_max:.2f}x computed batch by batch "
            f"(measured on {r['backend']}: {r['speedup']:.2f}x). Batch images of similar content, or run "
            f"batch 1, to keep the per-image saving.")


def at_batch_max(r: dict, results: Sequence[dict]) -> Optional[float]:
    """A dynamic row's FLOP ratio when each batch is computed at its largest image's token count."""
    from algm_export.tasks.visualize import series_key

    if r.get("token_mode") != "dynamic" or not r.get("gmacs_at_batch_max"):
        return None
    base = [x["gmacs"] for x in results if x["setting"] == "baseline" and series_key(x) == series_key(r)]
    return base[0] / r["gmacs_at_batch_max"] if base else None
