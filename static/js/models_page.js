// The Models page. Models tab: the custom-run form shows the parameters of the chosen
// model and data set. Training tab: follows the newest running session live, keeps
// the active list and the history table current, and stops sessions.
// On load it draws what the database held when the page was rendered, then applies
// WebSocket events; after a gap or a reconnect it backfills from the API.
"use strict";

(function () {
  const customForm = document.getElementById("custom-run");
  if (customForm) setUpCustomForm(customForm);
  if (!document.getElementById("focus")) return;

  const {
    fetchJson, formatSeconds, fresher, LiveSocket, EpochStore, Backfill, MetricChart,
  } = window.MLTrack;
  const page = document.getElementById("page").dataset;
  const initial = JSON.parse(document.getElementById("page-data").textContent);
  const ACTIVE = ["queued", "running", "stopping"];

  const charts = [
    new MetricChart(document.getElementById("chart-loss"), ["train_loss", "val_loss"]),
    new MetricChart(document.getElementById("chart-accuracy"),
      ["train_accuracy", "val_accuracy"], { min: 0, max: 1 }),
  ];
  const active = new Map(initial.active.map((s) => [s.id, s]));
  const statsBySession = new Map();
  const stopping = new Set();
  const finished = new Set();
  let focus = initial.focus;
  let store = new EpochStore(focus ? focus.id : null);
  let live = true;
  let lastEventAt = Date.now();
  let lastOverview = 0;
  let refreshing = null;
  (initial.focusEpochs || []).forEach((row) => store.add(row));
  redrawCharts();
  renderFocus();
  renderActive();
  window.mltrack = { charts, store: () => store, focus: () => focus };

  function redrawCharts() {
    const rows = store.sorted();
    charts.forEach((chart) => chart.setRows(rows));
  }

  function elapsedOf(s) {
    if (s.startedAt && ACTIVE.includes(s.status)) {
      return (Date.now() - Date.parse(s.startedAt)) / 1000;
    }
    return s.durationSeconds;
  }

  function etaOf(s) {
    if (s.status === "completed") return 0;
    const stats = statsBySession.get(s.id);
    return ACTIVE.includes(s.status) && stats ? stats.etaSeconds : null;
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
    if (focus) {
      document.getElementById("focus-elapsed").textContent = formatSeconds(elapsedOf(focus));
      document.getElementById("focus-eta").textContent = formatSeconds(etaOf(focus));
    }
    document.querySelectorAll("#active-sessions li[data-session]").forEach((item) => {
      const s = active.get(Number(item.dataset.session));
      if (!s) return;
      item.querySelector(".elapsed").textContent = formatSeconds(elapsedOf(s));
      item.querySelector(".eta").textContent = formatSeconds(etaOf(s));
    });
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function badges(s) {
    const list = [element("span", "badge status-" + s.status, s.status)];
    (s.diagnostics || []).forEach((d) => {
      const badge = element("span", "badge diagnostic", d.kind);
      badge.title = d.message + " (from epoch " + d.epoch + ")";
      list.push(badge);
    });
    return list;
  }

  function activeItem(s) {
    const item = element("li", "active-item");
    item.dataset.session = s.id;
    const head = element("div", "active-head");
    const link = element("a", "", "#" + s.id + " " + s.modelType + " on " + s.dataset);
    link.href = s.url;
    head.append(link);
    badges(s).forEach((b) => head.append(" ", b));
    const progress = element("div", "progress small");
    progress.setAttribute("role", "progressbar");
    progress.setAttribute("aria-label", "Progress of session " + s.id);
    progress.setAttribute("aria-valuemin", "0");
    progress.setAttribute("aria-valuemax", "100");
    progress.setAttribute("aria-valuenow", s.progress);
    const bar = element("div", "bar");
    bar.style.width = s.progress + "%";
    progress.append(bar, element("span", "label", s.progress + "%"));
    const facts = element("span", "facts",
      "Epoch " + s.currentEpoch + "/" + (s.totalEpochs || "?") + " · elapsed ");
    facts.append(element("span", "elapsed", "–"), " · left ", element("span", "eta", "–"));
    const form = element("form", "stop-form");
    form.method = "post";
    form.action = "/sessions/" + s.id + "/stop/";
    const token = element("input");
    token.type = "hidden";
    token.name = "csrfmiddlewaretoken";
    token.value = page.csrf;
    const waiting = s.status === "stopping" || stopping.has(s.id);
    const button = element("button", "danger", waiting ? "stopping..." : "Stop");
    button.type = "submit";
    button.disabled = waiting;
    form.append(token, button);
    item.append(head, progress, facts, form);
    return item;
  }

  function renderActive() {
    const list = document.getElementById("active-sessions");
    if (active.size === 0) {
      list.replaceChildren(element("li", "empty", "Nothing is training."));
      return;
    }
    const empty = list.querySelector("li.empty");
    if (empty) empty.remove();
    const ids = new Set(Array.from(active.keys(), String));
    list.querySelectorAll("li[data-session]").forEach((item) => {
      if (!ids.has(item.dataset.session)) item.remove();
    });
    // Update items in place: a fast run sends many events a second, and a
    // replaced Stop button would swallow the click (or the keyboard focus) of a
    // user who is pressing it.
    Array.from(active.values()).sort((a, b) => b.id - a.id).forEach((s, index) => {
      let item = list.querySelector('li[data-session="' + s.id + '"]');
      if (item) updateActiveItem(item, s);
      else item = activeItem(s);
      if (list.children[index] !== item) list.insertBefore(item, list.children[index] || null);
    });
    renderClock();
  }

  function updateActiveItem(item, s) {
    const fresh = activeItem(s);
    for (const part of [".active-head", ".progress", ".facts"]) {
      item.querySelector(part).replaceWith(fresh.querySelector(part));
    }
    const button = item.querySelector(".stop-form button");
    const waiting = s.status === "stopping" || stopping.has(s.id);
    button.textContent = waiting ? "stopping..." : "Stop";
    button.disabled = waiting;
  }

  function historyRow(s) {
    const row = element("tr");
    row.dataset.session = s.id;
    const pick = element("td");
    const box = element("input");
    box.type = "checkbox";
    box.name = "ids";
    box.value = s.id;
    box.setAttribute("aria-label", "Compare session " + s.id);
    pick.append(box);
    const idCell = element("td");
    const link = element("a", "", String(s.id));
    link.href = s.url;
    idCell.append(link);
    const statusCell = element("td");
    badges(s).forEach((b, i) => statusCell.append(i ? " " : "", b));
    row.append(pick, idCell, element("td", "", s.modelType), element("td", "", s.dataset),
      statusCell, element("td", "epochs", s.currentEpoch + "/" + (s.totalEpochs || "?")),
      element("td", "", s.bestValAccuracy === null ? "–" : s.bestValAccuracy.toFixed(4)),
      element("td", "", new Date(s.createdAt).toISOString().replace("T", " ").slice(0, 19)));
    return row;
  }

  function updateHistory(s) {
    const body = document.getElementById("history-rows");
    const old = body.querySelector('tr[data-session="' + s.id + '"]');
    if (old) {
      const checked = old.querySelector("input").checked;
      const row = historyRow(s);
      row.querySelector("input").checked = checked;
      old.replaceWith(row);
      return;
    }
    // New sessions appear on the first, unfiltered page only: elsewhere they
    // would not belong.
    if (!body.dataset.live) return;
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    body.prepend(historyRow(s));
  }

  async function fillFocus() {
    if (!focus) return;
    const sessionId = focus.id;
    const data = await fetchJson(page.metricsUrl + sessionId + "?after=" + store.last +
      "&maxPoints=1000");
    if (!focus || focus.id !== sessionId) return;
    let added = 0;
    data.epochs.forEach((row) => { if (store.add(row)) added++; });
    added += store.release();
    if (added) redrawCharts();
    const fresh = await fetchJson(page.sessionUrl + sessionId);
    if (focus && focus.id === sessionId) {
      focus = fresher(focus, fresh.session);
      renderFocus();
    }
  }

  const backfiller = new Backfill(
    fillFocus, () => store.waiting && focus && ACTIVE.includes(focus.status));
  function backfill() {
    return backfiller.run();
  }

  async function refreshActive() {
    const data = await fetchJson(page.listUrl + "?limit=1");
    const before = [...active.keys()];
    active.clear();
    data.active.forEach((s) => active.set(s.id, s));
    data.active.forEach(updateHistory);
    renderActive();
    // Runs that ended while no event came through (a dropped final event, a
    // reconnect): their history rows still show them running.
    const ended = before.filter((id) => !active.has(id));
    await Promise.all(ended.map(async (id) => {
      const fresh = await fetchJson(page.sessionUrl + id);
      if (ACTIVE.includes(fresh.session.status)) return;
      finished.add(id);
      stopping.delete(id);
      updateHistory(fresh.session);
    }));
  }

  function switchFocus(session) {
    focus = session;
    store = new EpochStore(session.id);
    redrawCharts();
    renderFocus();
    backfill().catch(console.warn);
  }

  function onEvent(event) {
    lastEventAt = Date.now();
    const s = event.session;
    // A Stop's HTTP answer ("stopping") can arrive after the worker's
    // training_stopped event: a finished session never goes back to active.
    if (finished.has(s.id) && ACTIVE.includes(s.status)) return;
    if (!ACTIVE.includes(s.status)) finished.add(s.id);
    if (event.stats) statsBySession.set(s.id, event.stats);
    if (!ACTIVE.includes(s.status)) stopping.delete(s.id);
    if (!live) return;
    if (ACTIVE.includes(s.status)) active.set(s.id, s); else active.delete(s.id);
    updateHistory(s);
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
      const row = { epoch: event.epoch, metrics: event.metrics, time: null };
      if (store.hasGapBefore(event.epoch)) {
        // Events were dropped, or this page opened after the epochs before
        // this one were pushed but before they were saved: fetch them, and
        // keep this one until they are in.
        store.hold(row);
        backfiller.gap();
      } else if (store.add(row)) {
        charts.forEach((chart) => chart.append(row));
        maybeRefreshOverview();
      }
    } else if (!ACTIVE.includes(s.status) && store.lacksEpochsOf(s.currentEpoch)) {
      backfill().catch(console.warn);
    }
    renderFocus();
  }

  // A live run that outgrows the chart: replace its points with a thinned overview.
  function maybeRefreshOverview() {
    if (refreshing || store.size <= 3000 || Date.now() - lastOverview < 15000) return;
    lastOverview = Date.now();
    const sessionId = focus.id;
    refreshing = fetchJson(page.metricsUrl + sessionId + "?maxPoints=1000")
      .then((data) => {
        if (!focus || focus.id !== sessionId) return;
        const fresh = new EpochStore(sessionId);
        data.epochs.forEach((row) => fresh.add(row));
        store.sorted().forEach((row) => { if (row.epoch > fresh.last) fresh.add(row); });
        store.held.forEach((row) => fresh.hold(row));
        store = fresh;
        redrawCharts();
      })
      .catch(console.warn)
      .finally(() => { refreshing = null; });
  }

  async function stop(form) {
    const item = form.closest("li");
    const sessionId = Number(item.dataset.session);
    const button = form.querySelector("button");
    stopping.add(sessionId);
    button.disabled = true;
    button.textContent = "stopping...";
    const response = await fetch(page.stopUrl + sessionId, {
      method: "POST", credentials: "same-origin",
      headers: { "X-CSRFToken": page.csrf, Accept: "application/json" },
    });
    const body = await response.json();
    if (!response.ok) {
      // Already finished: the list catches up from the server.
      stopping.delete(sessionId);
      refreshActive().catch(console.warn);
      return;
    }
    onEvent({ type: "training_status", session: body.session });
  }

  document.getElementById("active-sessions").addEventListener("submit", (event) => {
    event.preventDefault();
    stop(event.target).catch((error) => {
      console.warn(error);
      event.target.submit();
    });
  });

  const toggle = document.getElementById("live-toggle");
  toggle.addEventListener("click", () => {
    live = !live;
    toggle.setAttribute("aria-pressed", String(live));
    toggle.textContent = live ? "Live updates: on" : "Live updates: paused";
    if (live) {
      backfill().catch(console.warn);
      refreshActive().catch(console.warn);
    }
  });

  new LiveSocket(page.wsPath, {
    event: onEvent,
    // Whatever happened between the page render (or the last connection) and now
    // came through no socket: fetch it.
    open: () => {
      if (!live) return;
      backfill().catch(console.warn);
      refreshActive().catch(console.warn);
    },
  });
  setInterval(renderClock, 1000);
  // A socket can stay open yet deliver nothing (a channel layer that lost its
  // groups): while something trains and all is quiet, ask the API.
  setInterval(() => {
    if (!live || active.size === 0 || Date.now() - lastEventAt < 15000) return;
    lastEventAt = Date.now();
    backfill().catch(console.warn);
    refreshActive().catch(console.warn);
  }, 5000);

  function setUpCustomForm(form) {
    const model = form.querySelector("#id_modelType");
    const dataset = form.querySelector("#id_dataset");
    function showChosen() {
      form.querySelectorAll("fieldset.param-set").forEach((set) => {
        const scope = set.dataset.scope;
        set.hidden = !(scope === "common" || scope === model.value || scope === dataset.value);
      });
      form.querySelector("#id_csvFile").required = dataset.value === "csv";
    }
    model.addEventListener("change", showChosen);
    dataset.addEventListener("change", showChosen);
    showChosen();
  }
})();
