"""Markdown tables and the SVG plot of bench/scaling.sh's measurements (standard library only)."""
import math
from html import escape

RSS_CONSTANT_MB = 32  # "a small constant" of issue 14's RSS target: binary, libc, opened checkpoint
COLORS = {"io": "#7f7f7f", "fe": "#1f77b4", "yolo": "#d62728", "fe_ort": "#2ca02c", "fe_tract": "#9467bd",
          "py": "#ff7f0e"}
MARKERS = {"yolov8": "circle", "yolo11": "square", "yolo26": "triangle", "rtdetr": "diamond"}


def family(name):
    return next(f for f in MARKERS if name.startswith(f))


def mb(n):
    return n / 1e6


def cell(m):
    if m is None:
        return "–"
    if "error" in m:
        return "fails: " + m["error"].replace("|", "\\|")
    rss = f", {m['rss']:.0f} MB" if m.get("rss") is not None else ""
    return f"{m['wall']:.3f} s{rss}" if m["wall"] < 1 else f"{m['wall']:.2f} s{rss}"


def ratio(a, b, fmt="{:.1f}×"):
    if not a or not b or "error" in a or "error" in b:
        return "–"
    return fmt.format(a["wall"] / b["wall"])


def markdown(rows, meta, tools):
    md = lambda r, t: r["medians"].get(t)  # noqa: E731
    out = [f"Medians of {meta['runs']} alternating runs at {meta['imgsz']}×{meta['imgsz']}, peak RSS from "
           f"`/usr/bin/time -v`; {meta['fuse_ema']}; {meta['machine']}; whole run {meta['seconds'] / 60:.0f} min.",
           "",
           "| model | checkpoint | f32 weights (ONNX) | read + write I/O | `export --no-parity` | ÷ I/O | RSS ÷ weights"
           " | `yolo export` | speed-up |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fe, io, y = md(r, "fe"), md(r, "io"), md(r, "yolo")
        w = mb(r["onnx_bytes"])
        rw = f"{fe['rss'] / w:.2f}×" if fe and "error" not in fe and w else "–"
        out.append(f"| {r['name']} | {mb(r['checkpoint_bytes']):.1f} MB | {w:.1f} MB | {cell(io)} | {cell(fe)}"
                   f" | {ratio(fe, io, '{:.2f}×')} | {rw} | {cell(y)} | {ratio(y, fe)} |")
    if any(r["medians"].get(t) for r in rows for t in ("fe_ort", "fe_tract", "py")):
        out += ["", "| model | `export` (parity on ORT) | `export --runtime tract` | tract ÷ ORT"
                " | `yolo export` + torch-vs-ORT check | speed-up (ORT) |", "|---|---|---|---|---|---|"]
        for r in rows:
            o, t, p = md(r, "fe_ort"), md(r, "fe_tract"), md(r, "py")
            out.append(f"| {r['name']} | {cell(o)} | {cell(t)} | {ratio(t, o, '{:.2f}×')} | {cell(p)}"
                       f" | {ratio(p, o)} |")
    out += ["", "Targets (issues 9 and 14), judged on these medians:", "",
            "| target | met | worst |", "|---|---|---|"]
    out += targets(rows)
    return "\n".join(out) + "\n"


def good(m):
    return m is not None and "error" not in m


# (text, applies to the row, value from the medians and weights, limit, value's format): a row
# meets a check when value ≤ limit (a "≥" target is negated, shown without its sign); None where
# the row lacks a measurement.
CHECKS = [
    ("`export --no-parity` ≤ 1.5 × read + write I/O", lambda n: True,
     lambda m, w: m["fe"]["wall"] / m["io"]["wall"] if good(m.get("fe")) and good(m.get("io")) else None,
     1.5, "{:.2f}×"),
    (f"`export --no-parity` RSS ≤ 1.2 × f32 weights + {RSS_CONSTANT_MB} MB", lambda n: True,
     lambda m, w: m["fe"]["rss"] / (1.2 * w + RSS_CONSTANT_MB) if good(m.get("fe")) and w else None,
     1.0, "{:.2f} of the limit"),
    ("`export --no-parity` ≥ 30 × faster than `yolo export`", lambda n: True,
     lambda m, w: -m["yolo"]["wall"] / m["fe"]["wall"] if good(m.get("fe")) and good(m.get("yolo")) else None,
     -30, "{:.0f}×"),
    ("nano `export --no-parity` ≤ 0.1 s", lambda n: n.endswith("n"),
     lambda m, w: m["fe"]["wall"] if good(m.get("fe")) else None, 0.1, "{:.3f} s"),
    ("nano `export --no-parity` ≤ 64 MB", lambda n: n.endswith("n"),
     lambda m, w: m["fe"]["rss"] if good(m.get("fe")) else None, 64, "{:.0f} MB"),
    ("nano `export` with parity (ORT) ≤ 1.0 s", lambda n: n.endswith("n"),
     lambda m, w: m["fe_ort"]["wall"] if good(m.get("fe_ort")) else None, 1.0, "{:.2f} s"),
    ("rtdetr-l `export` with parity (ORT) ≤ 3 s", lambda n: n.startswith("rtdetr"),
     lambda m, w: m["fe_ort"]["wall"] if good(m.get("fe_ort")) else None, 3.0, "{:.2f} s"),
    ("parity through tract ≤ 2 × the ORT path", lambda n: True,
     lambda m, w: m["fe_tract"]["wall"] / m["fe_ort"]["wall"]
     if good(m.get("fe_tract")) and good(m.get("fe_ort")) else None, 2.0, "{:.2f}×"),
]


def targets(rows):
    lines = []
    for text, applies, value, limit, fmt in CHECKS:
        vals = [(r["name"], value(r["medians"], mb(r["onnx_bytes"]))) for r in rows if applies(r["name"])]
        vals = [(n, v) for n, v in vals if v is not None]
        if not vals:
            continue
        met = sum(v <= limit for _, v in vals)
        name, worst = max(vals, key=lambda x: x[1])
        verdict = "all" if met == len(vals) else f"**{met} of {len(vals)}**"
        lines.append(f"| {text} | {verdict} | {name}: {fmt.format(abs(worst))} |")
    for r in rows:
        for k, m in r["medians"].items():
            if m and "error" in m:
                lines.append(f"| {r['name']}: {k} ran | **failed** | {m['error'].replace('|', '/')} |")
    return lines


# ---------------------------------------------------------------------------------------------
# SVG: two log-log panels (wall time, peak RSS) against checkpoint size, one line per tool.

W, H = 1000, 500
FONT = 12
PANEL_W, PANEL_H = 400, 300
PANELS = ((80, 50), (560, 50))  # top-left corners of the plotting areas
CHAR_W = 0.62  # DejaVu Sans averages ~0.55 em per character; a little more keeps the check honest


class Canvas:
    def __init__(self):
        self.items = []

    def text(self, x, y, s, size=FONT, anchor="start", rotate=False, bold=False):
        width = len(s) * size * CHAR_W
        if rotate:  # rotated -90° about (x, y): the text runs upwards, centred on y
            x0, x1, y0, y1 = x - size, x + 0.3 * size, y - width / 2, y + width / 2
        else:
            x0 = {"start": x, "middle": x - width / 2, "end": x - width}[anchor]
            x1, y0, y1 = x0 + width, y - size, y + 0.3 * size
        if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
            raise ValueError(f"text {s!r} leaves the {W}×{H} canvas ({x0:.0f},{y0:.0f})–({x1:.0f},{y1:.0f})")
        attrs = f'x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"'
        if rotate:
            attrs += f' transform="rotate(-90 {x:.1f} {y:.1f})"'
        if bold:
            attrs += ' font-weight="bold"'
        self.items.append(f"<text {attrs}>{escape(s)}</text>")

    def add(self, s):
        self.items.append(s)

    def render(self):
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
                f'font-family="DejaVu Sans, Arial, sans-serif">')
        return "\n".join([head, f'<rect width="{W}" height="{H}" fill="white"/>', *self.items, "</svg>"]) + "\n"


def nice(v, up):
    """The nearest 1, 2 or 5 × 10^k at or beyond v (upwards when `up`)."""
    e = math.floor(math.log10(v))
    steps = [m * 10.0 ** k for k in (e - 1, e, e + 1) for m in (1, 2, 5)]
    return min(x for x in steps if x >= v * (1 - 1e-9)) if up else max(x for x in steps if x <= v * (1 + 1e-9))


def log_range(values):
    """Axis ends (log10) at 1-2-5 steps around the data, at least one step apart."""
    lo, hi = nice(min(values), False), nice(max(values), True)
    if hi <= lo:
        hi = nice(lo * 1.01, True)
    return math.log10(lo), math.log10(hi)


def ticks(a, b):
    lo, hi = 10 ** a, 10 ** b
    decades = range(math.floor(a) - 1, math.ceil(b) + 1)
    steps = (1, 2, 5) if b - a <= 3 else (1,)
    return [m * 10.0 ** e for e in decades for m in steps if lo * (1 - 1e-9) <= m * 10.0 ** e <= hi * (1 + 1e-9)]


def label(v):
    return f"{v:g}" if v >= 0.01 else f"{v:.0e}"


def marker(kind, x, y, color):
    if kind == "square":
        return f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" fill="{color}"/>'
    if kind == "triangle":
        return f'<polygon points="{x:.1f},{y - 4.5:.1f} {x - 4:.1f},{y + 3.5:.1f} {x + 4:.1f},{y + 3.5:.1f}" fill="{color}"/>'
    if kind == "diamond":
        return f'<polygon points="{x:.1f},{y - 5:.1f} {x - 4:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x + 4:.1f},{y:.1f}" fill="{color}"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.8" fill="{color}"/>'


def panel(c, origin, title, ylabel, series, xs_all, ys_all):
    ox, oy = origin
    xa, xb = log_range(xs_all)
    ya, yb = log_range(ys_all)
    px = lambda v: ox + PANEL_W * (math.log10(v) - xa) / (xb - xa)  # noqa: E731
    py = lambda v: oy + PANEL_H - PANEL_H * (math.log10(v) - ya) / (yb - ya)  # noqa: E731
    c.add(f'<rect x="{ox}" y="{oy}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#333"/>')
    for v in ticks(xa, xb):
        x = px(v)
        c.add(f'<line x1="{x:.1f}" y1="{oy}" x2="{x:.1f}" y2="{oy + PANEL_H}" stroke="#ddd"/>')
        c.text(x, oy + PANEL_H + 16, label(v), anchor="middle", size=11)
    for v in ticks(ya, yb):
        y = py(v)
        c.add(f'<line x1="{ox}" y1="{y:.1f}" x2="{ox + PANEL_W}" y2="{y:.1f}" stroke="#ddd"/>')
        c.text(ox - 6, y + 4, label(v), anchor="end", size=11)
    c.text(ox + PANEL_W / 2, oy - 12, title, anchor="middle", size=14, bold=True)
    c.text(ox + PANEL_W / 2, oy + PANEL_H + 36, "checkpoint size (MB, log)", anchor="middle")
    c.text(ox - 48, oy + PANEL_H / 2, ylabel, rotate=True)
    for tool, pts in series.items():
        if not pts:
            continue
        color = COLORS[tool]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _ in pts)
        c.add(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        for x, y, name in pts:
            c.add(marker(MARKERS[family(name)], px(x), py(y), color))


def svg(rows, tools):
    rows = sorted(rows, key=lambda r: r["checkpoint_bytes"])
    c = Canvas()
    for key, (ox, oy), title, ylabel in (("wall", PANELS[0], "Wall time", "seconds (log)"),
                                         ("rss", PANELS[1], "Peak RSS", "MB (log)")):
        series = {}
        for t in tools:
            if key == "rss" and t == "io":
                continue  # the I/O floor's RSS is the shell's, not a cost of the model
            pts = []
            for r in rows:
                m = r["medians"].get(t)
                if m and "error" not in m and m.get(key):
                    pts.append((mb(r["checkpoint_bytes"]), m[key], r["name"]))
            series[t] = pts
        xs = [p[0] for s in series.values() for p in s] or [1.0]
        ys = [p[1] for s in series.values() for p in s] or [1.0]
        panel(c, (ox, oy), title, ylabel, series, xs, ys)
    # Legend: tools (colour) in two rows of three, then the families (marker shape).
    shown = [t for t in tools if any(r["medians"].get(t) for r in rows)]
    y0 = PANELS[0][1] + PANEL_H + 70
    for i, t in enumerate(shown):
        x, y = 80 + (i % 3) * 300, y0 + (i // 3) * 20
        c.add(f'<line x1="{x}" y1="{y - 4}" x2="{x + 22}" y2="{y - 4}" stroke="{COLORS[t]}" stroke-width="2"/>')
        c.text(x + 28, y, tools[t], size=11)
    fams = sorted({family(r["name"]) for r in rows}, key=list(MARKERS).index)
    y = y0 + ((len(shown) + 2) // 3) * 20
    for i, f in enumerate(fams):
        x = 80 + i * 150
        c.add(marker(MARKERS[f], x + 10, y - 4, "#333"))
        c.text(x + 22, y, f, size=11)
    return c.render()
