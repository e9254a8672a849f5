// pollctl's status page: tiles (paged, filtered by colour and name), a gateway's page, the
// alerts view; live through /ws. No build step: plain DOM and fetch.
"use strict";

const PAGE_SIZE = 100;
const REFRESH_MS = 10000; // colours also change with time alone (no success for N intervals)
const COLOURS = ["green", "yellow", "red", "grey"];
const state = { view: "tiles", colour: "", q: "", offset: 0, names: [], gateway: null };
let socket = null;
let wanted = new Set(); // topics this view wants from /ws
let refreshTimer = null;
let pending = null; // a throttled refresh already scheduled

// -- the API, with the token when the server wants one ------------------------------------

function token() { return sessionStorage.getItem("pollctl-token") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) { await login(); return api(path, options); }
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function login() {
  const dialog = document.getElementById("login");
  const input = document.getElementById("token");
  document.getElementById("login-error").textContent = token() ? "that token was refused" : "";
  return new Promise((resolve) => {
    document.getElementById("login-form").onsubmit = () => {
      sessionStorage.setItem("pollctl-token", input.value.trim());
      connect(true);
      resolve();
    };
    if (!dialog.open) dialog.showModal();
  });
}

// -- the live feed ------------------------------------------------------------------------

function connect(again) {
  if (socket && !again) return;
  if (socket) { socket.onclose = null; socket.close(); }
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const protocols = token() ? ["pollctl", "bearer." + token()] : ["pollctl"];
  socket = new WebSocket(scheme + location.host + "/ws", protocols);
  socket.onopen = () => { live(true); send("subscribe", [...wanted]); };
  socket.onmessage = (event) => onFrame(JSON.parse(event.data));
  socket.onclose = () => { live(false); socket = null; setTimeout(() => connect(), 2000); };
}

function live(on) {
  const badge = document.getElementById("live");
  badge.className = "live " + (on ? "on" : "off");
  badge.textContent = on ? "live" : "offline";
}

function send(op, topics) {
  if (socket && socket.readyState === WebSocket.OPEN && topics.length)
    socket.send(JSON.stringify({ op, topics }));
}

function want(topics) {
  const next = new Set(topics);
  send("unsubscribe", [...wanted].filter((t) => !next.has(t)));
  send("subscribe", [...next].filter((t) => !wanted.has(t)));
  wanted = next;
}

function onFrame(frame) {
  if (!frame.topic) return; // subscribed, heartbeat, error
  if (frame.data && frame.data.event) { // a breaker transition: colour, probe time change
    if (frame.topic !== "global" || state.names.includes(frame.data.gateway)) soon();
  } else if (frame.topic === "global") {
    const touched = Object.keys(frame.data.gateways || {}).some((n) => state.names.includes(n));
    if (state.view === "tiles" && touched) soon();
  } else if (frame.topic === "alerts") {
    if (state.view === "alerts" || state.view === "gateway") soon();
  } else if (frame.topic.startsWith("gateways.")) {
    if (state.view === "tiles") updateTile(frame.data);
    else if (state.view === "gateway") { prependPoll(frame.data); soon(); }
  }
}

function soon() { // at most one refresh a second, however many frames arrive
  if (pending) return;
  pending = setTimeout(() => { pending = null; render(); }, 1000);
}

// -- views ---------------------------------------------------------------------------------

function route() {
  const hash = location.hash.slice(1) || "/";
  if (hash.startsWith("/gateway/")) {
    state.view = "gateway";
    state.gateway = decodeURIComponent(hash.slice(9));
  } else if (hash === "/alerts") state.view = "alerts";
  else state.view = "tiles";
  document.getElementById("main").innerHTML = "";
  render();
}

async function render() {
  clearTimeout(refreshTimer);
  try {
    if (state.view === "tiles") await renderTiles();
    else if (state.view === "gateway") await renderGateway();
    else await renderAlerts();
  } catch (err) {
    document.getElementById("main").innerHTML = `<p class="error">${esc(err.message)}</p>`;
  }
  refreshTimer = setTimeout(render, REFRESH_MS);
}

async function renderTiles() {
  const params = new URLSearchParams({ offset: state.offset, limit: PAGE_SIZE });
  if (state.colour) params.set("colour", state.colour);
  if (state.q) params.set("q", state.q);
  const page = await api("/api/polling/gateways?" + params);
  const main = document.getElementById("main");
  if (!main.querySelector(".toolbar")) main.innerHTML = toolbar();
  main.querySelectorAll(".toolbar button[data-colour]").forEach((b) => {
    const c = b.dataset.colour;
    b.classList.toggle("active", c === state.colour);
    const n = c ? page.counts[c] : COLOURS.reduce((s, k) => s + page.counts[k], 0);
    b.querySelector(".n").textContent = n;
  });
  state.names = page.gateways.map((g) => g.name);
  main.querySelector(".grid").innerHTML = page.gateways.map(tile).join("");
  const last = Math.min(page.offset + page.limit, page.total);
  main.querySelector(".pager").innerHTML =
    `<button data-step="-1" ${page.offset ? "" : "disabled"}>previous</button>` +
    `<span>${page.total ? page.offset + 1 : 0}-${last} of ${page.total}</span>` +
    `<button data-step="1" ${last < page.total ? "" : "disabled"}>next</button>`;
  want(["global", "alerts", ...state.names.map((n) => "gateways." + n)]);
}

function toolbar() {
  const buttons = ["", ...COLOURS].map((c) =>
    `<button data-colour="${c}">${c ? `<span class="dot bg-${c}"></span>${c}` : "all"} ` +
    `(<span class="n">0</span>)</button>`).join("");
  return `<div class="toolbar">${buttons}` +
    `<input id="filter" type="search" placeholder="filter by name" value="${esc(state.q)}"></div>` +
    `<div class="grid"></div><div class="pager"></div>`;
}

function tile(g) {
  const values = (g.values || []).map((v) => `${esc(v.point)} ${fmt(v.value)}${unit(v.unit)}`);
  const rate = g.success_rate == null ? "-" : (g.success_rate * 100).toFixed(0) + " %";
  return `<div class="tile colour-${g.colour}" data-name="${esc(g.name)}" data-colour="${g.colour}">` +
    `<h3>${esc(g.name)}</h3>` +
    `<div class="meta">last poll <span class="last">${ago(g.last_slot)}</span>` +
    ` <span class="outcome outcome-${g.last_outcome || ""}">${g.last_outcome || ""}</span>` +
    ` · ok ${rate}${g.site && g.site !== "default" ? " · site " + esc(g.site) : ""}</div>` +
    `<div class="values">${values.join(" · ") || "no values yet"}</div>` +
    spark(g.spark ? g.spark.series : []) + `</div>`;
}

function updateTile(poll) {
  const el = document.querySelector(`.tile[data-name="${CSS.escape(poll.gateway)}"]`);
  if (!el) return;
  el.querySelector(".last").textContent = ago(poll.slot);
  const outcome = el.querySelector(".outcome");
  outcome.textContent = poll.outcome;
  outcome.className = "outcome outcome-" + poll.outcome;
  if (poll.readings && poll.readings.length)
    el.querySelector(".values").textContent =
      poll.readings.map((r) => `${r.point} ${fmt(r.value)}${unit(r.unit)}`).join(" · ");
}

async function renderGateway() {
  const name = state.gateway;
  const g = await api("/api/polling/gateways/" + encodeURIComponent(name));
  const alerts = (await openAlerts()).filter((a) => a.gateway === name);
  const probe = g.next_probe_at ? `<p>next recovery probe ${local(g.next_probe_at)}</p>` : "";
  const points = g.points.map((p) =>
    `<tr><td>${esc(p.name)}</td><td class="num">${fmt(p.value)}</td><td>${esc(p.unit || "")}</td>` +
    `<td style="width:14rem">${spark(p.series)}</td></tr>`).join("");
  const missed = g.missed_slots.map((m) =>
    `<tr><td>${local(m.slot_at)}</td><td>${local(m.last_slot_at)}</td>` +
    `<td class="num">${m.slots}</td><td>${esc(m.why || "")}</td></tr>`).join("");
  document.getElementById("main").innerHTML =
    `<h2><span class="dot bg-${g.colour}"></span>${esc(name)} <small>${g.colour}</small></h2>` +
    `<p>every ${g.interval} s · site ${esc(g.site || "default")} · ${g.started ? "started" : "stopped"}` +
    `${g.enabled ? "" : " · disabled: " + esc(g.disabled_reason || "")}` +
    ` · last ok ${ago(g.last_ok_at)} · ok ${g.success_rate == null ? "-" :
      (g.success_rate * 100).toFixed(0) + " %"}</p>${probe}` +
    `<h3>Points</h3><table><tr><th>point</th><th>value</th><th>unit</th><th>last hour</th></tr>` +
    `${points}</table>` +
    `<h3>Alerts</h3>${alertTable(alerts)}` +
    `<h3>Missed slots (last hour)</h3><table><tr><th>from</th><th>to</th><th>slots</th>` +
    `<th>why</th></tr>${missed || "<tr><td colspan=4>none</td></tr>"}</table>` +
    `<h3>Poll log</h3><table id="polls"><tr><th>slot</th><th>outcome</th><th>duration ms</th>` +
    `<th>late ms</th><th>error</th></tr>${g.polls.map(pollRow).join("")}</table>`;
  want(["alerts", "gateways." + name]);
}

function pollRow(p) {
  return `<tr><td>${local(p.slot_at || p.slot)}</td>` +
    `<td class="outcome-${p.outcome}">${p.outcome}${p.slots > 1 ? " ×" + p.slots : ""}</td>` +
    `<td class="num">${p.duration_ms == null ? "" : Math.round(p.duration_ms)}</td>` +
    `<td class="num">${p.lateness_ms == null ? "" : p.lateness_ms}</td>` +
    `<td class="error">${esc(p.error || "")}</td></tr>`;
}

function prependPoll(poll) {
  const table = document.getElementById("polls");
  if (table) table.rows[0].insertAdjacentHTML("afterend", pollRow(poll));
}

async function openAlerts() {
  try { return (await api("/api/alerts?open=1")).alerts || []; } catch { return []; }
}

async function renderAlerts() {
  const alerts = await openAlerts();
  document.getElementById("main").innerHTML = `<h2>Open alerts</h2>${alertTable(alerts)}`;
  want(["alerts"]);
}

function alertTable(alerts) {
  if (!alerts.length) return "<p>none open</p>";
  return `<table><tr><th>about</th><th>severity</th><th>state</th><th>since</th>` +
    `<th>what</th><th></th></tr>` + alerts.map((a) =>
      `<tr><td>${a.gateway ? `<a href="#/gateway/${encodeURIComponent(a.gateway)}">` +
      `${esc(a.gateway)}</a>` : esc(a.subject || "")}</td>` +
      `<td>${esc(a.severity || "")}</td><td>${esc(a.state || "")}</td>` +
      `<td>${local(a.first_at)}</td><td>${esc(a.message || a.rule || "")}</td>` +
      `<td>${a.state === "new" ? `<button data-ack="${a.id}">ack</button>` : ""}` +
      `</td></tr>`).join("") + "</table>";
}

async function ack(id) {
  const note = prompt("Acknowledge: a note for the others (optional)") ;
  if (note === null) return;
  await api(`/api/alerts/${encodeURIComponent(id)}/ack`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ note }),
  });
  render();
}

// -- small helpers -------------------------------------------------------------------------

function spark(series) {
  if (!series || series.length < 2) return `<svg class="spark"></svg>`;
  const xs = series.map((p) => p[0]), ys = series.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const pts = series.map(([x, y]) =>
    `${((x - x0) / (x1 - x0 || 1) * 100).toFixed(1)},${(28 - (y - y0) / (y1 - y0 || 1) * 26).toFixed(1)}`);
  return `<svg class="spark" viewBox="0 0 100 30" preserveAspectRatio="none">` +
    `<polyline points="${pts.join(" ")}"/></svg>`;
}

function fmt(v) {
  if (v == null) return "-";
  return typeof v === "number" ? String(+v.toPrecision(6)) : esc(String(v));
}
function unit(u) { return u ? " " + esc(u) : ""; }
function local(iso) { return iso ? new Date(iso).toLocaleString() : "-"; }
function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : local(iso);
}
function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

document.addEventListener("click", (event) => {
  const el = event.target.closest("button, .tile");
  if (!el) return;
  if (el.dataset.colour !== undefined && el.tagName === "BUTTON") {
    state.colour = el.dataset.colour; state.offset = 0; render();
  } else if (el.dataset.step) {
    state.offset = Math.max(0, state.offset + Number(el.dataset.step) * PAGE_SIZE); render();
  } else if (el.dataset.ack) ack(el.dataset.ack);
  else if (el.classList.contains("tile")) location.hash = "#/gateway/" + encodeURIComponent(el.dataset.name);
});
document.addEventListener("input", (event) => {
  if (event.target.id !== "filter") return;
  state.q = event.target.value.trim(); state.offset = 0; soon();
});
window.addEventListener("hashchange", route);
connect();
route();
