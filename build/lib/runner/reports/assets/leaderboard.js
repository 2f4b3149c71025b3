// Inlined into leaderboard.html by runner/leaderboard.py: sort, filter and the parameter toggle.
(function () {
  "use strict";
  const table = document.getElementById("board");
  if (!table) return;
  const body = table.tBodies[0];
  const headers = Array.from(table.tHead.rows[0].cells);
  const filter = document.getElementById("filter");
  const count = document.getElementById("row-count");
  const showAll = document.getElementById("show-all");
  const rows = () => Array.from(body.rows);
  // A cell's sort key: its data-sort (a figure with a footnote mark) or its text.
  const cellText = (row, i) => (row.cells[i].dataset.sort ?? row.cells[i].textContent).trim();
  const isNumber = (s) => s !== "" && Number.isFinite(Number(s));

  // Click a header: ascending, click again: descending. A column whose non-empty
  // cells are all numbers sorts as numbers; empty cells go last either way.
  function sortBy(index) {
    const th = headers[index];
    const direction = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    const numeric = rows().every((r) => cellText(r, index) === "" || isNumber(cellText(r, index)));
    const compare = (x, y) => (numeric ? Number(x) - Number(y)
      : x.localeCompare(y, undefined, {numeric: true, sensitivity: "base"}));
    const sorted = rows().sort((a, b) => {
      const x = cellText(a, index), y = cellText(b, index);
      if (x === "" || y === "") return (x === "") - (y === "");
      return direction * compare(x, y);
    });
    headers.forEach((h) => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
    body.append(...sorted);
  }

  // Case-insensitive substring over each row's text; shows how many rows match.
  function applyFilter() {
    const query = filter.value.trim().toLowerCase();
    let shown = 0;
    for (const row of rows()) {
      row.hidden = !row.textContent.toLowerCase().includes(query);
      shown += row.hidden ? 0 : 1;
    }
    count.textContent = `${shown} of ${body.rows.length} runs shown`;
  }

  const applyToggle = () => table.classList.toggle("show-all", showAll.checked);

  headers.forEach((th, i) => {
    th.tabIndex = 0;
    th.title = "sort by " + th.textContent;
    th.addEventListener("click", () => sortBy(i));
    th.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(i); } });
  });
  filter.addEventListener("input", applyFilter);
  showAll.addEventListener("change", applyToggle);
  applyFilter();  // the browser may restore the form's state on "back"
  applyToggle();
})();

// "compare selected": the ticked rows side by side, drawn in the page from the inline JSON
// (#compare-data: the rows shown, their parameters and training curves). No server, no
// network, no library: the parameter table is DOM, each chart an SVG built here; every
// value goes in as text, never as markup.
(function () {
  "use strict";
  const dataNode = document.getElementById("compare-data");
  const button = document.getElementById("compare-selected");
  const out = document.getElementById("compare");
  const status = document.getElementById("compare-status");
  if (!dataNode || !button || !out) return;
  const data = JSON.parse(dataNode.textContent);
  const byId = new Map(data.runs.map((run) => [run.run_id, run]));
  const SVG = "http://www.w3.org/2000/svg";
  const picks = () => Array.from(document.querySelectorAll("#board input.pick"));

  function el(tag, attrs = {}, text = null) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== null) node.textContent = text;
    return node;
  }
  function svg(tag, attrs = {}, text = null) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== null) node.textContent = text;
    return node;
  }
  const swatch = (colour) => el("span", {class: "swatch", style: `background:${colour}`});

  function updateButton() {
    const n = picks().filter((p) => p.checked).length;
    button.disabled = n < 2;
    status.textContent = n >= 2 ? `${n} runs selected` : (n ? "1 run selected: tick one more" : "tick 2 or more runs");
  }

  // The parameters that differ between the runs (a toggle shows the others).
  function paramsTable(runs, colours) {
    const names = [...new Set(runs.flatMap((run) => Object.keys(run.params)))];
    const value = (run, name) => (name in run.params ? run.params[name] : null);
    const differs = (name) => new Set(runs.map((run) => JSON.stringify(value(run, name)))).size > 1;
    const ordered = names.filter(differs).concat(names.filter((n) => !differs(n)));
    const table = el("table", {id: "compare-params", class: "params"});
    const head = el("tr");
    head.append(el("th", {}, "parameter"));
    runs.forEach((run, i) => { const th = el("th"); th.append(swatch(colours[i]), run.run_id); head.append(th); });
    table.append(el("thead")); table.tHead.append(head);
    const body = el("tbody");
    for (const name of ordered) {
      const row = el("tr", {class: differs(name) ? "differs" : "same"});
      row.append(el("th", {}, name));
      for (const run of runs) {
        const v = value(run, name);
        row.append(v === null ? el("td", {class: "unset"}, "not set") : el("td", {}, v));
      }
      body.append(row);
    }
    table.append(body);
    const n = ordered.filter(differs).length;
    const toggle = el("label");
    const box = el("input", {type: "checkbox", id: "compare-show-all"});
    box.addEventListener("change", () => table.classList.toggle("show-all", box.checked));
    toggle.append(box, ` show all parameters (+${ordered.length - n} that are the same)`);
    const note = el("p", {class: "note"}, n ? `${n} parameter(s) differ.` : "No parameter differs between these runs.");
    return [note, toggle, table];
  }

  // One chart: a polyline per run that has the metric, its best epoch a circle,
  // a dotted line where its fine-tuning starts; axes with a few ticks.
  function chart(metric, runs, colours) {
    const W = 460, H = 260, L = 52, R = 12, T = 12, B = 36;
    const series = runs.map((run, i) => ({run, colour: colours[i], values: (run.curves || {})[metric] || []}))
      .filter((s) => s.values.some((v) => v !== null));
    const figure = el("figure", {class: "chart", "data-metric": metric});
    const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
                             "aria-label": `${metric} by epoch`});
    figure.append(root);
    const caption = el("figcaption");
    caption.append(el("b", {}, metric));
    const missing = runs.filter((run) => !series.some((s) => s.run === run)).map((run) => run.run_id);
    if (missing.length) caption.append(`; no curve for ${missing.join(", ")}`);
    figure.append(caption);
    if (!series.length) return figure;
    const xmax = Math.max(2, ...series.map((s) => s.values.length));
    const ys = series.flatMap((s) => s.values.filter((v) => v !== null));
    let ymin = Math.min(...ys), ymax = Math.max(...ys);
    if (ymax - ymin < 1e-9) { ymin -= 0.5; ymax += 0.5; }
    const pad = (ymax - ymin) * 0.06; ymin -= pad; ymax += pad;
    const x = (epoch) => L + (epoch - 1) / (xmax - 1) * (W - L - R);
    const y = (v) => T + (ymax - v) / (ymax - ymin) * (H - T - B);
    root.append(svg("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#999"}));
    for (let k = 0; k <= 4; k++) {
      const v = ymin + (ymax - ymin) * k / 4;
      root.append(svg("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eee"}));
      root.append(svg("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 10}, v.toPrecision(3)));
    }
    const step = Math.max(1, Math.ceil(xmax / 10));
    for (let e = 1; e <= xmax; e += step) {
      root.append(svg("text", {x: x(e), y: H - B + 14, "text-anchor": "middle", "font-size": 10}, String(e)));
    }
    root.append(svg("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", "font-size": 11},
                    "epoch (head, then fine-tuning)"));
    root.append(svg("text", {x: 12, y: (T + H - B) / 2, "text-anchor": "middle", "font-size": 11,
                             transform: `rotate(-90 12 ${(T + H - B) / 2})`}, metric));
    for (const s of series) {
      for (const end of s.run.phase_ends || []) {
        root.append(svg("line", {class: "phase", x1: x(end + 0.5), x2: x(end + 0.5), y1: T, y2: H - B,
                                 stroke: s.colour, "stroke-dasharray": "2 3"}));
      }
      const points = s.values.map((v, i) => (v === null ? null : `${x(i + 1).toFixed(1)},${y(v).toFixed(1)}`))
        .filter((p) => p !== null).join(" ");
      const line = svg("polyline", {class: "curve", points, fill: "none", stroke: s.colour, "stroke-width": 1.8,
                                    "data-run": s.run.run_id});
      line.append(svg("title", {}, s.run.label));
      root.append(line);
      const best = s.run.best_epoch;
      if (best && best <= s.values.length && s.values[best - 1] !== null) {
        const dot = svg("circle", {class: "best", cx: x(best), cy: y(s.values[best - 1]), r: 4, fill: s.colour,
                                   stroke: "#000"});
        dot.append(svg("title", {}, `${s.run.run_id}: best epoch ${best}`));
        root.append(dot);
      }
    }
    return figure;
  }

  function compare() {
    const runs = picks().filter((p) => p.checked).map((p) => byId.get(p.value)).filter(Boolean);
    if (runs.length < 2) return;
    const colours = runs.map((_, i) => data.colours[i % data.colours.length]);
    const close = el("button", {type: "button", id: "compare-close"}, "close");
    close.addEventListener("click", () => { out.hidden = true; });
    const title = el("h2", {}, `Compare ${runs.length} runs `);
    title.append(close);
    const legend = el("div", {class: "legend"});
    runs.forEach((run, i) => { const item = el("span"); item.append(swatch(colours[i]), run.label); legend.append(item); });
    const charts = el("div", {class: "charts"});
    for (const metric of data.metrics) charts.append(chart(metric, runs, colours));
    const note = el("p", {class: "note"}, "Training curves, both phases on one axis; the circle is each run's best " +
      "epoch. nbsweep compare RUN RUN writes the full comparison (figures, per class, confusion matrices, " +
      "McNemar's test) as a page of its own.");
    out.replaceChildren(title, el("h3", {}, "Parameters"), ...paramsTable(runs, colours), el("h3", {}, "Training curves"),
                        legend, charts, note);
    out.hidden = false;
    out.scrollIntoView({block: "start"});
  }

  for (const box of picks()) box.addEventListener("change", updateButton);
  button.addEventListener("click", compare);
  updateButton();  // the browser may restore ticks on "back"
})();
