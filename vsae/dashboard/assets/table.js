// vsae feature dashboard: the sortable, filterable, paginated feature table of one unit.
// The data come from features.js (window.VSAE_FEATURES = {columns, rows}), loaded by a <script>
// tag so the page works from a local folder (file://), a static web server or a bucket website.
(function () {
  "use strict";
  var data = window.VSAE_FEATURES;
  var PAGE = 100;
  var table = document.getElementById("features");
  var body = table.querySelector("tbody");
  var heads = table.querySelectorAll("th[data-key]");
  var filterBox = document.getElementById("filter");
  var flagSelect = document.getElementById("flags");
  var info = document.getElementById("page-info");
  var col = {};
  data.columns.forEach(function (name, i) { col[name] = i; });
  var state = { key: "feature", dir: 1, page: 0, rows: data.rows.slice() };

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(4);
    return String(v);
  }

  function keep(row) {
    var q = filterBox.value.trim().toLowerCase();
    var flags = flagSelect.value;
    if (flags === "live" && row[col.dead]) return false;
    if (flags === "dead" && !row[col.dead]) return false;
    if (flags === "dense" && !row[col.dense]) return false;
    if (!q) return true;
    return String(row[col.feature]) === q || String(row[col.classes]).toLowerCase().indexOf(q) >= 0;
  }

  function compare(a, b) {
    var x = a[col[state.key]], y = b[col[state.key]];
    if (x === y) return a[col.feature] - b[col.feature];
    if (x === null) return 1;  // missing values (a mono score never computed) last either way
    if (y === null) return -1;
    return (x < y ? -1 : 1) * state.dir;
  }

  function render() {
    var rows = data.rows.filter(keep).sort(compare);
    var pages = Math.max(1, Math.ceil(rows.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    var html = [];
    rows.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (r) {
      var flags = (r[col.dead] ? '<span class="flag dead">dead</span>' : "") +
                  (r[col.dense] ? '<span class="flag dense">dense</span>' : "");
      html.push('<tr><td class="num"><a href="f/' + r[col.feature] + '.html">' + r[col.feature] + "</a></td>" +
        ["frac_images", "frac_rows", "max", "mean", "mono"].map(function (k) {
          return '<td class="num" data-value="' + r[col[k]] + '">' + fmt(r[col[k]]) + "</td>";
        }).join("") + "<td>" + escapeHtml(r[col.classes]) + "</td><td>" + flags + "</td></tr>");
    });
    body.innerHTML = html.join("");
    info.textContent = "page " + (state.page + 1) + " of " + pages + " (" + rows.length + " of " + data.rows.length + " units)";
    heads.forEach(function (th) {
      th.classList.remove("sorted-asc", "sorted-desc");
      if (th.dataset.key === state.key) th.classList.add(state.dir > 0 ? "sorted-asc" : "sorted-desc");
    });
  }

  function escapeHtml(s) {
    return String(s).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; });
  }

  heads.forEach(function (th) {
    th.addEventListener("click", function () {
      var key = th.dataset.key;
      state.dir = state.key === key ? -state.dir : (key === "feature" || key === "mono" ? 1 : -1);
      state.key = key;
      state.page = 0;
      render();
    });
  });
  filterBox.addEventListener("input", function () { state.page = 0; render(); });
  flagSelect.addEventListener("change", function () { state.page = 0; render(); });
  document.getElementById("prev").addEventListener("click", function () { state.page = Math.max(0, state.page - 1); render(); });
  document.getElementById("next").addEventListener("click", function () { state.page += 1; render(); });
  render();
})();
