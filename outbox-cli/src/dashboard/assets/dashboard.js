// The overview's live figures, charts and keys: polls /api/stats, /api/series and /api/keys
// (same origin, no third-party code), and draws the series as SVG.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const H = 120, PAD = 4;

  function el(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // values: [[t, v|null]], over the last `span` ms ending at `now`.
  function draw(svg, values, now, span, unit) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    // Drawn in CSS pixels, so the labels are not stretched.
    const W = Math.max(100, Math.round(svg.getBoundingClientRect().width));
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    const known = values.filter(function (p) { return p[1] !== null; });
    const max = Math.max(1, ...known.map(function (p) { return p[1]; }));
    const x = function (t) { return W - ((now - t) / span) * W; };
    const y = function (v) { return H - PAD - (v / max) * (H - 2 * PAD - 14); };
    for (let i = 1; i < 4; i++) {
      svg.appendChild(el("line", { x1: 0, x2: W, y1: (H * i) / 4, y2: (H * i) / 4, class: "grid" }));
    }
    if (known.length > 1) {
      const pts = known.map(function (p) { return x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1); });
      svg.appendChild(el("polygon", { points: x(known[0][0]).toFixed(1) + "," + (H - PAD) + " " + pts.join(" ") + " " + x(known[known.length - 1][0]).toFixed(1) + "," + (H - PAD), class: "area" }));
      svg.appendChild(el("polyline", { points: pts.join(" "), class: "line" }));
    }
    const last = known.length ? known[known.length - 1][1] : null;
    svg.appendChild(el("text", { x: 6, y: 14, class: "axis" }, "max " + max + " " + unit));
    svg.appendChild(el("text", { x: W - 6, y: 14, class: "axis end" }, last === null ? "no data" : "now " + last + " " + unit));
    svg.setAttribute("data-last", last === null ? "" : String(last));
    svg.setAttribute("data-points", String(known.length));
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "\u2013";
    let s = Math.floor(seconds);
    const parts = [];
    for (const [n, u] of [[86400, "d"], [3600, "h"], [60, "m"], [1, "s"]]) {
      if (s >= n || (u === "s" && parts.length === 0)) { parts.push(Math.floor(s / n) + u); s %= n; }
    }
    return parts.join(" ");
  }

  async function getJson(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.json();
  }

  async function refreshSeries() {
    const s = await getJson("/api/series");
    const now = Date.now();
    // The whole width until five minutes of samples exist.
    const first = s.points.length ? s.points[0].t : now;
    const span = Math.min(300 * 1000, Math.max(10 * 1000, now - first));
    draw(document.getElementById("chart-published"), s.points.map(function (p) { return [p.t, p.published]; }), now, span, "/s");
    draw(document.getElementById("chart-pending"), s.points.map(function (p) { return [p.t, p.pending]; }), now, span, "");
  }

  async function refreshStats() {
    const s = await getJson("/api/stats");
    for (const k of ["pending", "claimed", "dead"]) {
      const e = document.getElementById("stat-" + k);
      if (e) e.textContent = String(s[k]);
    }
    const o = document.getElementById("stat-oldest");
    if (o) o.textContent = age(s.oldest_pending_age_seconds);
  }

  // Rebuilt with textContent only: a key is data, never markup.
  async function refreshKeys() {
    const box = document.getElementById("keys-live");
    const keys = await getJson("/api/keys?limit=" + encodeURIComponent(box.getAttribute("data-limit")));
    const rows = keys.map(function (k) {
      const key = document.createElement("td");
      key.appendChild(document.createElement("code")).textContent = k.key;
      const n = document.createElement("td");
      n.className = "num";
      n.textContent = String(k.pending);
      const tr = document.createElement("tr");
      tr.append(key, n);
      return tr;
    });
    box.querySelector("#keys tbody").replaceChildren(...rows);
    box.querySelector("#keys").hidden = rows.length === 0;
    document.getElementById("no-keys").hidden = rows.length !== 0;
  }

  function every(ms, f) {
    const run = function () {
      f()
        .then(function () { document.body.classList.remove("stale"); })
        .catch(function () { document.body.classList.add("stale"); })
        .then(function () { setTimeout(run, ms); });
    };
    run();
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.getElementById("chart")) {
      every(1000, refreshSeries);
      every(2000, refreshStats);
    }
    if (document.getElementById("keys-live")) every(2000, refreshKeys);
  });
})();
