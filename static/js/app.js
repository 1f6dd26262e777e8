// costpass web UI: draw the plotly figures a page (or an htmx swap) brings, nothing else.
// A figure travels as <script type="application/json" id="X"> next to <div data-figure="X">.
(function () {
  "use strict";

  function draw(root) {
    if (typeof Plotly === "undefined") return;
    root.querySelectorAll("[data-figure]").forEach(function (el) {
      if (el.dataset.drawn) return;
      var source = document.getElementById(el.dataset.figure);
      if (!source) return;
      var fig = JSON.parse(source.textContent);
      el.dataset.drawn = "1";
      Plotly.newPlot(el, fig.data, fig.layout, {
        responsive: true,
        displaylogo: false,
        modeBarButtonsToRemove: ["select2d", "lasso2d"],
      }).then(function () {
        el.setAttribute("data-ready", "1");
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSettle", function (evt) { draw(evt.target); });

  // Custom dates only matter for the "custom" period.
  document.addEventListener("change", function (evt) {
    if (evt.target && evt.target.id === "id_period") {
      var custom = evt.target.value === "custom";
      document.querySelectorAll(".custom-dates").forEach(function (el) { el.hidden = !custom; });
    }
    if (evt.target && evt.target.name === "labelled_set") {
      var chosen = evt.target.value;
      document.querySelectorAll("[data-set]").forEach(function (el) {
        el.hidden = el.dataset.set.split(" ").indexOf(chosen) < 0;
      });
    }
  });
})();
