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
