"""runner.reports.templates: a page's template and assets are found by its name, registered nowhere."""

import jinja2
from markupsafe import Markup

from runner.reports import templates
from runner.reports.templates import ASSET_SUFFIXES, ASSETS_DIR, TEMPLATES_DIR, page_assets, render


def test_every_page_template_extends_the_shell_and_every_asset_belongs_to_a_template():
    """An asset is found by its template's name, so one whose name matches no template would be dropped
    silently: each must match one."""
    pages = {path.stem for path in TEMPLATES_DIR.glob("*.html")} - {"base"}
    assert {"leaderboard", "lineage", "compare", "ensemble"} <= pages
    for page in pages:
        assert '{% extends "base.html" %}' in (TEMPLATES_DIR / f"{page}.html").read_text(encoding="utf-8"), page
    suffixes = set(ASSET_SUFFIXES.values())
    for path in ASSETS_DIR.iterdir():
        assert path.suffix in suffixes and path.stem in pages, path.name


def test_a_pages_assets_are_its_files_by_name_and_empty_without_them(tmp_path, monkeypatch):
    (tmp_path / "page.css").write_text("b{color:red}", encoding="utf-8")
    monkeypatch.setattr(templates, "ASSETS_DIR", tmp_path)
    assets = page_assets("page.html")
    assert assets == {"css": "b{color:red}", "js": ""} and all(isinstance(v, Markup) for v in assets.values())
    assert page_assets("other.html") == {"css": "", "js": ""}


def test_render_gives_a_new_page_its_assets_by_name_and_the_context_the_last_word(tmp_path, monkeypatch):
    """A template and asset files named alike are all a page needs: `render` inlines `<page>.css` in the shell's
    style block and gives `<page>.js` as `js`, as they are; a `css` in the context replaces the file (escaped,
    as any value that is not `Markup`)."""
    (tmp_path / "page.css").write_text("a>b{}", encoding="utf-8")
    (tmp_path / "page.js").write_text("let x = 1 < 2;", encoding="utf-8")
    monkeypatch.setattr(templates, "ASSETS_DIR", tmp_path)
    real = templates.environment()
    body = '{% extends "base.html" %}{% block body %}<script>{{ js }}</script>{% endblock %}'
    env = real.overlay(loader=jinja2.ChoiceLoader([jinja2.DictLoader({"page.html": body}), real.loader]))
    monkeypatch.setattr(templates, "environment", lambda: env)
    page = render("page.html")
    assert "<style>a>b{}</style>" in page and "<script>let x = 1 < 2;</script>" in page
    assert "<style>a&gt;b</style>" in render("page.html", css="a>b")
