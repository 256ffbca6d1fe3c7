import asyncio
import json
import re
import xml.etree.ElementTree as ET

import pytest

from gboost.search.api import solve
from toy_executor import ToyExecutor
from gboost.search.config import SearchConfig
from gboost.search.tree import Node
from gboost.trace import ACTION_COLORS, from_json, render_html, save_html, to_json


def small_tree():
    root = Node.new_root()
    a = root.add_child("Step <one> & \"two\"", [1, 2], "slm", reward=0.8, state=object())
    b = root.add_child("collab step", [3], "collab", reward=0.4)
    a1 = a.add_child("The answer is 5.", [4], "collab", reward=0.9, terminal=True)
    b1 = b.add_child("llm step", [5], "llm", reward=0.1, terminal=True)
    b1.pruned = True
    b.fault = "llm_timeout"
    for n in (a, b, a1):
        n.backpropagate(n.reward)
    return root, [a, a1]


def test_to_json_fields_and_chosen_flags():
    root, chosen = small_tree()
    obj = to_json(root, chosen, meta={"question": "q?"})
    json.dumps(obj)  # plain JSON
    assert obj["format"] == "gboost-trace" and obj["root"] == 0 and obj["chosen"] == [1, 3]
    by = {n["id"]: n for n in obj["nodes"]}
    assert [n["id"] for n in obj["nodes"]] == [0, 1, 3, 2, 4]
    assert by[1] == {"id": 1, "parent": 0, "depth": 1, "text": "Step <one> & \"two\"", "action": "slm",
                     "reward": 0.8, "visits": 2, "value": pytest.approx(0.85), "terminal": False,
                     "chosen": True, "pruned": False, "fault": None}
    assert [n["chosen"] for n in obj["nodes"]] == [True, True, True, False, False]
    assert by[2]["fault"] == "llm_timeout" and by[4]["pruned"] is True
    assert by[0]["action"] == "root" and by[0]["reward"] is None and by[0]["visits"] == 3


def test_round_trip():
    root, chosen = small_tree()
    obj = to_json(root, chosen)
    root2, chosen2 = from_json(json.dumps(obj))
    assert to_json(root2, chosen2) == obj
    assert [n.text for n in chosen2] == ["Step <one> & \"two\"", "The answer is 5."]
    assert chosen2[1].parent is chosen2[0] and chosen2[0].parent is root2
    assert root2.add_child("new").id == 5  # ids continue after the loaded ones


def test_from_json_rejects_garbage():
    with pytest.raises(ValueError):
        from_json({"nodes": []})
    with pytest.raises(ValueError, match="version"):
        from_json({"format": "gboost-trace", "version": 99, "nodes": []})
    with pytest.raises(ValueError, match="no root"):
        from_json({"format": "gboost-trace", "version": 1, "nodes": []})


def test_html_contains_every_node_escaped_and_valid_svg():
    root, chosen = small_tree()
    page = render_html(to_json(root, chosen, meta={"question": "2 < 3?"}))
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page.split("<svg")[0]
    assert len(re.findall(r'<g class="node', page)) == 5
    assert len(re.findall(r'<g class="node chosen"', page)) == 3
    assert len(re.findall(r'<line class="edge chosen"', page)) == 2
    assert len(re.findall(r'<line class="edge"', page)) == 2
    assert "Step &lt;one&gt; &amp; &quot;two&quot;" in page  # hover title & chosen list, escaped
    assert "<one>" not in page
    assert ACTION_COLORS["collab"] in page and ACTION_COLORS["llm"] in page
    assert "0.90" in page and "n=2" in page and "fault=llm_timeout" in page
    assert "2 &lt; 3?" in page
    svg = page[page.index("<svg"):page.index("</svg>") + 6]
    tree = ET.fromstring(svg)  # well-formed XML
    assert tree.tag.endswith("svg")


def test_html_of_a_real_search(tmp_path):
    b = ToyExecutor()
    res = asyncio.run(solve("What is 3 + 4?", b, SearchConfig(num_simulations=8)))
    obj = to_json(res.root, res.chosen)
    p = save_html(tmp_path / "t.html", obj, title="demo")
    page = p.read_text()
    assert "<title>demo</title>" in page
    assert len(re.findall(r'<g class="node', page)) == res.root.size()
    assert f"Chosen path ({len(res.steps)} steps)" in page
