// The asok_green dashboard: one WebSocket of JSON snapshots, drawn as tiles, canvas charts and tables.
"use strict";

(function () {
  const HISTORY = 120; // points kept per chart: two minutes at one snapshot a second
  const series = { connections: [], messagesIn: [], messagesOut: [], handlerMs: [], slow: [] };
  const $ = (id) => document.getElementById(id);

  function push(list, value) {
    list.push(value);
    if (list.length > HISTORY) list.shift();
  }

  function fmt(value, digits) {
    if (typeof value !== "number") return "–";
    return value.toLocaleString(undefined, { maximumFractionDigits: digits || 0 });
  }

  function drawChart(canvas, lines) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, width, height);
    let top = 0;
    for (const line of lines) for (const v of line.values) top = Math.max(top, v);
    top = top > 0 ? top * 1.15 : 1;
    const pad = { left: 36, right: 6, top: 6, bottom: 14 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    ctx.strokeStyle = "#dde1e7";
    ctx.fillStyle = "#6b7585";
    ctx.font = "10px system-ui, sans-serif";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 2; i++) {
      const y = pad.top + plotH - (plotH * i) / 2;
      ctx.beginPath();
      ctx.moveTo(pad.left, y);
      ctx.lineTo(width - pad.right, y);
      ctx.stroke();
      ctx.fillText(fmt((top * i) / 2, top < 1 ? 3 : top < 10 ? 1 : 0), 2, y + 3);
    }
    ctx.fillText(HISTORY + " s", width - pad.right - 28, height - 2);
    for (const line of lines) {
      const values = line.values;
      if (!values.length) continue;
      ctx.strokeStyle = line.color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      values.forEach((v, i) => {
        const x = pad.left + (plotW * (HISTORY - values.length + i)) / (HISTORY - 1);
        const y = pad.top + plotH - (plotH * v) / top;
        if (i === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
  }

  function fillTable(id, rows, cells) {
    const body = $(id).querySelector("tbody");
    body.textContent = "";
    if (!rows.length) {
      const tr = body.insertRow();
      const td = tr.insertCell();
      td.colSpan = $(id).querySelectorAll("th").length;
      td.className = "empty";
      td.textContent = "none";
      return;
    }
    for (const row of rows) {
      const tr = body.insertRow();
      for (const value of cells(row)) {
        const td = tr.insertCell();
        td.textContent = value === null || value === undefined ? "–" : String(value);
        if (typeof value === "number") td.className = "num";
      }
    }
  }

  let received = 0;

  function render(s) {
    document.body.dataset.snapshots = String(++received);
    push(series.connections, s.connections);
    push(series.messagesIn, s.rates.messages_in);
    push(series.messagesOut, s.rates.messages_out);
    push(series.handlerMs, s.rates.handler_ms);
    push(series.slow, s.rates.slow_consumers);

    $("connections").textContent = fmt(s.connections);
    $("online-count").textContent = fmt(s.online.count);
    $("room-count").textContent = fmt(s.room_count);
    $("rate-in").textContent = fmt(s.rates.messages_in, 1);
    $("rate-out").textContent = fmt(s.rates.messages_out, 1);
    $("slow").textContent = fmt(s.totals.slow_consumers);
    $("updated").textContent = "updated " + new Date(s.time * 1000).toLocaleTimeString();

    drawChart($("chart-connections"), [{ values: series.connections, color: "#2e9d5b" }]);
    drawChart($("chart-messages"), [
      { values: series.messagesIn, color: "#2f6fdb" },
      { values: series.messagesOut, color: "#d9822b" },
    ]);
    drawChart($("chart-handler"), [{ values: series.handlerMs, color: "#7a4fd0" }]);
    drawChart($("chart-slow"), [{ values: series.slow, color: "#c8413b" }]);

    fillTable("rooms", s.rooms, (r) => [r.room, r.connections, r.users]);
    fillTable("routes", s.handlers, (h) => [h.pattern, h.connections, h.calls, Number(h.mean_ms.toFixed(3)), Number(h.recent_ms.toFixed(3))]);
    fillTable("nodes", s.nodes, (n) => [n.self && n.id !== "this process" ? n.id + " (this)" : n.id, n.users, n.connections, n.rooms, n.redis || "not clustered"]);
    const closes = ["slow_consumers", "rate_limited", "protocol_errors", "keepalive", "revoked"];
    fillTable("closes", closes, (name) => [name.replace(/_/g, " "), s.totals[name]]);
    fillTable("refusal-causes", Object.entries(s.refusals.by_cause), ([cause, n]) => [cause, n]);
    fillTable("refusals", s.refusals.recent, (r) => [new Date(r.at * 1000).toLocaleTimeString(), r.cause, r.status, r.pattern || "–"]);

    const shown = s.online.first.length;
    $("online-summary").textContent =
      s.online.count + " online (" + s.online.here + " on this node)" + (s.online.count > shown ? ", first " + shown + ":" : "");
    const list = $("online-ids");
    list.textContent = "";
    for (const id of s.online.first) {
      const li = document.createElement("li");
      li.textContent = String(id);
      list.appendChild(li);
    }
  }

  function connect() {
    const token = new URLSearchParams(location.search).get("token");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
    const url = scheme + "//" + location.host + base + "live" + (token ? "?token=" + encodeURIComponent(token) : "");
    // The dashboard's subprotocol: snapshots only (no presence frames), nothing to send.
    const socket = new WebSocket(url, "asok-green.dashboard");
    const status = $("status");
    socket.onopen = () => {
      status.textContent = "live";
      status.className = "status up";
    };
    socket.onmessage = (event) => render(JSON.parse(event.data));
    socket.onclose = () => {
      status.textContent = "disconnected: retrying";
      status.className = "status down";
      setTimeout(connect, 2000);
    };
  }

  connect();
})();
