// One session's page: its charts from the database, then live events for it.
"use strict";

(function () {
  const { fetchJson, formatSeconds, LiveSocket, EpochStore, MetricChart } = window.MLTrack;
  const page = document.getElementById("page").dataset;
  const initial = JSON.parse(document.getElementById("page-data").textContent);
  const ACTIVE = ["queued", "running", "stopping"];
  let session = initial.focus;
  let lastStats = null;
  const store = new EpochStore(session.id);
  initial.focusEpochs.forEach((row) => store.add(row));
  const charts = [
    new MetricChart(document.getElementById("chart-loss"), ["train_loss", "val_loss"]),
    new MetricChart(document.getElementById("chart-accuracy"),
      ["train_accuracy", "val_accuracy"], { min: 0, max: 1 }),
  ];
  window.mltrack = { charts, store: () => store, focus: () => session };
  charts.forEach((chart) => chart.setRows(store.sorted()));
  render();

  function render() {
    const badge = document.getElementById("focus-status");
    badge.textContent = session.status;
    badge.className = "badge status-" + session.status;
    const bar = document.getElementById("focus-progress");
    bar.setAttribute("aria-valuenow", session.progress);
    bar.querySelector(".bar").style.width = session.progress + "%";
    document.getElementById("focus-percent").textContent = session.progress + "%";
    document.getElementById("focus-epoch").textContent =
      "Epoch " + session.currentEpoch + "/" + (session.totalEpochs || "?");
    let elapsed = session.durationSeconds;
    if (session.startedAt && ACTIVE.includes(session.status)) {
      elapsed = (Date.now() - Date.parse(session.startedAt)) / 1000;
    }
    document.getElementById("focus-elapsed").textContent = formatSeconds(elapsed);
    document.getElementById("focus-eta").textContent = ACTIVE.includes(session.status)
      ? formatSeconds(lastStats && lastStats.etaSeconds) : "–";
  }

  async function backfill() {
    const data = await fetchJson(page.metricsUrl + session.id + "?after=" + store.last);
    let added = 0;
    data.epochs.forEach((row) => { if (store.add(row)) added++; });
    if (added) charts.forEach((chart) => chart.setRows(store.sorted()));
    session = (await fetchJson(page.sessionUrl + session.id)).session;
    render();
  }

  new LiveSocket(page.wsPath, {
    open: () => backfill().catch(console.warn),
    event: (event) => {
      if (event.session.id !== session.id) return;
      session = event.session;
      if (event.type === "training_progress") {
        lastStats = event.stats || lastStats;
        const row = { epoch: event.epoch, metrics: event.metrics, time: null };
        if (store.hasGapBefore(event.epoch)) backfill().catch(console.warn);
        else if (store.add(row)) charts.forEach((chart) => chart.append(row));
      }
      render();
    },
  });
  setInterval(render, 1000);
})();
