"""The concept graph as files other tools read: JSON of nodes and edges, and GraphML.

GraphML (http://graphml.graphdrawing.org/specification.html) is what Gephi, Cytoscape, yEd and
``networkx.read_graphml`` open; it is written here with the standard library's
``xml.etree.ElementTree``. A node is one concept of one layer, id ``"{hook}:{concept}"``, with its
layer index, hook, concept and the node table's metrics where it has them (concepts of the first
layer have none); an edge goes from a parent concept of layer l to a concept of layer l+1, with the
final fit's ``weight`` and the ensemble's ``usage``. The JSON form is
``{"directed": true, "nodes": [...], "edges": [...]}`` with the same attributes (the node-link
layout networkx's ``node_link_graph`` reads with ``edges="edges"``).

Where the graph stores ROC curves, a node with an AUC also has ``roc_tpr``: its held-out
true-positive rates at the fixed false-positive rates given once for the graph as ``roc_fpr``
(:data:`vsae.graph.nodes.ROC_FPR`). JSON holds them as lists of numbers; GraphML, which has no list
type, as a string attribute of space-separated numbers (``roc_fpr`` a graph attribute), which
:func:`read_graphml` turns back into lists.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import pyarrow as pa

NODE_KEYS = (("layer", "int"), ("hook", "string"), ("concept", "int"), ("status", "string"), ("n_parents", "int"),
             ("auc", "double"), ("f1", "double"), ("train_on", "long"), ("held_on", "long"))
EDGE_KEYS = (("weight", "double"), ("usage", "double"))


def node_id(hook: str, concept: int) -> str:
    return f"{hook}:{concept}"


def graph_dict(hooks: list[str], n_concepts: list[int], nodes: pa.Table, edges: pa.Table,
               roc: pa.Table | None = None) -> dict[str, Any]:
    """Node-link JSON of the whole graph (every concept of every layer, every edge); with ``roc``
    (the graph's ``roc.parquet``: hook, concept, fpr, tpr), each curve as the node's ``roc_tpr``."""
    rows = {(r["hook"], r["concept"]): r for r in nodes.to_pylist()}
    curves = {} if roc is None else {(r["hook"], r["concept"]): r for r in roc.select(["hook", "concept", "fpr", "tpr"]).to_pylist()}
    out_nodes = []
    for layer, (hook, n) in enumerate(zip(hooks, n_concepts)):
        for concept in range(n):
            r = rows.get((hook, concept), {})
            node = {"id": node_id(hook, concept), "layer": layer, "hook": hook, "concept": concept}
            node |= {k: r[k] for k, _ in NODE_KEYS if k in r and k not in node and r[k] is not None}
            if (hook, concept) in curves:
                node["roc_tpr"] = [float(v) for v in curves[hook, concept]["tpr"]]
            out_nodes.append(node)
    out_edges = [{"source": node_id(e["parent_hook"], e["parent"]), "target": node_id(e["hook"], e["concept"]),
                  "weight": e["weight"], "usage": e["usage"]} for e in edges.to_pylist()]
    meta: dict[str, Any] = {"hooks": hooks}
    if curves:
        meta["roc_fpr"] = [float(v) for v in next(iter(curves.values()))["fpr"]]
    return {"directed": True, "multigraph": False, "graph": meta, "nodes": out_nodes, "edges": out_edges}


def to_json(graph: dict[str, Any]) -> bytes:
    return json.dumps(graph, indent=1).encode()


def to_graphml(graph: dict[str, Any]) -> bytes:
    """GraphML bytes of :func:`graph_dict`'s graph (typed ``<key>`` declarations, directed edges)."""
    ns = "http://graphml.graphdrawing.org/xmlns"
    root = ET.Element("graphml", {"xmlns": ns})
    for name, kind in NODE_KEYS:
        ET.SubElement(root, "key", {"id": f"n_{name}", "for": "node", "attr.name": name, "attr.type": kind})
    for name, kind in EDGE_KEYS:
        ET.SubElement(root, "key", {"id": f"e_{name}", "for": "edge", "attr.name": name, "attr.type": kind})
    has_roc = "roc_fpr" in graph.get("graph", {})
    if has_roc:
        ET.SubElement(root, "key", {"id": "g_roc_fpr", "for": "graph", "attr.name": "roc_fpr", "attr.type": "string"})
        ET.SubElement(root, "key", {"id": "n_roc_tpr", "for": "node", "attr.name": "roc_tpr", "attr.type": "string"})
    g = ET.SubElement(root, "graph", {"id": "concepts", "edgedefault": "directed"})
    if has_roc:
        ET.SubElement(g, "data", {"key": "g_roc_fpr"}).text = _numbers(graph["graph"]["roc_fpr"])
    for node in graph["nodes"]:
        el = ET.SubElement(g, "node", {"id": node["id"]})
        for name, _ in NODE_KEYS:
            if name in node:
                ET.SubElement(el, "data", {"key": f"n_{name}"}).text = str(node[name])
        if has_roc and "roc_tpr" in node:
            ET.SubElement(el, "data", {"key": "n_roc_tpr"}).text = _numbers(node["roc_tpr"])
    for i, edge in enumerate(graph["edges"]):
        el = ET.SubElement(g, "edge", {"id": f"e{i}", "source": edge["source"], "target": edge["target"]})
        for name, _ in EDGE_KEYS:
            ET.SubElement(el, "data", {"key": f"e_{name}"}).text = repr(float(edge[name]))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def read_graphml(data: bytes) -> dict[str, Any]:
    """The inverse of :func:`to_graphml` (typed attributes back), for round trips and for users
    without networkx."""
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    root = ET.fromstring(data)
    keys = {k.get("id"): (k.get("attr.name"), k.get("attr.type")) for k in root.findall("g:key", ns)}
    cast = {"int": int, "long": int, "double": float, "string": str}

    def value(key: str, text: str) -> Any:
        name, kind = keys[key]
        return [float(v) for v in text.split()] if name in LIST_KEYS else cast[kind](text)

    def attrs(el) -> dict[str, Any]:
        return {keys[d.get("key")][0]: value(d.get("key"), d.text or "") for d in el.findall("g:data", ns)}

    g = root.find("g:graph", ns)
    nodes = [{"id": n.get("id"), **attrs(n)} for n in g.findall("g:node", ns)]
    edges = [{"source": e.get("source"), "target": e.get("target"), **attrs(e)} for e in g.findall("g:edge", ns)]
    return {"graph": attrs(g), "nodes": nodes, "edges": edges}


LIST_KEYS = ("roc_fpr", "roc_tpr")
"""Attributes GraphML holds as strings of space-separated numbers."""


def _numbers(values) -> str:
    return " ".join(repr(float(v)) for v in values)


__all__ = ["graph_dict", "node_id", "read_graphml", "to_graphml", "to_json"]
