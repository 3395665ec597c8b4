// One session's page: its charts from the database (thinned for long runs), then
// live events for it; zooming fetches finer points from the API.
"use strict";

(function () {
  const {
    fetchJson, formatSeconds, fresher, LiveSocket, EpochStore, Backfill, MetricChart,
  } = window.MLTrack;
  const page = document.getElementById("page").dataset;
  const initial = JSON.parse(document.getElementById("page-data").textContent);
  const ACTIVE = ["queued", "running", "stopping"];
  const MAX_POINTS = Number(page.maxPoints) || 1000;
  const METRICS = {
    loss: ["train_loss", "val_loss"],
    accuracy: ["train_accuracy", "val_accuracy"],
    learning_rate: ["learning_rate"],
    scores: ["precision", "recall", "f1"],
  };
  const BOUNDS = { accuracy: { min: 0, max: 1 }, scores: { min: 0, max: 1 } };
  const note = document.getElementById("chart-note");

  let session = initial.focus;
  let lastStats = null;
  let store = new EpochStore(session.id);
  // The chart API's answer for the whole run, embedded in the page.
  const overview = JSON.parse(document.getElementById("chart-data").textContent);
  overview.epochs.forEach((row) => store.add(row));
  // A thinned overview holds only the points worth drawing, not every epoch.
  let downsampled = overview.downsampled;
  let zoom = null;
  let refreshing = null;
  let lastOverview = Date.now();
  let lastEventAt = Date.now();

  const charts = {};
  document.querySelectorAll("figure.chart").forEach((figure) => {
    const key = figure.dataset.chart;
    const chart = new MetricChart(figure.querySelector("canvas"), METRICS[key],
      Object.assign({ onZoom: onDragZoom }, BOUNDS[key] || {}));
    charts[key] = chart;
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
    figure.querySelector(".png").addEventListener("click", () => {
      const link = document.createElement("a");
      link.href = chart.pngDataUrl();
      link.download = "session-" + session.id + "-" + key + ".png";
      document.body.append(link);
      link.click();
      link.remove();
    });
  });
  const chartList = Object.values(charts);
  window.mltrack = { charts: chartList, store: () => store, focus: () => session };
  draw();
  render();

  function startedMs() {
    return session.startedAt ? Date.parse(session.startedAt) : null;
  }

  function visibleRows() {
    if (!zoom) return store.sorted();
    if (zoom.rows) return zoom.rows;
    return store.sorted().filter((r) => r.epoch >= zoom.from && r.epoch <= zoom.to);
  }

  function draw() {
    const rows = visibleRows();
    chartList.forEach((chart) => chart.setRows(rows, startedMs()));
    let text = "Drag across a chart to zoom in.";
    if (zoom) text = "Zoomed to epochs " + zoom.from + "–" + zoom.to + ".";
    if (downsampled && !(zoom && zoom.rows && !zoom.thinned)) {
      text += " Long run: each curve shows at most " + MAX_POINTS +
        " points, keeping every bucket's highest and lowest value; zoom in for detail.";
    }
    note.textContent = text;
  }

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
    const error = document.getElementById("focus-error");
    error.hidden = !session.error;
    error.textContent = session.error || "";
    const diagnostics = document.getElementById("diagnostics");
    diagnostics.replaceChildren();
    (session.diagnostics || []).forEach((d) => {
      const item = document.createElement("span");
      item.className = "badge diagnostic";
      item.textContent = d.kind;
      item.title = d.message + " (from epoch " + d.epoch + ")";
      diagnostics.append(" ", item);
    });
    const stopForm = document.getElementById("stop-form");
    if (stopForm && !ACTIVE.includes(session.status)) stopForm.remove();
    else if (stopForm && session.status === "stopping") {
      const button = stopForm.querySelector("button");
      button.disabled = true;
      button.textContent = "stopping...";
    }
  }

  // The report and the configuration (its start and finish times) are rendered
  // by the server; fetch this page again and take them.
  async function refreshReport() {
    const response = await fetch(location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const html = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const id of ["report", "config"]) {
      const fresh = html.getElementById(id);
      if (fresh) document.getElementById(id).replaceWith(fresh);
    }
  }

  const backfiller = new Backfill(
    fillMissing, () => store.waiting && ACTIVE.includes(session.status));
  function backfill() {
    return backfiller.run();
  }

  async function fillMissing() {
    const data = await fetchJson(page.metricsUrl + session.id + "?after=" + store.last +
      "&maxPoints=" + MAX_POINTS);
    if (data.downsampled) downsampled = true;
    let added = 0;
    data.epochs.forEach((row) => { if (store.add(row)) added++; });
    added += store.release();
    if (added) draw();
    const before = session.status;
    const fetched = await fetchJson(page.sessionUrl + session.id);
    session = fresher(session, fetched.session);
    render();
    if (ACTIVE.includes(before) && !ACTIVE.includes(session.status)) {
      refreshReport().catch(console.warn);
    }
  }

  // A live run that outgrows the chart: replace the points with a fresh overview.
  function maybeRefreshOverview() {
    if (refreshing || store.size <= 3 * MAX_POINTS || Date.now() - lastOverview < 15000) {
      return;
    }
    lastOverview = Date.now();
    refreshing = fetchJson(page.metricsUrl + session.id + "?maxPoints=" + MAX_POINTS)
      .then((data) => {
        const fresh = new EpochStore(session.id);
        data.epochs.forEach((row) => fresh.add(row));
        store.sorted().forEach((row) => { if (row.epoch > fresh.last) fresh.add(row); });
        store.held.forEach((row) => fresh.hold(row));
        store = fresh;
        downsampled = data.downsampled;
        draw();
      })
      .catch(console.warn)
      .finally(() => { refreshing = null; });
  }

  async function zoomTo(from, to) {
    if (!(from >= 1 && to >= from)) {
      note.textContent = "Choose a first epoch of at least 1 and a last epoch after it.";
      return;
    }
    document.getElementById("zoom-from").value = from;
    document.getElementById("zoom-to").value = to;
    zoom = { from, to, rows: null };
    if (downsampled) {
      const data = await fetchJson(page.metricsUrl + session.id + "?from=" + from +
        "&to=" + to + "&maxPoints=" + MAX_POINTS);
      if (!zoom || zoom.from !== from || zoom.to !== to) return;
      zoom.rows = data.epochs;
      zoom.thinned = data.downsampled;
    }
    draw();
  }

  function onDragZoom(xFrom, xTo, chart) {
    const range = chart.epochsBetween(xFrom, xTo);
    if (range) zoomTo(range[0], range[1]).catch(console.warn);
  }

  document.getElementById("zoom-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const from = Number(document.getElementById("zoom-from").value);
    const to = Number(document.getElementById("zoom-to").value);
    zoomTo(from, to).catch(console.warn);
  });
  document.getElementById("zoom-reset").addEventListener("click", () => {
    zoom = null;
    document.getElementById("zoom-from").value = "";
    document.getElementById("zoom-to").value = "";
    draw();
  });

  const stopForm = document.getElementById("stop-form");
  if (stopForm) {
    stopForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = stopForm.querySelector("button");
      button.disabled = true;
      button.textContent = "stopping...";
      const response = await fetch(page.stopUrl + session.id, {
        method: "POST", credentials: "same-origin",
        headers: { "X-CSRFToken": page.csrf, Accept: "application/json" },
      });
      const body = await response.json();
      // The worker's training_stopped event may have come first: keep it.
      if (response.ok && ACTIVE.includes(session.status)) session = body.session;
      else if (!response.ok) await backfill();
      render();
    });
  }

  new LiveSocket(page.wsPath, {
    open: () => backfill().catch(console.warn),
    event: (event) => {
      if (event.session.id !== session.id) return;
      // Never let a late "running"/"stopping" undo a finished state.
      if (!ACTIVE.includes(session.status) && ACTIVE.includes(event.session.status)) return;
      lastEventAt = Date.now();
      const before = session.status;
      const hadStart = Boolean(session.startedAt);
      session = event.session;
      // The elapsed-time axis needs the start time, which a queued session lacked.
      if (!hadStart && session.startedAt) draw();
      if (event.type === "training_progress") {
        lastStats = event.stats || lastStats;
        const time = event.savedAt ? new Date(event.savedAt * 1000).toISOString() : null;
        const row = { epoch: event.epoch, metrics: event.metrics, time };
        if (store.hasGapBefore(event.epoch)) {
          // Events were dropped, or this page opened after the epochs before
          // this one were pushed but before they were saved: fetch them, and
          // keep this one until they are in.
          store.hold(row);
          backfiller.gap();
        } else if (store.add(row)) {
          if (!zoom) chartList.forEach((chart) => chart.append(row));
          else if (!zoom.rows && row.epoch <= zoom.to) draw();
          maybeRefreshOverview();
        }
      } else if (!ACTIVE.includes(session.status) && store.lacksEpochsOf(session.currentEpoch)) {
        backfill().catch(console.warn);
      }
      render();
      if (ACTIVE.includes(before) && !ACTIVE.includes(session.status)) {
        refreshReport().catch(console.warn);
      }
    },
  });
  setInterval(render, 1000);
  // A socket can stay open yet deliver nothing (a channel layer that lost its
  // groups): while the run is active and all is quiet, ask the API.
  setInterval(() => {
    if (!ACTIVE.includes(session.status) || Date.now() - lastEventAt < 15000) return;
    lastEventAt = Date.now();
    backfill().catch(console.warn);
  }, 5000);
})();
