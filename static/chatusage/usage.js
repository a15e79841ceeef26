// The cycle picker shows the chosen cycle at once (the Show button does it without JS).
(function () {
  "use strict";
  const select = document.getElementById("cycle");
  if (select) select.addEventListener("change", function () { select.form.submit(); });
})();

// Each daily chart is one tab stop: the arrows move between its days (Home, End: the first
// and the latest), and the day in focus is the chart's tab stop from then on.
(function () {
  "use strict";
  document.querySelectorAll("#daily-chart svg").forEach(function (chart) {
    const days = Array.from(chart.querySelectorAll(".day"));
    chart.addEventListener("keydown", function (event) {
      const at = days.indexOf(document.activeElement);
      if (at < 0) return;
      const to = { ArrowLeft: at - 1, ArrowRight: at + 1, Home: 0, End: days.length - 1 }[event.key];
      if (to === undefined || to < 0 || to >= days.length) return;
      event.preventDefault();
      days[at].setAttribute("tabindex", "-1");
      days[to].setAttribute("tabindex", "0");
      days[to].focus();
    });
  });
})();
