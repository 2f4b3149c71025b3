"""Jinja2 templates of the html pages: the leaderboard, the lineage tree, an ensemble's report.

Every page is rendered through `render`: one `jinja2.Environment` with
`autoescape=True`, so every value a template prints (`{{ value }}`) is
html-escaped, attribute values included; only `markupsafe.Markup` values pass
as they are (the pages' own CSS and script, which `runner` inlines). A value
is escaped as `html.escape(str(value), quote=True)` does (`'` becomes
`&#x27;`, `"` `&quot;`), and `None` prints as nothing.

`base.html` holds the document shell (charset, viewport, title, inline
style); `leaderboard.html`, `lineage.html` and `ensemble.html` extend it.
"""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

TEMPLATES_DIR = Path(__file__).resolve().parent
"""This folder: the `*.html` templates."""


def _finalize(value: Any) -> Any:
    """Each printed value: `None` as nothing, markup as is, anything else escaped like `html.escape`.

    A string without quotes and a number are handed on as they are: Jinja's
    autoescape (`markupsafe.escape`, in C) writes `&`, `<` and `>` exactly as
    `html.escape` does, and only quotes differ (`&#39;` for `&#x27;`), so
    this gives `html.escape`'s text at a fraction of its cost (a lineage page
    of 100,000 runs prints half a million values).
    """
    if value is None:
        return ""
    cls = value.__class__
    if cls is str:
        return Markup(html.escape(value, quote=True)) if ("'" in value or '"' in value) else value
    if cls is int or cls is float or hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value), quote=True))


@lru_cache(maxsize=None)
def environment() -> jinja2.Environment:
    """The pages' Jinja2 environment (built once).

    Returns:
        An `Environment` loading `TEMPLATES_DIR`, with `autoescape=True`,
        `StrictUndefined` (a name missing from the context is an error, not an
        empty string), `trim_blocks` and `lstrip_blocks`.
    """
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                              undefined=jinja2.StrictUndefined, finalize=_finalize,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render(name: str, **context: Any) -> str:
    """Render the template `name` with `context`.

    Args:
        name: a file of `TEMPLATES_DIR`, e.g. `"leaderboard.html"`.
        **context: the template's variables.

    Returns:
        The html document.

    Raises:
        jinja2.TemplateNotFound: no template `name`.
        jinja2.UndefinedError: the template uses a variable not in `context`.
    """
    return environment().get_template(name).render(**context)
