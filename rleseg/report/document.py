"""The report as blocks (headings, paragraphs, code, tables, figures, a person's Markdown), rendered to
Markdown (``report.md``) and to one self-contained HTML page (``report.html``).

**Safety.** Strings that come from a study (parameter values, class names, errors, paths, the study's
name) are data: :func:`md_text` escapes them for Markdown and :func:`md_code` puts them in a code span
that nothing can break out of; table cells are plain text unless their column is declared Markdown. The
HTML is rendered by markdown-it-py with raw HTML off and links limited to relative and http(s) targets
(:func:`safe_link`): a ``javascript:`` link, ``<script>`` or a quote that tries to leave an attribute ends up
as visible text. Relative links to another report's ``report.md`` point at its ``report.html`` in the HTML.

>>> md_text("[x](javascript:alert(1)) <b> dice_mean")
'\\\\[x\\\\](javascript:alert(1)) \\\\<b> dice_mean'
>>> md_code("a`b")
'`` a`b ``'
>>> markdown_to_html("[ok](../x/report.md) [bad](javascript:alert(1))")
'<p><a href="../x/report.html">ok</a> [bad](javascript:alert(1))</p>\\n'
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

# Characters that open Markdown inline structure (code, emphasis, links, HTML, table cells).
_MD_SPECIAL = re.compile(r"([\\`*\[\]<|])")


def md_text(text: Any) -> str:
    """``text`` as literal Markdown inline text: line breaks as spaces; backslash, backtick, ``*``, brackets,
    ``<`` and ``|`` escaped, ``_`` where it could start or end emphasis, ``&`` before an entity name."""
    text = _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split("\n")))
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)
    return re.sub(r"&(?=#?\w+;)", r"\\&", text)


def md_code(text: Any) -> str:
    """``text`` as a Markdown code span whose fence is longer than any backtick run inside it."""
    text = " ".join(str(text).split("\n"))
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest or text.startswith(" ") or text.endswith(" ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def safe_link(url: str) -> bool:
    """Only relative links (a path or ``#anchor``) and http(s) URLs; no scheme-relative ``//host``.

    >>> [safe_link(u) for u in ("trials/trial_0001/", "#best", "https://x.org", "javascript:x", "//evil")]
    [True, True, True, False, False]
    """
    compact = re.sub(r"[\x00-\x20\x7f]", "", url)  # browsers drop tabs and newlines inside schemes
    if compact.startswith(("//", "\\\\", "/\\", "\\/")):
        return False
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*):", compact)
    return scheme is None or scheme.group(1).lower() in ("http", "https")


@cache
def _markdown_it() -> Any:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.validateLink = safe_link

    def link_open(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        href = str(token.attrGet("href") or "")
        if safe_link(href) and "://" not in href:
            path, hash_, frag = href.partition("#")
            if path == "report.md" or path.endswith("/report.md"):
                token.attrSet("href", path[: -len(".md")] + ".html" + hash_ + frag)
        return self.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


def markdown_to_html(text: str) -> str:
    """A Markdown document (a person's notes) as HTML: raw HTML shown as text, unsafe links left as text."""
    return _markdown_it().render(text)


def inline_html(text: str) -> str:
    """Inline Markdown (code, emphasis, links) as HTML, under the same rules as :func:`markdown_to_html`."""
    return _markdown_it().renderInline(text)


# =================================================================================== documents
@dataclass
class _Heading:
    level: int
    text: str  # inline Markdown
    anchor: str = ""


@dataclass
class _Para:
    text: str  # inline Markdown (study strings escaped with md_text / md_code)
    kind: str = ""  # "" | "note" | "warn"


@dataclass
class _Code:
    text: str  # plain text


@dataclass
class _Table:
    """A table of plain-text cells, except in the ``markdown`` columns (built with escaped strings)."""

    frame: pd.DataFrame
    classes: list[str] = field(default_factory=list)  # one CSS class per row
    numeric: set[str] = field(default_factory=set)
    markdown: set[str] = field(default_factory=set)


@dataclass
class _Figure:
    path: Path
    caption: str  # inline Markdown

    @property
    def alt(self) -> str:
        return self.path.stem.replace("_", " ")


@dataclass
class _Markdown:
    text: str  # Markdown (the notes, or a list built with escaped strings)


_Block = _Heading | _Para | _Code | _Table | _Figure | _Markdown


class _Doc:
    """The report as blocks, rendered twice (Markdown, HTML); figures are written as they are added."""

    def __init__(self, fig_dir: Path) -> None:
        self.blocks: list[_Block] = []
        self.sections: list[str] = []
        self.fig_dir = fig_dir
        self.figures: list[Path] = []

    def figure(self, result: tuple[Path | None, str]) -> None:
        """Add a ``(path, caption)`` figure, or the caption alone as a note when there is no figure."""
        path, caption = result
        if path is None:
            self.add(_Para(caption, "note"))
        else:
            self.figures.append(path)
            self.add(_Figure(path, caption))

    def section(self, text: str, anchor: str) -> None:
        self.sections.append(anchor)
        self.blocks.append(_Heading(2, text, anchor))

    def add(self, block: _Block) -> None:
        self.blocks.append(block)


# ---------------------------------------------------------------------------- Markdown output
def _md_cell(table: _Table, column: str, value: Any) -> str:
    text = str(value)
    if column in table.markdown:
        return re.sub(r"(?<!\\)\|", r"\\|", " ".join(text.split("\n")))  # a pipe ends a cell
    return md_text(text)


def _md_table(table: _Table) -> str:
    frame = table.frame
    cols = [str(c) for c in frame.columns]
    head = "| " + " | ".join(md_text(c) for c in cols) + " |"
    rule = "|" + "|".join("---:" if c in table.numeric else "---" for c in cols) + "|"
    rows = [
        "| " + " | ".join(_md_cell(table, c, v) for c, v in zip(cols, row, strict=True)) + " |"
        for row in frame.astype(str).itertuples(index=False)
    ]
    return "\n".join([head, rule, *rows])


def _to_markdown(doc: _Doc, title: str, out: Path) -> str:
    parts = []
    for block in doc.blocks:
        if isinstance(block, _Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, _Para):
            prefix = "> " if block.kind else ""
            parts.append(prefix + block.text)
        elif isinstance(block, _Code):
            fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", block.text)), default=0))
            parts.append(f"{fence}\n{block.text}\n{fence}")
        elif isinstance(block, _Table):
            parts.append(_md_table(block))
        elif isinstance(block, _Figure):
            rel = block.path.relative_to(out).as_posix()
            parts.append(f"![{block.alt}]({rel})\n\n*{block.caption}*")
        elif isinstance(block, _Markdown):
            parts.append(block.text.strip())
    return "\n\n".join(parts).rstrip() + "\n"


# -------------------------------------------------------------------------------- HTML output
_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;color:#1d232a;
 max-width:1400px;margin:0 auto;padding:24px 32px 64px;line-height:1.5;background:#fff}
h1{font-size:1.9em;border-bottom:2px solid #d0d7de;padding-bottom:.3em}
h2{font-size:1.4em;margin-top:2em;border-bottom:1px solid #d0d7de;padding-bottom:.25em}
h3{font-size:1.12em;margin-top:1.5em}
code{background:#f2f4f7;border-radius:4px;padding:.1em .35em;font-size:.92em}
pre{background:#f2f4f7;border-radius:6px;padding:10px 14px;overflow-x:auto}
pre code{background:none;padding:0}
blockquote,.note{border-left:4px solid #8fb3de;background:#f3f7fc;margin:1em 0;padding:.5em 1em}
.warn{border-left:4px solid #e0a526;background:#fdf7e7;margin:1em 0;padding:.5em 1em}
.scroll{overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;font-size:.86em;white-space:nowrap}
th,td{border:1px solid #d8dee4;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafbfc}
tr.complete td:first-child{border-left:4px solid #2e9d57}
tr.best{background:#e7f6ec!important;font-weight:600}
tr.infeasible{color:#6a737d}
tr.infeasible td:first-child{border-left:4px solid #9aa3ab}
tr.pruned td:first-child{border-left:4px solid #d9a21b}
tr.fail{background:#fcefee!important}
tr.fail td:first-child{border-left:4px solid #cf3a33}
tr.running td:first-child{border-left:4px solid #3b82c4}
figure{margin:1.2em 0 2em;text-align:center}
figure img{max-width:100%;height:auto;border:1px solid #e3e7eb;border-radius:4px}
figcaption{font-size:.9em;color:#4a545e;margin-top:.4em;text-align:left}
nav ul{columns:2;font-size:.95em}
"""

#: Row classes a table may carry (anything else is dropped: class names are ours, never data).
_ROW_CLASSES = {"complete", "best", "infeasible", "pruned", "fail", "running"}


def _html_table(table: _Table) -> str:
    cols = [str(c) for c in table.frame.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for k, row in enumerate(table.frame.astype(str).itertuples(index=False)):
        css = table.classes[k] if k < len(table.classes) else ""
        css = " ".join(c for c in css.split() if c in _ROW_CLASSES)
        cells = []
        for c, v in zip(cols, row, strict=True):
            text = inline_html(v) if c in table.markdown else html.escape(v)
            cells.append(f'<td class="num">{text}</td>' if c in table.numeric else f"<td>{text}</td>")
        body.append(f'<tr class="{css}">{"".join(cells)}</tr>')
    rows = "".join(body)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _to_html(doc: _Doc, title: str) -> str:
    parts = []
    toc = [(b.anchor, b.text) for b in doc.blocks if isinstance(b, _Heading) and b.level == 2 and b.anchor]
    for block in doc.blocks:
        if isinstance(block, _Heading):
            anchor = f' id="{html.escape(block.anchor)}"' if block.anchor else ""
            parts.append(f"<h{block.level}{anchor}>{inline_html(block.text)}</h{block.level}>")
        elif isinstance(block, _Para):
            css = ' class="warn"' if block.kind == "warn" else ' class="note"' if block.kind else ""
            parts.append(f"<p{css}>{inline_html(block.text)}</p>")
        elif isinstance(block, _Code):
            parts.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif isinstance(block, _Table):
            parts.append(_html_table(block))
        elif isinstance(block, _Figure):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}">'
                f"<figcaption>{inline_html(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, _Markdown):
            parts.append(markdown_to_html(block.text))
    nav = ""
    if toc:
        items = "".join(f'<li><a href="#{html.escape(a)}">{inline_html(t)}</a></li>' for a, t in toc)
        nav = f"<nav><strong>Contents</strong><ul>{items}</ul></nav>"
    body = "\n".join(parts)
    # The table of contents goes right after the regeneration command (the first code block).
    marker = "</code></pre>"
    if nav and marker in body:
        head, _, tail = body.partition(marker)
        body = head + marker + "\n" + nav + tail
    else:
        body = nav + body
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
