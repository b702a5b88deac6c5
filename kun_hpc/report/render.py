"""Rendering the report's blocks (:class:`Part`) to Markdown and to self-contained HTML (PNG plots embedded as
data: URIs, so the HTML file alone works wherever it is copied)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kun_hpc.quality.section import Table
from kun_hpc.report.paths import strip_local_paths

STYLE = """
body{font-family:system-ui,sans-serif;max-width:80rem;margin:1.5rem auto;padding:0 1rem;color:#222;
line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;margin-top:2rem}
nav{background:#f7f7f7;border:1px solid #ddd;padding:.3rem 1.2rem;display:inline-block}
nav ul{margin:.2rem 0;padding-left:1.2rem}
table{border-collapse:collapse;margin:.4rem 0 1.2rem;font-size:.88rem}
th,td{border:1px solid #ccc;padding:.2rem .5rem;vertical-align:top;text-align:left}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
caption{text-align:left;font-weight:600;padding:.2rem 0}
table.samples td{max-width:30rem;overflow-wrap:anywhere}table.samples td:nth-child(2){white-space:nowrap}
figure{margin:.5rem 0 1.5rem}img{max-width:100%;height:auto;border:1px solid #eee}
code{background:#f3f3f3;padding:0 .2rem}.note{color:#555;font-size:.9rem}
"""
_NUMBER = re.compile(r"-?[\d,]+(\.\d+)?%?")


@dataclass
class Part:
    """One block of the report, rendered to Markdown and to HTML alike: a heading (``level`` 2 or 3) with
    paragraphs, tables (each with its HTML id) and plots."""

    title: str
    anchor: str
    level: int = 2
    lines: Sequence[str] = ()
    tables: Sequence[tuple[str, Table]] = ()
    plots: Sequence[str] = ()
    css: str = ""  # class of its tables
    clean: bool = True  # pass its text through strip_local_paths (not record samples: they are data)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (cells escaped: ``\\``, ``|``, newlines)."""
    out = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(_md_cell(str(c)) for c in r) + " |" for r in rows]


def part_md(part: Part) -> list[str]:
    """The Markdown lines of a block: heading, paragraphs, tables with their titles, plot links."""
    text = strip_local_paths if part.clean else str
    out = ["#" * part.level + " " + text(part.title), ""]
    for line in part.lines:
        out += [text(line), ""]
    for _, t in part.tables:
        if t.title:
            out += [f"**{_md_cell(text(t.title))}**", ""]
        cells = [[text(str(c)) for c in r] for r in t.rows]
        out += [*md_table([text(h) for h in t.header], cells), ""]
    out += [f"![{p}]({p})\n" for p in part.plots]
    return out


_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


def inline_html(text: str) -> str:
    """Escaped ``text`` with Markdown's inline `code` and **bold** (what a Section's lines use) as tags."""
    out, at = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[at : m.start()]))
        out.append(f"<code>{html.escape(m[1])}</code>" if m[1] else f"<strong>{html.escape(m[2])}</strong>")
        at = m.end()
    return "".join(out) + html.escape(text[at:])


def _html_table(table: Table, anchor: str, css: str = "", clean: bool = False) -> str:
    text = strip_local_paths if clean else str
    th = "".join(f"<th>{html.escape(text(h))}</th>" for h in table.header)
    trs = []
    for r in table.rows:
        tds = []
        for c in map(str, r):
            num = ' class="num"' if _NUMBER.fullmatch(c) else ""
            tds.append(f"<td{num}>{inline_html(text(c))}</td>")
        trs.append("<tr>" + "".join(tds) + "</tr>")
    cap = f"<caption>{inline_html(text(table.title))}</caption>" if table.title else ""
    cls = f' class="{css}"' if css else ""
    return f'<table id="{anchor}"{cls}>{cap}<thead><tr>{th}</tr></thead><tbody>{"".join(trs)}</tbody></table>'


def part_html(part: Part, folder: Path) -> str:
    """The HTML of a block, its plots (PNG files in ``folder``) embedded as data: URIs."""
    text = strip_local_paths if part.clean else str
    h = f"h{part.level}"
    out = [f'<{h} id="{part.anchor}">{html.escape(text(part.title))}</{h}>']
    out += [f"<p>{inline_html(text(line))}</p>" for line in part.lines]
    out += [_html_table(t, anchor, part.css, part.clean) for anchor, t in part.tables]
    for p in part.plots:
        data = base64.b64encode((folder / p).read_bytes()).decode()
        alt = html.escape(p)
        out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"></figure>')
    return "\n".join(out)


def toc(parts: list[Part]) -> str:
    """The table of contents: a link to every block, level-3 blocks nested under the one before."""
    items, open_sub = [], False
    for p in parts:
        link = f'<a href="#{p.anchor}">{html.escape(strip_local_paths(p.title))}</a>'
        if p.level == 3 and not open_sub:
            items.append("<ul>")
            open_sub = True
        elif p.level == 2 and open_sub:
            items.append("</ul>")
            open_sub = False
        items.append(f"<li>{link}</li>")
    return (
        "<nav><strong>Contents</strong><ul>" + "".join(items) + ("</ul>" if open_sub else "") + "</ul></nav>"
    )
