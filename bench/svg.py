"""Small SVG charts for bench/RESULTS.md (standard library only)."""

import calendar
import html
import time

WIDTH = 760
COLORS = ["#3b7dd8", "#e0823d", "#4aa564", "#c9485b", "#8a63c9", "#6b7b8c"]


def _svg(path, height, body, title):
    with open(path, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
                f'font-family="sans-serif" font-size="12">\n'
                f'<rect width="100%" height="100%" fill="white"/>\n'
                f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{html.escape(title)}</text>\n'
                + "\n".join(body) + "\n</svg>\n")


def bars(path, title, items, unit=""):
    """Horizontal bars, one per (label, value)."""
    top, row, left = 40, 34, 200
    span = WIDTH - left - 120
    peak = max((v for _, v in items), default=1) or 1
    body = []
    for i, (label, value) in enumerate(items):
        y = top + i * row
        w = max(1, span * value / peak)
        body.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end">{html.escape(label)}</text>')
        body.append(f'<rect x="{left}" y="{y + 4}" width="{w:.1f}" height="{row - 10}" fill="{COLORS[i % len(COLORS)]}"/>')
        body.append(f'<text x="{left + w + 6:.1f}" y="{y + 17}">{value:,.1f} {html.escape(unit)}</text>')
    _svg(path, top + row * len(items) + 10, body, title)


def groups(path, title, metrics, series):
    """Grouped bars: for each metric, one bar per (label, values) series."""
    top, group_h, bar_h, left = 50, 24 * len(series) + 16, 20, 220
    span = WIDTH - left - 110
    body = []
    for s, (label, _) in enumerate(series):
        body.append(f'<rect x="{left + s * 140}" y="30" width="12" height="12" fill="{COLORS[s % len(COLORS)]}"/>'
                    f'<text x="{left + s * 140 + 18}" y="41">{html.escape(label)}</text>')
    for m, name in enumerate(metrics):
        peak = max(values[m] for _, values in series) or 1
        y0 = top + m * group_h
        body.append(f'<text x="{left - 8}" y="{y0 + group_h / 2 + 2}" text-anchor="end">{html.escape(name)}</text>')
        for s, (_, values) in enumerate(series):
            w = max(1, span * values[m] / peak)
            y = y0 + s * 24
            body.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{COLORS[s % len(COLORS)]}"/>')
            body.append(f'<text x="{left + w + 6:.1f}" y="{y + 14}">{values[m]:,.2f}</text>')
    _svg(path, top + group_h * len(metrics) + 10, body, title)


def histogram(path, title, report):
    """The latency distribution of a report, from its ghz histogram."""
    buckets = report.get("histogram") or []
    top, left, bottom = 40, 60, 60
    height = 320
    plot_h = height - top - bottom
    span = WIDTH - left - 30
    peak = max((b["count"] for b in buckets), default=1) or 1
    body = []
    n = max(1, len(buckets))
    bw = span / n
    for i, bucket in enumerate(buckets):
        h = plot_h * bucket["count"] / peak
        x = left + i * bw
        body.append(f'<rect x="{x + 2:.1f}" y="{top + plot_h - h:.1f}" width="{bw - 4:.1f}" height="{h:.1f}" fill="{COLORS[0]}"/>')
        body.append(f'<text x="{x + bw / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="10">{bucket["mark"] * 1000:.1f}</text>')
        if bucket["count"]:
            body.append(f'<text x="{x + bw / 2:.1f}" y="{top + plot_h - h - 4:.1f}" text-anchor="middle" font-size="10">{bucket["count"]}</text>')
    body.append(f'<text x="{left + span / 2}" y="{height - 24}" text-anchor="middle">latency, ms (bucket upper edge)</text>')
    dist = ", ".join(f'p{d["percentage"]} {d["latency"] / 1e6:.2f} ms' for d in report.get("latencyDistribution", []) if d["percentage"] in (50, 90, 99))
    body.append(f'<text x="{left + span / 2}" y="{height - 6}" text-anchor="middle" font-size="11">{html.escape(dist)}</text>')
    _svg(path, height, body, title)


def _timestamp(text):
    """Seconds since the epoch of an RFC 3339 UTC timestamp with nanoseconds."""
    main, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    return seconds + (int(fraction) / 10 ** len(fraction) if fraction else 0)


def timeline(path, title, runs):
    """Each call of each run as a bar from its start to its end."""
    left, top, lane_gap = 230, 40, 14
    span = WIDTH - left - 30
    lanes = []
    longest = 0.0
    for label, report in runs:
        details = report.get("details") or []
        if not details:
            continue
        t0 = min(_timestamp(d["timestamp"]) for d in details)
        calls = sorted((_timestamp(d["timestamp"]) - t0, d["latency"] / 1e9) for d in details)
        longest = max(longest, max(s + l for s, l in calls))
        lanes.append((label, calls))
    scale = span / (longest or 1)
    body = []
    y = top
    for i, (label, calls) in enumerate(lanes):
        height = max(24, min(3 * len(calls), 130))
        step = height / len(calls)
        body.append(f'<text x="{left - 8}" y="{y + height / 2 + 4:.1f}" text-anchor="end">{html.escape(label)}</text>')
        for j, (start, latency) in enumerate(calls):
            body.append(f'<rect x="{left + start * scale:.1f}" y="{y + j * step:.1f}" width="{max(1, latency * scale):.1f}" '
                        f'height="{max(1, step - 0.5):.1f}" fill="{COLORS[i % len(COLORS)]}"/>')
        y += height + lane_gap
    for k in range(6):
        x = left + span * k / 5
        body.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{y}" stroke="#ddd"/>')
        body.append(f'<text x="{x:.1f}" y="{y + 14}" text-anchor="middle" font-size="10">{longest * k / 5:.2f} s</text>')
    _svg(path, y + 30, body, title)


def spread(path, title, items, unit=""):
    """Horizontal bars to the median of each (label, values), with a line
    from the least to the greatest value (the spread across rounds)."""
    top, row, left = 40, 34, 200
    span = WIDTH - left - 140
    items = [(label, sorted(values)) for label, values in items if values]
    peak = max((v[-1] for _, v in items), default=1) or 1
    body = []
    for i, (label, values) in enumerate(items):
        y = top + i * row
        median = values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
        w = max(1, span * median / peak)
        lo, hi = left + span * values[0] / peak, left + span * values[-1] / peak
        body.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end">{html.escape(label)}</text>')
        body.append(f'<rect x="{left}" y="{y + 4}" width="{w:.1f}" height="{row - 10}" fill="{COLORS[i % len(COLORS)]}"/>')
        body.append(f'<line x1="{lo:.1f}" y1="{y + 17}" x2="{hi:.1f}" y2="{y + 17}" stroke="black" stroke-width="2"/>')
        body.append(f'<text x="{max(hi, left + w) + 6:.1f}" y="{y + 17}">{median:,.1f} {html.escape(unit)}</text>')
    _svg(path, top + row * len(items) + 10, body, title)


def columns(path, title, series, marks=()):
    """Stacked columns over time, one per (t seconds, ok, failed), with
    vertical lines at each (label, t seconds) of `marks`."""
    top, left, bottom = 40, 60, 50
    height = 300
    plot_h = height - top - bottom
    span = WIDTH - left - 30
    peak = max((ok + bad for _, ok, bad in series), default=1) or 1
    end = max((t for t, _, _ in series), default=0) + (series[1][0] - series[0][0] if len(series) > 1 else 1)
    scale = span / (end or 1)
    width = max(1.0, scale * (end / max(1, len(series))) - 1)
    body = [f'<rect x="{left}" y="30" width="12" height="12" fill="{COLORS[0]}"/><text x="{left + 18}" y="41">OK</text>',
            f'<rect x="{left + 60}" y="30" width="12" height="12" fill="{COLORS[3]}"/><text x="{left + 78}" y="41">failed</text>']
    for t, ok, bad in series:
        x = left + t * scale
        h_ok, h_bad = plot_h * ok / peak, plot_h * bad / peak
        body.append(f'<rect x="{x:.1f}" y="{top + plot_h - h_ok:.1f}" width="{width:.1f}" height="{h_ok:.1f}" fill="{COLORS[0]}"/>')
        if bad:
            body.append(f'<rect x="{x:.1f}" y="{top + plot_h - h_ok - h_bad:.1f}" width="{width:.1f}" height="{h_bad:.1f}" fill="{COLORS[3]}"/>')
    for i, (label, t) in enumerate(marks):
        x = left + t * scale
        body.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="black" stroke-dasharray="4 3"/>')
        body.append(f'<text x="{x + 4:.1f}" y="{top + 12 + 14 * i}" font-size="11">{html.escape(label)}</text>')
    for k in range(6):
        x = left + span * k / 5
        body.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="10">{end * k / 5:.1f} s</text>')
    body.append(f'<text x="{left - 8}" y="{top + 10}" text-anchor="end" font-size="10">{peak}</text>')
    _svg(path, height, body, title)
