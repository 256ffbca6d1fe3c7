"""Search-tree traces: tree -> JSON -> self-contained HTML page with an inline SVG drawing.

    obj = to_json(result.root, result.chosen)        # plain dict, json.dumps-able
    html = render_html(obj)                          # one file, no external assets
    root, chosen = from_json(obj)                    # round trip

JSON layout (``format: "gboost-trace"``, ``version: 1``)::

    {"format": "gboost-trace", "version": 1, "root": 0, "chosen": [ids...], "meta": {...},
     "nodes": [{"id", "parent", "depth", "text", "action", "reward", "visits", "value",
                "terminal", "chosen", "pruned", "fault"}, ...]}      # pre-order

In the picture nodes are coloured by action (root grey, slm blue, collab orange,
llm purple), show the PRM reward inside and ``n=visits`` below, terminal steps
are squares, pruned ones faded; the chosen path is drawn thick in green and
listed under the picture.  Hovering a node shows its step text.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Iterable

from gboost.search.tree import Node

__all__ = ["to_json", "from_json", "render_html", "save_html", "ACTION_COLORS"]

FORMAT = "gboost-trace"
VERSION = 1
ACTION_COLORS = {"root": "#8c8c8c", "slm": "#4c78a8", "collab": "#f58518", "llm": "#b279a2"}
_CHOSEN = "#2ca02c"


def to_json(root: Node, chosen_path: Iterable[Node] | None = None,
            meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Serialise a search tree; ``chosen_path`` = nodes of the answer (root optional)."""
    chosen_ids = [n.id for n in (chosen_path or []) if n is not root]
    chosen_set = set(chosen_ids) | ({root.id} if chosen_ids else set())
    nodes = []
    for n in root.iter_nodes():
        nodes.append({
            "id": n.id,
            "parent": n.parent.id if n.parent is not None else None,
            "depth": n.depth,
            "text": n.text,
            "action": n.action,
            "reward": None if n.reward is None else round(float(n.reward), 6),
            "visits": int(n.visits),
            "value": round(float(n.value), 6),
            "terminal": bool(n.terminal),
            "chosen": n.id in chosen_set,
            "pruned": bool(n.pruned),
            "fault": n.fault,
        })
    return {"format": FORMAT, "version": VERSION, "root": root.id, "chosen": chosen_ids,
            "meta": dict(meta or {}), "nodes": nodes}


def from_json(obj: dict[str, Any] | str) -> tuple[Node, list[Node]]:
    """Rebuild (root, chosen path) from :func:`to_json` output (states are not restored)."""
    obj = _load(obj)
    by_id: dict[int, Node] = {}
    root: Node | None = None
    for d in obj["nodes"]:
        node = Node(text=d["text"], action=d["action"], reward=d["reward"], visits=d["visits"],
                    value_sum=d["value"] * d["visits"], terminal=d["terminal"], depth=d["depth"],
                    fault=d.get("fault"), id=d["id"], pruned=d.get("pruned", False))
        if d["parent"] is None:
            if root is not None:
                raise ValueError("trace has more than one root")
            root = node
        else:
            parent = by_id.get(d["parent"])
            if parent is None:
                raise ValueError(f"node {d['id']}: parent {d['parent']} not listed before it")
            node.parent = parent
            node._ids = parent._ids
            parent.children.append(node)
        by_id[d["id"]] = node
    if root is None:
        raise ValueError("trace has no root node")
    root._ids.next = max(by_id) + 1
    return root, [by_id[i] for i in obj.get("chosen", [])]


def _load(obj: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(obj, str):
        obj = json.loads(obj)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError("not a gboost-trace JSON object")
    if obj.get("version") != VERSION:
        raise ValueError(f"unsupported trace version {obj.get('version')!r}")
    return obj


# ------------------------------------------------------------------------------- drawing
_DX, _DY, _R, _PAD = 56, 96, 17, 40


def _layout(nodes: list[dict]) -> dict[int, tuple[float, float]]:
    """Leaves on consecutive columns (pre-order), parents centred over their children."""
    kids: dict[int, list[int]] = {d["id"]: [] for d in nodes}
    root = None
    for d in nodes:
        if d["parent"] is None:
            root = d["id"]
        else:
            kids[d["parent"]].append(d["id"])
    pos: dict[int, tuple[float, float]] = {}
    depth = {d["id"]: d["depth"] for d in nodes}
    col = 0

    def place(i: int) -> float:  # iterative would be overkill: depth <= max_depth
        nonlocal col
        if not kids[i]:
            x = float(col)
            col += 1
        else:
            xs = [place(k) for k in kids[i]]
            x = (xs[0] + xs[-1]) / 2
        pos[i] = (_PAD + x * _DX, _PAD + depth[i] * _DY)
        return x

    if root is not None:
        place(root)
    return pos


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{float(v):.2f}"


def render_html(json_obj: dict[str, Any] | str, title: str | None = None) -> str:
    """A self-contained HTML page drawing the trace as an inline SVG."""
    obj = _load(json_obj)
    nodes = obj["nodes"]
    pos = _layout(nodes)
    by_id = {d["id"]: d for d in nodes}
    width = max((x for x, _ in pos.values()), default=0) + _PAD + _DX
    height = max((y for _, y in pos.values()), default=0) + _PAD + 40
    esc = html.escape
    parts: list[str] = []
    # edges first (under the nodes); chosen edges last so they are on top
    for chosen_pass in (False, True):
        for d in nodes:
            if d["parent"] is None or (d["chosen"] and by_id[d["parent"]]["chosen"]) != chosen_pass:
                continue
            (x1, y1), (x2, y2) = pos[d["parent"]], pos[d["id"]]
            style = (f'stroke="{_CHOSEN}" stroke-width="5"' if chosen_pass
                     else 'stroke="#b9b9b9" stroke-width="1.5"')
            dash = ' stroke-dasharray="4 3"' if d.get("pruned") else ""
            parts.append(f'<line class="edge{" chosen" if chosen_pass else ""}" x1="{x1:.1f}" y1="{y1 + _R:.1f}" '
                         f'x2="{x2:.1f}" y2="{y2 - _R:.1f}" {style}{dash}/>')
    for d in nodes:
        x, y = pos[d["id"]]
        color = ACTION_COLORS.get(d["action"], "#444")
        stroke = (f'stroke="{_CHOSEN}" stroke-width="4"' if d["chosen"] else 'stroke="#333" stroke-width="1"')
        opacity = ' opacity="0.4"' if d.get("pruned") else ""
        tip = (f'#{d["id"]} [{d["action"]}] reward={_fmt(d["reward"])} visits={d["visits"]} '
               f'value={_fmt(d["value"])}' + (" terminal" if d["terminal"] else "")
               + (" pruned" if d.get("pruned") else "") + (f' fault={d["fault"]}' if d.get("fault") else "")
               + ("\n\n" + d["text"] if d["text"] else ""))
        if d["terminal"]:
            shape = (f'<rect x="{x - _R:.1f}" y="{y - _R:.1f}" width="{2 * _R}" height="{2 * _R}" rx="4" '
                     f'fill="{color}" {stroke}/>')
        else:
            shape = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{_R}" fill="{color}" {stroke}/>'
        label = "root" if d["parent"] is None else _fmt(d["reward"])
        parts.append(
            f'<g class="node{" chosen" if d["chosen"] else ""}" data-id="{d["id"]}" '
            f'data-action="{esc(d["action"])}"{opacity}><title>{esc(tip)}</title>{shape}'
            f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" class="rw">{label}</text>'
            f'<text x="{x:.1f}" y="{y + _R + 13:.1f}" text-anchor="middle" class="nv">n={d["visits"]}</text></g>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}">' + "".join(parts) + "</svg>")

    chosen = [by_id[i] for i in obj.get("chosen", []) if i in by_id]
    rows = "".join(
        f'<li><span class="tag" style="background:{ACTION_COLORS.get(d["action"], "#444")}">{esc(d["action"])}</span> '
        f'<b>{_fmt(d["reward"])}</b> <pre>{esc(d["text"])}</pre></li>' for d in chosen)
    meta = obj.get("meta") or {}
    meta_rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in meta.items())
    legend = "".join(f'<span class="tag" style="background:{c}">{a}</span>' for a, c in ACTION_COLORS.items())
    n_by_action: dict[str, int] = {}
    for d in nodes:
        n_by_action[d["action"]] = n_by_action.get(d["action"], 0) + 1
    counts = ", ".join(f"{a}: {n}" for a, n in sorted(n_by_action.items()))
    page_title = esc(title or meta.get("title") or "G-Boost search tree")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{page_title}</title>
<style>
body{{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:16px;color:#222}}
.tree{{overflow:auto;border:1px solid #ddd;border-radius:6px;background:#fcfcfc}}
text.rw{{font-size:10px;fill:#fff;font-weight:600;pointer-events:none}}
text.nv{{font-size:10px;fill:#555;pointer-events:none}}
g.node:hover circle,g.node:hover rect{{stroke:#000;stroke-width:3}}
.tag{{display:inline-block;color:#fff;border-radius:3px;padding:0 6px;margin-right:6px;font-size:12px}}
pre{{white-space:pre-wrap;margin:2px 0 8px 0;font-size:13px}}
li{{margin-bottom:4px}} table{{border-collapse:collapse;font-size:13px}} th{{text-align:left;padding-right:10px}}
</style></head><body>
<h2>{page_title}</h2>
<p>{legend} <span style="color:{_CHOSEN};font-weight:600">━ chosen path</span>
&nbsp; ● step &nbsp; ■ terminal &nbsp; label: PRM reward, n = visits &nbsp; ({len(nodes)} nodes; {esc(counts)})</p>
<table>{meta_rows}</table>
<div class="tree">{svg}</div>
<h3>Chosen path ({len(chosen)} steps)</h3>
<ol>{rows}</ol>
</body></html>
"""


def save_html(path: str | Path, json_obj: dict[str, Any] | str, title: str | None = None) -> Path:
    p = Path(path)
    p.write_text(render_html(json_obj, title), encoding="utf-8")
    return p
