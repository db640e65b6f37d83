"""MkDocs hook: write the solver reference from the registry, so it is never out of date.

On any page, the marker ``<!-- solver-table -->`` becomes a table of every solver in
``ksampling.samplers.available()`` (name, order, NFE per step, ODE/SDE, multistep, options,
paper, first line of the docstring), built from ``ksampling.samplers.info(name)``; the marker
``<!-- solver-modules -->`` becomes one mkdocstrings section (``::: module``) per module that
registers a solver, which renders each solver's docstring with its update equation.

It also turns the Sphinx roles some docstrings use (``:func:`~ksampling.x.f``` ) into plain
code (``f``) in the rendered pages, since Markdown has no roles.

``solver_table()`` and ``solver_modules()`` are plain functions so that the tests can call
them too.
"""

from __future__ import annotations

import inspect
import re

TABLE_MARKER = "<!-- solver-table -->"
MODULES_MARKER = "<!-- solver-modules -->"
SUMMARY_LIMIT = 240  # characters of a docstring's first paragraph shown in the table
_ROLE_MD = re.compile(r":(?:func|class|meth|data|mod|attr|obj|exc):`~?([\w.]+)`")
_ROLE_HTML = re.compile(r":(?:func|class|meth|data|mod|attr|obj|exc):<code>(~?)([\w.]+)</code>")


def _strip_roles_md(text: str) -> str:
    return _ROLE_MD.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)


def _strip_roles_html(html: str) -> str:
    def plain(match):
        name = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
        return f"<code>{name}</code>"

    return _ROLE_HTML.sub(plain, html)


def _cell(text: str) -> str:
    # A table cell is one line; a pipe would end the cell.
    return " ".join(str(text).split()).replace("|", "\\|")


def _summary(cls) -> str:
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    paragraphs = doc.split("\n\n")
    first_paragraph = paragraphs[0]
    if first_paragraph.rstrip()[-1:] in (":", ",") and len(paragraphs) > 1:
        # "... in the VE state space:" announces the equation in the next paragraph.
        first_paragraph += " " + paragraphs[1]
    # Docstrings use reStructuredText double backticks; Markdown wants single ones.
    text = _cell(_strip_roles_md(first_paragraph.replace("``", "`")))
    if len(text) > SUMMARY_LIMIT:
        # Cut at a word boundary; close a code span the cut left open.
        text = text[: text.rfind(" ", 0, SUMMARY_LIMIT)].rstrip(",;: ") + " …"
        if text.count("`") % 2:
            text = text[:-2] + "` …"
    return text


def _options(options: dict) -> str:
    if not options:
        return "–"
    return _cell(", ".join(f"`{name}={default!r}`" for name, default in options.items()))


def solver_table() -> str:
    """The Markdown table of every registered solver."""
    from ksampling import samplers

    rows = [
        "| solver | order | NFE / step | kind | multistep | options (defaults) | paper | update |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in samplers.available():
        meta = samplers.info(name)
        cls = samplers.get(name)
        anchor = f"{cls.__module__}.{cls.__qualname__}"
        rows.append(
            "| "
            + " | ".join(
                [
                    f"[`{name}`][{anchor}]",
                    str(meta["order"]),
                    str(meta["nfe_per_step"]) if meta["fixed_grid"] else f"{meta['nfe_per_step']} (adaptive)",
                    meta["kind"].upper(),
                    "yes" if meta["multistep"] else "no",
                    _options(meta["options"]),
                    _cell(meta["paper"]) or "–",
                    _summary(cls),
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def solver_modules() -> list[str]:
    """The modules that register at least one solver, in the order of first registration."""
    from ksampling import samplers

    modules: list[str] = []
    for name in samplers.available():
        module = samplers.get(name).__module__
        if module not in modules:
            modules.append(module)
    return sorted(modules)


def _module_sections() -> str:
    sections = []
    for module in solver_modules():
        sections.append(f"::: {module}\n    options:\n      show_root_heading: true\n      heading_level: 2\n")
    return "\n".join(sections)


def on_page_markdown(markdown, page, config, files, **kwargs):
    if TABLE_MARKER in markdown:
        markdown = markdown.replace(TABLE_MARKER, solver_table())
    if MODULES_MARKER in markdown:
        markdown = markdown.replace(MODULES_MARKER, _module_sections())
    return markdown


def on_page_content(html, page, config, files, **kwargs):
    return _strip_roles_html(html)
