// The manager dashboard's charts (service/web/templates/dashboard.html).
// Data comes from the page's <script type="application/json" id="dashboard-data"> block, built by
// service/web/dashboard.py chart_data() from the same objects as the tables beside each chart.
// No inline script (the CSP forbids it); without JavaScript the tables show every number.
(function () {
  "use strict";

  var block = document.getElementById("dashboard-data");
  if (!block || typeof window.Chart === "undefined") {
    return;
  }
  var data = JSON.parse(block.textContent);
  var text = data.text;
  var reduceMotion = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  var common = {
    responsive: true,
    maintainAspectRatio: false,
    animation: reduceMotion ? false : { duration: 300 },
    plugins: { legend: { position: "bottom" } },
  };
  var percentTicks = {
    callback: function (value) {
      return Math.round(value * 100) + "%";
    },
  };

  function show(canvas) {
    var box = canvas.closest(".chart");
    if (box) {
      box.hidden = false;
    }
  }

  // Retention curve: Kaplan-Meier steps, the 95% band between lower and upper, the 50% line.
  var curveCanvas = document.getElementById("chart-curve");
  if (curveCanvas && data.curve.length) {
    show(curveCanvas);
    var xy = function (field) {
      return data.curve.map(function (p) {
        return { x: p.time, y: p[field] };
      });
    };
    var last = data.curve[data.curve.length - 1].time;
    new window.Chart(curveCanvas, {
      type: "line",
      data: {
        datasets: [
          {
            label: text.upper,
            data: xy("upper"),
            stepped: "after",
            pointRadius: 0,
            borderWidth: 0,
            backgroundColor: "rgba(31, 95, 168, 0.18)",
            fill: "+1",
          },
          {
            label: text.lower,
            data: xy("lower"),
            stepped: "after",
            pointRadius: 0,
            borderWidth: 0,
            fill: false,
          },
          {
            label: text.survival,
            data: xy("survival"),
            stepped: "after",
            pointRadius: 0,
            borderColor: "#1f5fa8",
            borderWidth: 2,
            fill: false,
          },
          {
            label: text.reference,
            data: [
              { x: 0, y: data.reference_rate },
              { x: last, y: data.reference_rate },
            ],
            pointRadius: 0,
            borderColor: "#8a4b00",
            borderDash: [6, 4],
            borderWidth: 2,
            fill: false,
          },
        ],
      },
      options: Object.assign({}, common, {
        parsing: true,
        scales: {
          x: { type: "linear", min: 0, title: { display: true, text: text.days } },
          y: { min: 0, max: 1, ticks: percentTicks },
        },
      }),
    });
  }

  // Retention at 1, 3, 6 and 12 months: job and employment retention, with the 50% line.
  var ratesCanvas = document.getElementById("chart-rates");
  if (ratesCanvas) {
    show(ratesCanvas);
    new window.Chart(ratesCanvas, {
      type: "bar",
      data: {
        labels: text.months,
        datasets: [
          { type: "bar", label: text.job, data: data.rates.job, backgroundColor: "#1f5fa8" },
          { type: "bar", label: text.employment, data: data.rates.employment, backgroundColor: "#5c8f3a" },
          {
            type: "line",
            label: text.reference,
            data: data.months.map(function () {
              return data.reference_rate;
            }),
            borderColor: "#8a4b00",
            borderDash: [6, 4],
            pointRadius: 0,
            fill: false,
          },
        ],
      },
      options: Object.assign({}, common, {
        scales: { y: { min: 0, max: 1, ticks: percentTicks } },
      }),
    });
  }

  // Crisis flags by severity, stacked by status.
  var crisisCanvas = document.getElementById("chart-crisis");
  if (crisisCanvas) {
    show(crisisCanvas);
    var colours = ["#b3261e", "#c77c00", "#4a6b3a"];
    new window.Chart(crisisCanvas, {
      type: "bar",
      data: {
        labels: data.crisis.severities,
        datasets: data.crisis.statuses.map(function (status, i) {
          return {
            label: status,
            data: data.crisis.counts.map(function (row) {
              return row[i];
            }),
            backgroundColor: colours[i % colours.length],
          };
        }),
      },
      options: Object.assign({}, common, {
        scales: {
          x: { stacked: true },
          y: { stacked: true, beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: text.flags } },
        },
      }),
    });
  }
})();
