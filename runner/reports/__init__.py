"""What the records are shown as: one module per page (the leaderboard, the lineage tree, the compare page...)
and the helpers pages share (`links`, `plots`, `stats`, `compare_data`).

A page is its module, which calls `runner.reports.templates.render("<page>.html", ...)`, and its template
`templates/<page>.html`; its own CSS and script, if any, are `assets/<page>.css` and `assets/<page>.js`, found
by that name. Nothing lists the pages: a new one is registered nowhere but in the command that writes it."""
