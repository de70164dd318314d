"""The step graph of a run drawn as a picture (inline SVG, no script): one box per step in execution order,
coloured by its status, with its seconds; from each step that writes products a line down to the steps that
read them, an arrow into each (its title names the products)."""
from __future__ import annotations

from html import escape

__all__ = ["graph_edges", "step_graph_svg", "STATUS_COLOURS"]

#: Box colour per step status.
STATUS_COLOURS = {"run": "#cfe8cf", "cached": "#cfdff5", "off": "#e6e6e6", "not run": "#ffffff", "failed": "#f5c6c6"}


def graph_edges(steps: list[dict]) -> list[tuple[int, int, str]]:
    """``(producer, consumer, product)`` for every product a step reads from an earlier step (its latest writer).

    ``steps``: in execution order, each with ``reads`` and ``writes`` (lists of product names)."""
    edges = []
    for j, step in enumerate(steps):
        for product in step.get("reads", []):
            writers = [i for i in range(j) if product in steps[i].get("writes", [])]
            if writers:
                edges.append((writers[-1], j, product))
    return edges


def step_graph_svg(steps: list[dict], *, box_w: int = 170, box_h: int = 34, gap: int = 22) -> str:
    """SVG markup of the graph.

    Parameters
    ----------
    steps : list of dict
        In execution order: ``name``, ``status`` (run, cached, off, not run, failed), ``seconds`` (or None),
        ``reads`` and ``writes`` (product names).
    box_w, box_h, gap : int
        Box size and vertical gap [CSS px].
    """
    edges = graph_edges(steps)
    # one lane per producing step: a line down from it, an arrow into each step that reads what it wrote
    feeds: dict = {}
    for i, j, product in edges:
        feeds.setdefault(i, {}).setdefault(j, []).append(product)
    producers = sorted(feeds)
    lanes = max(len(producers), 1)
    lane_w = 14
    label_w = 330
    width = 10 + box_w + 20 + lanes * lane_w + label_w
    height = 10 + len(steps) * (box_h + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="step-graph" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
             '<title>step graph</title>',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>']

    def mid(k):
        return 10 + k * (box_h + gap) + box_h / 2

    for n, i in enumerate(producers):
        x = 10 + box_w + 14 + n * lane_w
        last = max(feeds[i])
        colour = "#777"
        parts.append(f'<path d="M {10 + box_w} {mid(i) + 6:.0f} H {x} V {mid(last) - 6:.0f}" fill="none" '
                     f'stroke="{colour}" stroke-width="1.2"/>')
        for j, products in sorted(feeds[i].items()):
            parts.append(f'<path class="edge" d="M {x} {mid(j) - 6:.0f} H {10 + box_w + 2}" fill="none" '
                         f'stroke="{colour}" stroke-width="1.2" marker-end="url(#arrow)"><title>'
                         f'{escape(steps[i]["name"])} to {escape(steps[j]["name"])}: {escape(", ".join(products))}'
                         f'</title></path>')
    for k, step in enumerate(steps):
        y = 10 + k * (box_h + gap)
        fill = STATUS_COLOURS.get(str(step.get("status")), "#ffffff")
        seconds = step.get("seconds")
        sub = f'{escape(str(step.get("status") or ""))}' + (f", {float(seconds):.2f} s" if seconds is not None else "")
        parts.append(f'<g class="step" data-step="{escape(str(step["name"]))}"><rect x="10" y="{y}" width="{box_w}" '
                     f'height="{box_h}" rx="5" fill="{fill}" stroke="#444"/>'
                     f'<text x="18" y="{y + 14}" font-weight="bold">{escape(str(step["name"]))}</text>'
                     f'<text x="18" y="{y + 28}" fill="#333">{sub}</text></g>')
        writes = ", ".join(step.get("writes", []))
        if writes:
            parts.append(f'<text x="{10 + box_w + 20 + lanes * lane_w}" y="{y + 20}" fill="#555" font-size="10">'
                         f'{escape(writes[:90])}</text>')
    parts.append("</svg>")
    return "".join(parts)
