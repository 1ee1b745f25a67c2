"""Bar charts of the HTML reports (inline SVG geometry, pure Python): one bar per block or
prompt -- the quantized run's attribution and sensitivity per block, ROUGE-L per prompt of
``parity eval``, logits error per scheme of ``parity quant-sweep``. Places numbers the
document already holds; computes no statistics."""
from __future__ import annotations

from typing import Any


def bars(values: list[tuple[Any, float | None]], width: int = 820, height: int = 200, log: bool = False,
         top_value: float | None = None) -> dict[str, Any]:
    """Geometry of a bar chart (one bar per label, e.g. per block): rects and y ticks in SVG
    coordinates. ``log``: a log10 axis (errors spanning decades). ``top_value``: a fixed top of
    a linear axis (a score out of 100), so that a bar's height reads the same in every report."""
    import math

    left, right, top, bottom = 56, 10, 10, 26
    vals = [v for _, v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals and top_value is None:
        return {"width": width, "height": height, "bars": [], "ticks": [], "empty": True}
    tf = (lambda v: math.log10(v)) if log else (lambda v: v)
    lo = math.floor(tf(min(vals))) if log else 0.0
    hi = float(top_value) if top_value is not None and not log else tf(max(vals))
    hi = hi if hi > lo else lo + 1.0
    plot_w, plot_h = width - left - right, height - top - bottom
    slot = plot_w / max(1, len(values))
    out = []
    for k, (label, v) in enumerate(values):
        ok = v is not None and v > 0 and math.isfinite(v)
        h = 0.0 if not ok else min(plot_h, max(1.0, plot_h * (tf(v) - lo) / (hi - lo)))  # type: ignore[arg-type]
        out.append({"x": left + k * slot + slot * 0.12, "w": slot * 0.76, "y": top + plot_h - h, "h": h,
                    "label": str(label), "value": v, "lx": left + k * slot + slot / 2})
    ticks = []
    steps = range(int(lo), int(math.floor(hi)) + 1) if log else [hi * f for f in (0, 0.25, 0.5, 0.75, 1.0)]
    for t in steps:
        y = top + plot_h - plot_h * ((t - lo) / (hi - lo))
        ticks.append({"y": y, "text": f"1e{t}" if log else f"{t:.3g}"})
    every = max(1, len(values) // 30)
    return {"width": width, "height": height, "bars": out, "ticks": ticks, "left": left, "bottom": top + plot_h,
            "label_every": every, "empty": False}


def view(q: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chart geometry of a quantized run's summary["quant"] (None for other runs)."""
    if not q:
        return None
    att = q.get("attribution") or {}
    blocks = att.get("blocks") or []
    sens = q.get("sensitivity") or {}
    return {
        "q": q,
        "attribution": bars([(b["block"], b.get("resid_post")) for b in blocks], log=True) if blocks else None,
        "attn": bars([(b["block"], b.get("attn_out")) for b in blocks], log=True, height=150) if blocks else None,
        "mlp": bars([(b["block"], b.get("mlp_out")) for b in blocks], log=True, height=150) if blocks else None,
        "sensitivity": bars([(r["block"], r["logits_nrmse"]) for r in sens.get("blocks", [])]) if sens else None,
        "kinds": sens.get("kinds") or {},
        "agreement": q.get("agreement"),
    }
