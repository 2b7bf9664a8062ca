"""The HTML of the dashboard's pages: plain strings, relative links, nothing fetched at view time.

Every number shown is also in a ``data-value`` attribute with Python's ``repr`` of the value the
client answers (a float32 widened to a float, so it round-trips exactly): a reader of the page
and a test can compare them with :class:`vsae.Client` without parsing formatted text. Charts of
one feature (histogram, class means) are HTML bars, not images: a page per feature for tens of
thousands of features stays one small file with no figure to render.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any


def num(value: Any) -> str:
    """A number for a table cell: 4 significant digits, ``–`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def cell(value: Any) -> str:
    return f'<td class="num" data-value="{escape(repr(value))}">{num(value)}</td>'


def page(title: str, root: str, body: str, crumbs: list[tuple[str, str]] = (), scripts: tuple[str, ...] = ()) -> str:
    """A whole page: ``root`` is the relative path to the site root (``""``, ``"../../"``)."""
    nav = " / ".join(f'<a href="{escape(href)}">{escape(text)}</a>' for text, href in crumbs)
    tags = "".join(f'<script src="{escape(src)}"></script>' for src in scripts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)}</title><link rel="icon" href="data:,">'
            f'<link rel="stylesheet" href="{root}assets/style.css"></head>\n<body>'
            f'<nav class="crumbs">{nav}</nav>\n{body}\n{tags}</body></html>\n')


def stats_table(row: dict[str, Any], n_images: int, dense: bool) -> str:
    """A feature's statistics as the client's ``features_table`` row holds them."""
    items = [("max activation", "max"), ("mean over images", "mean"), ("fraction of images firing", "frac_images"),
             ("fraction of stored rows firing", "frac_rows"), ("mono score (0 = one class)", "mono"),
             ("top class mean", "top_class_mean")]
    rows = "".join(f'<tr><th>{label}</th>{cell(row[key])}</tr>' for label, key in items)
    top = row["top_class_name"]
    rows += f'<tr><th>top class</th><td>{escape(top) if top else "–"} <code>{escape(row["top_class"] or "")}</code></td></tr>'
    flags = ("dead: never fired on an analysed image" if row["frac_images"] == 0 else
             "dense: fires on many rows" if dense else "")
    if flags:
        rows += f"<tr><th>flag</th><td>{flags}</td></tr>"
    rows += f'<tr><th>images analysed</th>{cell(n_images)}</tr>'
    return f'<table class="stats" id="stats">{rows}</table>'


def histogram(counts: list[int], maximum: float, n_zero: int) -> str:
    """Images per equal interval of (0, max] (seed 001's intervals) as columns."""
    top = max(counts + [1])
    cols = "".join(f'<div class="col" style="height:{100 * c / top:.1f}%" title="{c} images" data-value="{c}"></div>'
                   for c in counts)
    return (f'<div class="hist" id="histogram">{cols}</div>'
            f'<div class="hist-axis"><span>0</span><span>{num(maximum)}</span></div>'
            f'<p class="note">images by their max activation in {len(counts)} equal intervals; '
            f'{n_zero} images at 0</p>')


def class_bars(rows: list[dict[str, Any]]) -> str:
    """Class means, largest first, as bars labelled with WordNet names."""
    if not rows:
        return '<p class="note">no class means (no labelled images, or classes not analysed)</p>'
    top = max([r["mean"] for r in rows] + [1e-30])
    body = "".join(f'<tr><td>{escape(r["name"])} <code>{escape(r["wnid"])}</code></td>{cell(r["mean"])}'
                   f'<td class="bar"><div class="fill" style="width:{100 * max(r["mean"], 0) / top:.1f}%"></div></td></tr>'
                   for r in rows)
    return f'<table class="bars" id="class-means">{body}</table>'


def example_figures(items: list[dict[str, Any]], size: int) -> str:
    """Crops with their values: ``items`` of ``src`` (or None: image unreadable), ``activation``,
    ``image_id``, ``label`` and optionally ``why`` (the placeholder's title; default ``unreadable``)."""
    figs = []
    for it in items:
        img = (f'<img src="{escape(it["src"])}" width="{size}" height="{size}" alt="image {it["image_id"]}">'
               if it["src"] else f'<div style="width:{size}px;height:{size}px;background:#ddd" title="{escape(it.get("why", "unreadable"))}"></div>')
        figs.append(f'<figure data-image="{it["image_id"]}">{img}<figcaption data-value="{it["activation"]!r}">'
                    f'{num(it["activation"])} {escape(it["label"] or "")}</figcaption></figure>')
    return f'<div class="examples">{"".join(figs)}</div>' if figs else '<p class="note">none</p>'


def link_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], table_id: str) -> str:
    """Rows with an ``href`` (or None) on their first column, and the columns named."""
    if not rows:
        return '<p class="note">none</p>'
    head = "".join(f"<th>{escape(label)}</th>" for label, _ in columns)
    body = []
    for r in rows:
        cells = []
        for i, (_, key) in enumerate(columns):
            v = r[key]
            if i == 0:
                text = escape(str(v))
                cells.append(f'<td><a href="{escape(r["href"])}">{text}</a></td>' if r.get("href") else f"<td>{text}</td>")
            elif isinstance(v, (int, float)) or v is None:
                cells.append(cell(v))
            else:
                cells.append(f"<td>{escape(str(v))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table id="{table_id}"><tr>{head}</tr>{"".join(body)}</table>'


def unit_index(title: str, root: str, crumbs, mono_src: str, summary: str) -> str:
    """The feature table of one unit (filled by ``assets/table.js`` from ``features.js``)."""
    heads = [("feature", "feature", True), ("frac_images", "images firing", True), ("frac_rows", "rows firing", True),
             ("max", "max", True), ("mean", "mean", True), ("mono", "mono", True), ("classes", "top classes", False),
             ("flags", "flags", False)]
    th = "".join(f'<th data-key="{k}" class="{"num" if n else ""}">{escape(label)}</th>' if k != "flags" else
                 f"<th>{escape(label)}</th>" for k, label, n in heads)
    body = (f"<h1>{escape(title)}</h1>{summary}"
            f'<div class="controls"><label>filter <input id="filter" placeholder="feature number or class"></label>'
            f'<label>show <select id="flags"><option value="all">all</option><option value="live">live</option>'
            f'<option value="dead">dead</option><option value="dense">dense</option></select></label></div>'
            f'<div class="pager"><button id="prev">previous</button><span id="page-info"></span>'
            f'<button id="next">next</button></div>'
            f'<table id="features"><thead><tr>{th}</tr></thead><tbody></tbody></table>'
            f'<h2>Mono scores at this hook</h2><img src="{escape(mono_src)}" alt="mono score distribution" width="500" height="300">')
    return page(title, root, body, crumbs, scripts=("features.js", f"{root}assets/table.js"))
