"""Bar charts drawn as SVG on the server.

Why this module exists: the reports need a chart, the console loads nothing from a CDN
and runs no inline script (its CSP forbids both), so charts are plain SVG markup with
presentation attributes (not ``style=``, which the CSP would block), every label escaped.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

#: colours per series (channel) and for the days-left buckets
PALETTE = ("#2f6db5", "#e08a1e", "#3a9a5b", "#8a5cc2", "#7a7a7a")


def stacked_bars(
    rows: Sequence[tuple[str, Sequence[int]]],
    series: Sequence[str],
    *,
    title: str,
    colours: Sequence[str] = PALETTE,
    width: int = 560,
    legend: bool = True,
) -> Markup:
    """Horizontal bars, one per row, each split into ``series`` segments, with a legend."""
    bar_h, gap, label_w, top = 22, 8, 130, 28
    plot_w = width - label_w - 60
    total_max = max([sum(v) for _, v in rows] + [1])
    height = top + len(rows) * (bar_h + gap) + (28 if legend else 4)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}" class="chart">',
        f'<text x="0" y="16" font-size="14" font-weight="bold" fill="#222">{escape(title)}</text>',
    ]
    for n, (label, values) in enumerate(rows):
        y = top + n * (bar_h + gap)
        out.append(f'<text x="{label_w - 8}" y="{y + 15}" font-size="12" text-anchor="end" fill="#333">{escape(label)}</text>')
        x = float(label_w)
        for k, value in enumerate(values):
            if value <= 0:
                continue
            w = plot_w * value / total_max
            name = series[k] if k < len(series) else ""
            out.append(
                f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" height="{bar_h}" fill="{colours[k % len(colours)]}">'
                f"<title>{escape(label)}: {escape(name)} {value}</title></rect>"
            )
            x += w
        out.append(f'<text x="{x + 6:.1f}" y="{y + 15}" font-size="12" fill="#333">{sum(values)}</text>')
    if legend and len(series) > 1:
        lx, ly = label_w, height - 10
        for k, name in enumerate(series):
            out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{colours[k % len(colours)]}"/>')
            out.append(f'<text x="{lx + 16}" y="{ly}" font-size="12" fill="#333">{escape(name)}</text>')
            lx += 30 + 8 * len(name)
    out.append("</svg>")
    return Markup("".join(out))


def bars(rows: Sequence[tuple[str, int]], *, title: str, colours: Sequence[str], width: int = 560) -> Markup:
    """One bar per row, each in its own colour (e.g. red for overdue), no legend."""
    matrix = [(label, [value if j == i else 0 for j in range(len(rows))]) for i, (label, value) in enumerate(rows)]
    return stacked_bars(matrix, [label for label, _ in rows], title=title, colours=colours, width=width, legend=False)
