"""Jinja2 templates of the html pages, rendered by name: `render("<page>.html", ...)`.

Every page is rendered through `render`: one `jinja2.Environment` with
`autoescape=True`, so every value a template prints (`{{ value }}`) is
html-escaped, attribute values included; only `markupsafe.Markup` values pass
as they are (the pages' own CSS and script, which `render` inlines). A value
is escaped as `html.escape(str(value), quote=True)` does (`'` becomes
`&#x27;`, `"` `&quot;`), and `None` prints as nothing.

Nothing here lists the pages: a template is found by its file name in this
folder, and a page's own CSS and script by the same name in `ASSETS_DIR`
(`page_assets`). `base.html` holds the document shell (charset, viewport,
title, inline style: the page's `css` unless its template fills the `style`
block itself); every page template extends it. A new page is its module
(which calls `render`), its template, and optionally `assets/<page>.css` and
`assets/<page>.js`, registered nowhere.
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
ASSETS_DIR = TEMPLATES_DIR.parent / "assets"
"""`runner/reports/assets/`: a page's own CSS and script, `<page>.css` and `<page>.js`, inlined into it by
`render` (one offline file: nothing beside the page, no network)."""
ASSET_SUFFIXES = {"css": ".css", "js": ".js"}
"""The template variables `render` fills from `ASSETS_DIR`, and the suffix of the file each is read from."""


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


def page_assets(name: str) -> dict[str, Markup]:
    """The CSS and script of the template `name`, found by its name in `ASSETS_DIR`.

    Args:
        name: a template's file name, e.g. `"leaderboard.html"`: its assets are
            `leaderboard.css` and `leaderboard.js`.

    Returns:
        `{"css": ..., "js": ...}` (`ASSET_SUFFIXES`), each the file's text as
        `Markup` (the project's own, inlined as it is), or empty where the page has no such file.
    """
    stem = Path(name).stem
    assets = {}
    for variable, suffix in ASSET_SUFFIXES.items():
        path = ASSETS_DIR / f"{stem}{suffix}"
        assets[variable] = Markup(path.read_text(encoding="utf-8") if path.is_file() else "")
    return assets


def render(name: str, **context: Any) -> str:
    """Render the template `name` with its assets (`page_assets`) and `context`.

    Args:
        name: a file of `TEMPLATES_DIR`, e.g. `"leaderboard.html"`.
        **context: the template's variables (a `css` or `js` given here replaces the page's asset).

    Returns:
        The html document.

    Raises:
        jinja2.TemplateNotFound: no template `name`.
        jinja2.UndefinedError: the template uses a variable not in `context` nor `ASSET_SUFFIXES`.
    """
    return environment().get_template(name).render({**page_assets(name), **context})
