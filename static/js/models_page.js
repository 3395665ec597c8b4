// The Training Visualization tab: follows the newest running session live.
// On load it draws what the database held when the page was rendered, then applies
// WebSocket events; after a gap or a reconnect it backfills from the API.
"use strict";

(function () {
  const { fetchJson, formatSeconds, LiveSocket, EpochStore, MetricChart } = window.MLTrack;
  const page = document.getElementById("page").dataset;
  const initial = JSON.parse(document.getElementById("page-data").textContent);
  const ACTIVE = ["queued", "running", "stopping"];

  const charts = [
    new MetricChart(document.getElementById("chart-loss"), ["train_loss", "val_loss"]),
    new MetricChart(document.getElementById("chart-accuracy"),
      ["train_accuracy", "val_accuracy"], { min: 0, max: 1 }),
  ];
  const active = new Map(initial.active.map((s) => [s.id, s]));
  let focus = initial.focus;
  let store = new EpochStore(focus ? focus.id : null);
  let lastStats = null;
  (initial.focusEpochs || []).forEach((row) => store.add(row));
  redrawCharts();
  renderFocus();
  renderActive();
  window.mltrack = { charts, store: () => store, focus: () => focus };

  function redrawCharts() {
    const rows = store.sorted();
    charts.forEach((chart) => chart.setRows(rows));
  }

  function renderFocus() {
    if (!focus) return;
    document.getElementById("focus-title").textContent =
      "Session #" + focus.id + ": " + focus.modelType + " on " + focus.dataset;
    const badge = document.getElementById("focus-status");
    badge.textContent = focus.status;
    badge.className = "badge status-" + focus.status;
    const bar = document.getElementById("focus-progress");
    bar.setAttribute("aria-valuenow", focus.progress);
    bar.querySelector(".bar").style.width = focus.progress + "%";
    document.getElementById("focus-percent").textContent = focus.progress + "%";
    document.getElementById("focus-epoch").textContent =
      "Epoch " + focus.currentEpoch + "/" + (focus.totalEpochs || "?");
    const link = document.getElementById("focus-link");
    if (link) link.href = focus.url;
    renderClock();
  }

  function renderClock() {
    if (!focus) return;
    let elapsed = focus.durationSeconds;
    if (focus.startedAt && ACTIVE.includes(focus.status)) {
      elapsed = (Date.now() - Date.parse(focus.startedAt)) / 1000;
    }
    document.getElementById("focus-elapsed").textContent = formatSeconds(elapsed);
    const eta = ACTIVE.includes(focus.status) && lastStats ? lastStats.etaSeconds : null;
    document.getElementById("focus-eta").textContent =
      focus.status === "completed" ? "0s" : formatSeconds(eta);
  }

  function renderActive() {
    const list = document.getElementById("active-sessions");
    list.replaceChildren();
    if (active.size === 0) {
      const empty = document.createElement("li");
      empty.className = "empty";
      empty.textContent = "Nothing is training.";
      list.append(empty);
      return;
    }
    Array.from(active.values()).sort((a, b) => b.id - a.id).forEach((s) => {
      const item = document.createElement("li");
      item.dataset.session = s.id;
      const link = document.createElement("a");
      link.href = s.url;
      link.textContent = "#" + s.id + " " + s.modelType + " on " + s.dataset;
      const badge = document.createElement("span");
      badge.className = "badge status-" + s.status;
      badge.textContent = s.status;
      const progress = document.createElement("progress");
      progress.max = 100;
      progress.value = s.progress;
      const epoch = document.createElement("span");
      epoch.textContent = "Epoch " + s.currentEpoch + "/" + (s.totalEpochs || "?");
      item.append(link, " ", badge, " ", progress, " ", epoch);
      list.append(item);
    });
  }

  function addHistoryRow(s) {
    const body = document.getElementById("history-rows");
    const old = body.querySelector('tr[data-session="' + s.id + '"]');
    if (old) old.remove();
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    const row = document.createElement("tr");
    row.dataset.session = s.id;
    const cells = [s.id, s.modelType, s.dataset, s.status,
      s.currentEpoch + "/" + (s.totalEpochs || "?"),
      s.bestValAccuracy === null ? "–" : s.bestValAccuracy.toFixed(4),
      new Date(s.createdAt).toISOString().replace("T", " ").slice(0, 19)];
    cells.forEach((value, i) => {
      const cell = document.createElement("td");
      if (i === 0) {
        const link = document.createElement("a");
        link.href = s.url;
        link.textContent = value;
        cell.append(link);
      } else if (i === 3) {
        const badge = document.createElement("span");
        badge.className = "badge status-" + value;
        badge.textContent = value;
        cell.append(badge);
      } else {
        cell.textContent = value;
      }
      row.append(cell);
    });
    body.prepend(row);
  }

  async function backfill() {
    if (!focus) return;
    const sessionId = focus.id;
    const data = await fetchJson(page.metricsUrl + sessionId + "?after=" + store.last);
    if (!focus || focus.id !== sessionId) return;
    let added = 0;
    data.epochs.forEach((row) => { if (store.add(row)) added++; });
    if (added) redrawCharts();
    const fresh = await fetchJson(page.sessionUrl + sessionId);
    if (focus && focus.id === sessionId) {
      focus = fresh.session;
      renderFocus();
    }
  }

  async function refreshActive() {
    const data = await fetchJson("/api/ml/training-data?limit=1");
    active.clear();
    data.active.forEach((s) => active.set(s.id, s));
    renderActive();
  }

  function switchFocus(session) {
    focus = session;
    store = new EpochStore(session.id);
    lastStats = null;
    redrawCharts();
    renderFocus();
    backfill().catch(console.warn);
  }

  function onEvent(event) {
    const s = event.session;
    if (ACTIVE.includes(s.status)) active.set(s.id, s); else active.delete(s.id);
    if (!ACTIVE.includes(s.status)) addHistoryRow(s);
    renderActive();

    const following = focus && focus.id === s.id;
    const focusIdle = !focus || !ACTIVE.includes(focus.status) || focus.status === "queued";
    if (!following && event.type === "training_started" && focusIdle) {
      switchFocus(s);
      return;
    }
    if (!following) return;
    focus = s;
    if (event.type === "training_progress") {
      lastStats = event.stats || lastStats;
      const row = { epoch: event.epoch, metrics: event.metrics, time: null };
      if (store.hasGapBefore(event.epoch)) {
        // Events were dropped: the database has every epoch, fetch them in order.
        backfill().catch(console.warn);
      } else if (store.add(row)) {
        charts.forEach((chart) => chart.append(row));
      }
    }
    renderFocus();
  }

  new LiveSocket(page.wsPath, {
    event: onEvent,
    // Whatever happened between the page render (or the last connection) and now
    // came through no socket: fetch it.
    open: () => {
      backfill().catch(console.warn);
      refreshActive().catch(console.warn);
    },
  });
  setInterval(renderClock, 1000);
})();
