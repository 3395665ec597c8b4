// Shared by the pages that show training: the WebSocket with reconnect, the API
// fetches that backfill what a socket missed, and the metric charts.
"use strict";

window.MLTrack = (function () {
  const COLORS = {
    train_loss: "#2563eb", val_loss: "#dc2626",
    train_accuracy: "#2563eb", val_accuracy: "#dc2626",
    learning_rate: "#7c3aed", precision: "#059669", recall: "#d97706", f1: "#db2777",
  };
  // Distinct colours for overlaid sessions on the Compare page.
  const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777",
    "#0891b2", "#4b5563"];

  async function fetchJson(url) {
    const response = await fetch(url, { credentials: "same-origin",
      headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(url + " answered " + response.status);
    return response.json();
  }

  function formatSeconds(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    seconds = Math.max(0, Math.round(seconds));
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60);
    const s = seconds % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
  }

  // A WebSocket that reconnects with exponential backoff and tells the page when it
  // is (re)connected, so the page can fetch what it missed from the API.
  class LiveSocket {
    constructor(path, handlers) {
      this.path = path;
      this.handlers = handlers;
      this.delay = 500;
      this.indicator = document.getElementById("connection");
      if (this.indicator) this.indicator.hidden = false;
      this.connect();
      window.addEventListener("online", () => this.retryNow());
      // A laptop waking up: timers were frozen, try at once rather than after the delay.
      document.addEventListener("visibilitychange", () => {
        if (document.visibilityState === "visible") this.retryNow();
      });
    }

    url() {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      return scheme + "//" + location.host + this.path;
    }

    setState(state, label) {
      if (!this.indicator) return;
      this.indicator.dataset.state = state;
      this.indicator.textContent = label || state;
    }

    connect() {
      this.setState("connecting");
      const socket = new WebSocket(this.url());
      this.socket = socket;
      socket.onopen = () => {
        this.delay = 500;
        this.setState("live");
        if (this.handlers.open) this.handlers.open();
      };
      socket.onmessage = (message) => {
        let frame;
        try { frame = JSON.parse(message.data); } catch (e) { return; }
        // Events that queued up on the server while it was writing come as one frame.
        const events = frame.type === "batch" ? frame.events : [frame];
        for (const event of events) {
          if (event.type && event.type.startsWith("training_")) this.handlers.event(event);
        }
      };
      socket.onclose = (closed) => {
        if (socket !== this.socket) return;
        if (closed.code === 4401 || closed.code === 4404) {
          this.setState("refused");
          return;
        }
        const seconds = Math.round(this.delay / 100) / 10;
        this.setState("reconnecting", "reconnecting in " + seconds + "s");
        this.timer = setTimeout(() => this.connect(), this.delay);
        // Backoff with jitter, so many pages do not reconnect in lockstep.
        this.delay = Math.min(this.delay * 2, 10000) * (0.8 + Math.random() * 0.4);
      };
    }

    retryNow() {
      if (this.socket && this.socket.readyState <= WebSocket.OPEN) return;
      clearTimeout(this.timer);
      this.connect();
    }
  }

  // The epochs of one session, each once, in order; remembers the highest epoch
  // so a jump in the live stream shows a gap to backfill.
  class EpochStore {
    constructor(sessionId) {
      this.sessionId = sessionId;
      this.byEpoch = new Map();
      this.last = 0;
      this.cache = null;
      this.held = new Map();
    }
    // A live epoch that came after a gap, kept until the epochs before it are
    // fetched: the worker saves epochs a fraction of a second after it pushes
    // them (sessions/tasks.py), so a backfill may not find them yet.
    hold(row) {
      if (!this.byEpoch.has(row.epoch)) this.held.set(row.epoch, row);
    }
    // Add the held epochs that now follow on from the others, in order, and
    // return how many were new.
    release() {
      let added = 0;
      const epochs = Array.from(this.held.keys()).sort((a, b) => a - b);
      for (const epoch of epochs) {
        if (this.hasGapBefore(epoch)) break;
        if (this.add(this.held.get(epoch))) added++;
        this.held.delete(epoch);
      }
      return added;
    }
    // Whether live epochs wait for a gap before them to be filled.
    get waiting() {
      return this.held.size > 0;
    }
    // Whether a run that reached `currentEpoch` has epochs this store lacks
    // (a finished run's are all saved: a backfill gets them).
    lacksEpochsOf(currentEpoch) {
      return this.waiting || this.last < currentEpoch;
    }
    add(row) {
      if (this.byEpoch.has(row.epoch)) return false;
      this.byEpoch.set(row.epoch, row);
      this.last = Math.max(this.last, row.epoch);
      this.cache = null;
      return true;
    }
    sorted() {
      if (!this.cache) {
        this.cache = Array.from(this.byEpoch.values()).sort((a, b) => a.epoch - b.epoch);
      }
      return this.cache;
    }
    hasGapBefore(epoch) {
      return epoch > this.last + 1;
    }
    get size() {
      return this.byEpoch.size;
    }
  }

  // How soon a backfill is tried again while live epochs still wait for a gap
  // to be filled: the worker saves its epochs every quarter second or so. Each
  // retry that leaves them waiting doubles the wait, up to REFILL_MAX_MS (a
  // worker that died before saving them: its run is failed as lost later).
  const REFILL_MS = 400;
  const REFILL_MAX_MS = 5000;

  // A page's backfill, one at a time. `fill` fetches what the page lacks and
  // `waiting` says whether live epochs of an active run still wait for a gap
  // before them. run() while one is on its way runs one more after it (the page
  // may have moved to another session meanwhile); gap() while one is on its way
  // or due leaves the gap to it. While epochs wait after a backfill, another
  // follows.
  class Backfill {
    constructor(fill, waiting) {
      this.fill = fill;
      this.waiting = waiting;
      this.running = null;
      this.again = false;
      this.timer = null;
      this.delay = REFILL_MS;
    }
    run() {
      if (this.running) {
        this.again = true;
        return this.running;
      }
      clearTimeout(this.timer);
      this.timer = null;
      this.running = this.loop().finally(() => {
        this.running = null;
        if (!this.waiting()) {
          this.delay = REFILL_MS;
        } else if (this.timer === null) {
          this.timer = setTimeout(() => this.run().catch(console.warn), this.delay);
          this.delay = Math.min(this.delay * 2, REFILL_MAX_MS);
        }
      });
      return this.running;
    }
    async loop() {
      do {
        this.again = false;
        await this.fill();
      } while (this.again);
    }
    gap() {
      if (!this.running && this.timer === null) this.run().catch(console.warn);
    }
  }

  // TensorBoard's smoothing: an exponential moving average, debiased so the first
  // points are not pulled towards zero.
  function smooth(points, weight) {
    if (!weight) return points;
    let last = 0, count = 0;
    return points.map((p) => {
      last = last * weight + (1 - weight) * p.y;
      count++;
      return { x: p.x, y: last / (1 - Math.pow(weight, count)) };
    });
  }

  // Paint the PNG export white: a transparent chart is unreadable in most viewers.
  const whiteBackground = {
    id: "whiteBackground",
    beforeDraw(chart) {
      const ctx = chart.ctx;
      ctx.save();
      ctx.globalCompositeOperation = "destination-over";
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, chart.width, chart.height);
      ctx.restore();
    },
  };

  // A line chart of some metrics against the epoch or the elapsed time, with EMA
  // smoothing, a log scale and drag-to-zoom. `series` are [{label, metric, color}]
  // over rows {epoch, metrics, time}; a chart of one session passes metric names.
  class MetricChart {
    constructor(canvas, metrics, options) {
      this.options = options || {};
      this.series = metrics.map((m) => typeof m === "string"
        ? { label: m, metric: m, color: COLORS[m] || "#555" } : m);
      this.rows = this.series.map(() => []);
      this.smoothing = 0;
      this.xAxis = "epoch";
      this.startedAt = this.series.map(() => null);
      const datasets = [];
      this.series.forEach((s) => {
        datasets.push({ label: s.label, data: [], borderColor: s.color,
          backgroundColor: s.color, borderWidth: 1.5, pointRadius: 0, tension: 0,
          spanGaps: true, parsing: false, normalized: true });
      });
      // Faint raw curves behind the smoothed ones, as in TensorBoard.
      this.series.forEach((s) => {
        datasets.push({ label: s.label + " (raw)", raw: true, data: [],
          borderColor: s.color + "40", backgroundColor: s.color + "40", borderWidth: 1,
          pointRadius: 0, tension: 0, spanGaps: true, parsing: false, normalized: true,
          hidden: true });
      });
      this.chart = new Chart(canvas, {
        type: "line",
        data: { datasets },
        plugins: [whiteBackground],
        options: {
          animation: false, responsive: true, maintainAspectRatio: false,
          interaction: { mode: "nearest", axis: "x", intersect: false },
          scales: {
            // Epochs are whole numbers: no tick at epoch 1.5.
            x: { type: "linear", title: { display: true, text: "epoch" },
              ticks: { precision: 0 } },
            y: { type: "linear", suggestedMin: this.options.min,
                 suggestedMax: this.options.max },
          },
          plugins: {
            legend: { position: "bottom",
              labels: { filter: (item, data) => !data.datasets[item.datasetIndex].raw } },
            decimation: { enabled: false },
          },
        },
      });
      if (this.options.onZoom) this.enableDragZoom(canvas);
    }

    // One session: the same rows feed every series.
    setRows(rows, startedAt) {
      const copy = rows.slice();
      this.rows = this.series.map(() => copy);
      if (startedAt !== undefined) this.startedAt = this.series.map(() => startedAt);
      this.redraw();
    }

    // Several sessions (Compare): rows and start time per series.
    setSeriesRows(rowsPerSeries, startedAtPerSeries) {
      this.rows = rowsPerSeries;
      this.startedAt = startedAtPerSeries;
      this.redraw();
    }

    append(row) {
      this.series.forEach((s, i) => {
        const rows = this.rows[i];
        if (!rows.length || rows[rows.length - 1].epoch < row.epoch) {
          if (i === 0 || this.rows[i] !== this.rows[0]) rows.push(row);
        }
      });
      this.redraw();
    }

    xOf(row, i) {
      if (this.xAxis === "time" && row.time && this.startedAt[i]) {
        return (Date.parse(row.time) - this.startedAt[i]) / 1000;
      }
      return row.epoch;
    }

    points(i) {
      const metric = this.series[i].metric;
      const points = [];
      this.rows[i].forEach((r) => {
        const y = r.metrics[metric];
        if (y !== null && y !== undefined) points.push({ x: this.xOf(r, i), y: y });
      });
      return points;
    }

    redraw() {
      const count = this.series.length;
      this.series.forEach((s, i) => {
        const raw = this.points(i);
        this.chart.data.datasets[i].data = smooth(raw, this.smoothing);
        const shadow = this.chart.data.datasets[count + i];
        shadow.data = this.smoothing ? raw : [];
        shadow.hidden = !this.smoothing;
      });
      this.chart.update("none");
    }

    setSmoothing(weight) {
      this.smoothing = Math.min(0.999, Math.max(0, weight));
      this.redraw();
    }

    setLogScale(on) {
      this.chart.options.scales.y.type = on ? "logarithmic" : "linear";
      this.redraw();
    }

    setXAxis(mode) {
      this.xAxis = mode;
      this.chart.options.scales.x.title.text = mode === "time" ? "elapsed seconds" : "epoch";
      this.chart.options.scales.x.ticks.precision = mode === "time" ? undefined : 0;
      this.setXRange(null, null);
    }

    setXRange(min, max) {
      const x = this.chart.options.scales.x;
      if (min === null) { delete x.min; delete x.max; } else { x.min = min; x.max = max; }
      this.redraw();
    }

    // The epochs drawn between two x values (x may be seconds).
    epochsBetween(from, to) {
      const epochs = [];
      this.rows.forEach((rows, i) => rows.forEach((r) => {
        const x = this.xOf(r, i);
        if (x >= from && x <= to) epochs.push(r.epoch);
      }));
      if (!epochs.length) return null;
      return [Math.min.apply(null, epochs), Math.max.apply(null, epochs)];
    }

    enableDragZoom(canvas) {
      const box = canvas.parentElement;
      const band = document.createElement("div");
      band.className = "zoom-band";
      band.hidden = true;
      box.append(band);
      let start = null;
      canvas.addEventListener("pointerdown", (event) => {
        if (event.button !== 0) return;
        start = event.offsetX;
        band.style.left = start + "px";
        band.style.width = "0px";
        band.hidden = false;
      });
      canvas.addEventListener("pointermove", (event) => {
        if (start === null) return;
        band.style.left = Math.min(start, event.offsetX) + "px";
        band.style.width = Math.abs(event.offsetX - start) + "px";
      });
      const finish = (event) => {
        if (start === null) return;
        const end = event.offsetX;
        band.hidden = true;
        const from = Math.min(start, end), to = Math.max(start, end);
        start = null;
        if (to - from < 6) return;
        const scale = this.chart.scales.x;
        this.options.onZoom(scale.getValueForPixel(from), scale.getValueForPixel(to), this);
      };
      canvas.addEventListener("pointerup", finish);
      canvas.addEventListener("pointerleave", finish);
    }

    pngDataUrl() {
      return this.chart.toBase64Image("image/png", 1);
    }

    pointCounts() {
      return this.series.map((s, i) => this.chart.data.datasets[i].data.length);
    }
  }

  // The session a page should show: `fetched` (a backfill's answer) unless live
  // events have already taken the page past it. A slow answer can leave the
  // server before the final event does: it would put a finished run back to
  // running, or its counters back a few epochs.
  const ACTIVE = ["queued", "running", "stopping"];
  function fresher(shown, fetched) {
    if (!shown || shown.id !== fetched.id) return fetched;
    if (!ACTIVE.includes(shown.status) && ACTIVE.includes(fetched.status)) return shown;
    if (ACTIVE.includes(fetched.status) && fetched.currentEpoch < shown.currentEpoch) {
      return shown;
    }
    return fetched;
  }

  return { fetchJson, formatSeconds, fresher, LiveSocket, EpochStore, Backfill,
    MetricChart, PALETTE, smooth };
})();
