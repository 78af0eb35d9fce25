"""The report's HTML page: one self-contained file (plotly.js, the styles and every image inside it; viewing it
needs no network). Each section has a stable id (SECTIONS) that tests and links use."""
from __future__ import annotations

import plotly.io as pio
from jinja2 import Environment
from markupsafe import Markup
from plotly.offline import get_plotlyjs

SECTIONS = {
    "trials": "Trials, ranked",
    "baselines": "Against per-gene baselines",
    "marginal-effects": "Each parameter's effect",
    "learning-curves": "Learning curves",
    "parallel-coordinates": "Parameters and scores",
    "importances": "Parameter importances",
    "collapse": "Collapsed predictions",
    "winner": "The winner",
}

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; max-width: 1500px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
p.note { color: #555; font-size: 0.9em; max-width: 70em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; }
td.winner { background: #e8f5e9; font-weight: 600; }
ul.facts { list-style: none; padding: 0; font-size: 0.95em; } ul.facts li { margin: 0.15em 0; }
.resolved { color: #1b5e20; } .unresolved { color: #8d6e00; } .flag { color: #b71c1c; }
img.plot { max-width: 48%; margin: 0.5em 1% 0 0; border: 1px solid #eee; }
nav a { margin-right: 1em; font-size: 0.9em; }
div.table { overflow-x: auto; }
</style>
<script type="text/javascript">{{ plotlyjs }}</script>
</head><body>
<h1>{{ title }}</h1>
<ul class="facts">{% for fact in facts %}<li>{{ fact }}</li>{% endfor %}</ul>
<nav>{% for id, heading in sections.items() %}<a href="#{{ id }}">{{ heading }}</a>{% endfor %}</nav>
{% for id, heading in sections.items() %}{% set s = body[id] %}
<section id="{{ id }}"><h2>{{ heading }}</h2>
{% for line in s.notes %}<p class="note">{{ line }}</p>{% endfor %}
{% for line in s.get("lines", []) %}<p class="{{ line[0] }}">{{ line[1] }}</p>{% endfor %}
{% for part in s.get("html", []) %}{{ part }}{% endfor %}
</section>{% endfor %}
</body></html>
"""


def figure_html(fig, div_id: str) -> Markup:
    """A plotly figure as a <div> (plotly.js comes once, in the page head)."""
    return Markup(pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                              config={"displaylogo": False}))


def image_html(png: bytes, alt: str) -> Markup:
    import base64

    return Markup(f'<img class="plot" alt="{alt}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')


def table_html(table, table_id: str, winner_row: int | None) -> Markup:
    """A DataFrame as an HTML table; the winner's row (its position) is marked."""
    styler = table.style.hide(axis="index").format(precision=4, na_rep="")
    if winner_row is not None:
        styler = styler.set_td_classes(table.apply(lambda col: ["winner" if i == winner_row else ""
                                                                for i in range(len(col))]))
    return Markup(f'<div class="table" id="{table_id}">{styler.to_html()}</div>')


def render(title: str, facts: list[str], body: dict[str, dict]) -> str:
    """The page: `body` maps each id of SECTIONS to {"notes": [text], "lines": [(css class, text)],
    "html": [Markup]}."""
    missing = set(SECTIONS) - set(body)
    if missing:
        raise ValueError(f"report sections without content: {sorted(missing)}")
    env = Environment(autoescape=True)
    return env.from_string(TEMPLATE).render(title=title, facts=facts, sections=SECTIONS, body=body,
                                            plotlyjs=Markup(get_plotlyjs()))
