// Shared by the pages that show training live: the WebSocket with reconnect, the
// API fetches that backfill what a socket missed, and the metric charts.
"use strict";

window.MLTrack = (function () {
  const COLORS = {
    train_loss: "#2563eb", val_loss: "#dc2626",
    train_accuracy: "#2563eb", val_accuracy: "#dc2626",
    learning_rate: "#7c3aed", precision: "#059669", recall: "#d97706", f1: "#db2777",
  };

  async function fetchJson(url) {
    const response = await fetch(url, { credentials: "same-origin",
      headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(url + " answered " + response.status);
    return response.json();
  }

  function csrfToken() {
    const match = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
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
      this.connect();
      window.addEventListener("online", () => this.retryNow());
    }

    url() {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      return scheme + "//" + location.host + this.path;
    }

    setState(state) {
      if (!this.indicator) return;
      this.indicator.dataset.state = state;
      this.indicator.textContent = state;
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
        let event;
        try { event = JSON.parse(message.data); } catch (e) { return; }
        if (event.type && event.type.startsWith("training_")) this.handlers.event(event);
      };
      socket.onclose = (closed) => {
        if (socket !== this.socket) return;
        if (closed.code === 4401 || closed.code === 4404) {
          this.setState("refused");
          return;
        }
        this.setState("reconnecting");
        this.timer = setTimeout(() => this.connect(), this.delay);
        this.delay = Math.min(this.delay * 2, 10000);
      };
    }

    retryNow() {
      if (this.socket && this.socket.readyState === WebSocket.OPEN) return;
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
    }
    add(row) {
      if (this.byEpoch.has(row.epoch)) return false;
      this.byEpoch.set(row.epoch, row);
      this.last = Math.max(this.last, row.epoch);
      return true;
    }
    sorted() {
      return Array.from(this.byEpoch.values()).sort((a, b) => a.epoch - b.epoch);
    }
    hasGapBefore(epoch) {
      return epoch > this.last + 1;
    }
  }

  // A line chart of some metrics against the epoch.
  class MetricChart {
    constructor(canvas, metrics, options) {
      options = options || {};
      this.metrics = metrics;
      this.chart = new Chart(canvas, {
        type: "line",
        data: {
          datasets: metrics.map((name) => ({
            label: name, data: [], borderColor: COLORS[name] || "#555",
            backgroundColor: COLORS[name] || "#555", borderWidth: 1.5,
            pointRadius: 0, tension: 0, spanGaps: true, parsing: false,
          })),
        },
        options: {
          animation: false, responsive: true, maintainAspectRatio: false,
          interaction: { mode: "index", intersect: false },
          scales: {
            x: { type: "linear", title: { display: true, text: "epoch" } },
            y: { type: options.logScale ? "logarithmic" : "linear",
                 suggestedMin: options.min, suggestedMax: options.max },
          },
          plugins: { legend: { position: "bottom" } },
        },
      });
    }
    setRows(rows) {
      this.chart.data.datasets.forEach((dataset, i) => {
        const name = this.metrics[i];
        dataset.data = rows.filter((r) => r.metrics[name] !== null && r.metrics[name] !== undefined)
          .map((r) => ({ x: r.epoch, y: r.metrics[name] }));
      });
      this.chart.update("none");
    }
    append(row) {
      this.chart.data.datasets.forEach((dataset, i) => {
        const value = row.metrics[this.metrics[i]];
        if (value !== null && value !== undefined) dataset.data.push({ x: row.epoch, y: value });
      });
      this.chart.update("none");
    }
    pointCounts() {
      return this.chart.data.datasets.map((d) => d.data.length);
    }
  }

  return { fetchJson, csrfToken, formatSeconds, LiveSocket, EpochStore, MetricChart };
})();
