"""What the records are shown as: the leaderboard (`leaderboard`, `plots`), the lineage tree (`lineage`),
the compare page (`compare`, `compare_data`) and the significance tests they print (`stats`); Jinja2
templates in `templates/`, the leaderboard's CSS and script in `assets/`."""
