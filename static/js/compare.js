// The Compare page: each chart overlays one metric of every chosen session.
"use strict";

(function () {
  const { MetricChart, PALETTE } = window.MLTrack;
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const runs = data.sessions;
  const color = (i) => PALETTE[i % PALETTE.length];

  document.querySelectorAll(".legend li").forEach((item) => {
    item.querySelector(".swatch").style.background = color(Number(item.dataset.index));
  });

  const charts = [];
  document.querySelectorAll("figure.chart").forEach((figure) => {
    const metric = figure.dataset.metric;
    const series = runs.map((run, i) => ({
      label: "#" + run.session.id + " " + run.session.modelType, metric, color: color(i),
    }));
    const bounds = metric.includes("accuracy") ? { min: 0, max: 1 } : {};
    const chart = new MetricChart(figure.querySelector("canvas"), series, bounds);
    chart.setSeriesRows(runs.map((run) => run.epochs),
      runs.map((run) => (run.session.startedAt ? Date.parse(run.session.startedAt) : null)));
    charts.push(chart);
    const slider = figure.querySelector(".smoothing");
    slider.addEventListener("input", () => {
      figure.querySelector("output").textContent = slider.value;
      chart.setSmoothing(Number(slider.value));
    });
    figure.querySelector(".log-scale").addEventListener("change", (event) => {
      chart.setLogScale(event.target.checked);
    });
    figure.querySelector(".x-axis").addEventListener("change", (event) => {
      chart.setXAxis(event.target.value);
    });
  });
  window.mltrack = { charts };
})();
