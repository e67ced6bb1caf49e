// Sortable columns for the bucketdav listing: the header cells become buttons.
"use strict";
(function () {
  const table = document.getElementById("listing");
  if (!table) return;
  const body = table.tBodies[0];
  const heads = Array.from(table.tHead.rows[0].cells).filter((th) => th.dataset.key);
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

  function compare(key, a, b) {
    if (key === "name") return collator.compare(a.dataset.name, b.dataset.name);
    return Number(a.dataset[key]) - Number(b.dataset[key]) || collator.compare(a.dataset.name, b.dataset.name);
  }

  function sortBy(th, direction) {
    const key = th.dataset.key;
    const sign = direction === "descending" ? -1 : 1;
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      // Folders stay above files whichever way the rows are sorted, as in file managers.
      const dirs = Number(b.dataset.dir) - Number(a.dataset.dir);
      return dirs !== 0 ? dirs : sign * compare(key, a, b);
    });
    for (const row of rows) body.appendChild(row);
    for (const other of heads) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", direction);
  }

  for (const th of heads) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = th.textContent;
    button.title = "Sort by " + th.textContent.toLowerCase();
    th.textContent = "";
    th.appendChild(button);
    button.addEventListener("click", () => {
      const now = th.getAttribute("aria-sort");
      // A first click on size or date shows the biggest or newest first.
      const fresh = th.dataset.key === "name" ? "ascending" : "descending";
      const next = now ? (now === "ascending" ? "descending" : "ascending") : fresh;
      sortBy(th, next);
    });
  }
})();
