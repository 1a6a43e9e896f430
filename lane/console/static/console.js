"use strict";
// The plaza console: polls api/state once a second and draws it; actions go to api/action.
const base = location.pathname.replace(/\/+$/, "");
const api = (path) => `${base}/api/${path}`;
const $ = (id) => document.getElementById(id);
let state = null;
let selected = null;

function text(id, value) { $(id).textContent = value === null || value === undefined ? "–" : String(value); }
function esc(s) { return String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`); }
function time(t) { return t ? new Date(t * 1000).toISOString().slice(11, 19) : ""; }
function dur(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
function toast(message, error) {
  const t = $("toast");
  t.textContent = message; t.className = error ? "error" : ""; t.hidden = false;
  clearTimeout(toast.timer); toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}

async function post(path, body) {
  const resp = await fetch(api(path), { method: "POST", body: JSON.stringify(body), credentials: "same-origin" });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}

async function act(lane, op, alarm) {
  const what = { open: "OPEN the barrier for the vehicle at", close_lane: "CLOSE", reopen_lane: "REOPEN", ack_alarm: `acknowledge ${alarm} on` }[op];
  if (!window.confirm(`${what} lane ${lane}?`)) return;
  try {
    const done = await post("action", { lane, op, alarm, confirm: true });
    toast(`${op} sent to ${lane} (${done.cmd_id})`);
  } catch (err) { toast(`${op} refused: ${err.message}`, true); }
}

function drawTiles(s) {
  const tiles = $("tiles");
  text("lane-count", `${s.lanes.length} lane(s)`);
  tiles.innerHTML = s.lanes.map((l, i) => {
    const top = l.alarms.slice().sort((a, b) => rank(b.severity) - rank(a.severity))[0];
    return `<div class="tile sev-${l.tile}${l.lane === selected ? " selected" : ""}" id="tile-${i + 1}" data-lane="${esc(l.lane)}" data-tile="${l.tile}">
      <div class="id">${esc(l.lane)}</div><div class="ph">${esc(l.phase)} ${l.stuck ? "· STUCK?" : ""}</div>
      <div class="al">${top ? esc(top.code) : l.tile === "ok" ? "no alarm" : esc(l.tile)}</div></div>`;
  }).join("");
  for (const el of tiles.children) el.onclick = () => { selected = el.dataset.lane; draw(); };
}
function rank(sev) { return { critical: 3, major: 2, minor: 1 }[sev] || 0; }

function drawLane(s) {
  const lane = s.lanes.find((l) => l.lane === selected) || s.lanes[0];
  $("lane").hidden = !lane;
  if (!lane) return;
  selected = lane.lane;
  text("lane-id", lane.lane); text("lane-phase", lane.phase);
  text("lane-since", lane.phase_for_s === null ? "" : `for ${dur(lane.phase_for_s)}`);
  $("lane-stuck").hidden = !lane.stuck;
  text("barrier-commanded", lane.barrier.commanded); text("barrier-reported", lane.barrier.reported);
  text("barrier-error", lane.barrier.error || "");
  $("sensors").innerHTML = Object.entries(lane.sensors).map(([k, v]) =>
    `<li class="${v ? "on" : "off"}" data-sensor="${k}">${k.replace("_", " ")} ${v === null ? "(no reading)" : v ? "occupied" : "clear"}</li>`).join("");
  text("vehicle-class", lane.vehicle_class);
  $("display").textContent = lane.display.join("\n");
  text("camera-fps", lane.camera_fps);
  $("checks").innerHTML = lane.checks.map((c) => `<li class="${c.ok ? "ok" : "bad"}">${esc(c.name)}: ${esc(c.detail)}</li>`).join("");
  text("backlog", lane.uplink.backlog); text("oldest", dur(lane.uplink.oldest_unsent_s));
  const stalled = lane.alarms.some((a) => a.code === "uplink_stalled");
  text("bo-link", stalled ? "STALLED" : lane.links.uplink === false ? "down" : "ok");
  $("counters").innerHTML = Object.entries(lane.counters).map(([k, v]) => `<tr><td>${esc(k.replaceAll("_", " "))}</td><td>${v}</td></tr>`).join("");
  const acq = lane.acquirer || { state: "idle" };
  $("acquirer").className = `acq ${acq.state}`; text("acquirer", acq.state);
  const pct = (v) => (v === undefined || v === null ? "–" : `${(v * 100).toFixed(0)} %`);
  $("acquirer-figures").innerHTML = `<tr><td>availability</td><td>${pct(acq.availability)}</td></tr>
    <tr><td>error rate</td><td>${pct(acq.error_rate)}</td></tr><tr><td>decline rate</td><td>${pct(acq.decline_rate)}</td></tr>
    <tr><td>latency p50 / p95</td><td>${acq.p50_ms ?? "–"} / ${acq.p95_ms ?? "–"} ms</td></tr><tr><td>payments judged</td><td>${acq.samples ?? 0}</td></tr>`;
  const refunds = Object.entries(lane.refunds);
  $("refunds-box").hidden = !refunds.length;
  $("refunds").innerHTML = refunds.map(([k, v]) => `<tr data-refunds="${esc(k)}"><td>${esc(k)}</td><td>${v}</td></tr>`).join("");
  $("garbage-box").hidden = !lane.garbage.length;
  $("garbage").innerHTML = lane.garbage.map((g) => `<li>${esc(g)}</li>`).join("");
  const may = s.user && s.user.role === "operator";
  for (const b of document.querySelectorAll(".actions button")) {
    b.disabled = !may; b.onclick = () => act(lane.lane, b.dataset.op);
  }
  $("action-hint").hidden = may;
}

function drawAlarms(s) {
  const sev = $("f-severity"), laneSel = $("f-lane");
  if (sev.options.length === 1) for (const v of s.severities) sev.add(new Option(v, v));
  const lanes = s.lanes.map((l) => l.lane);
  if (laneSel.options.length - 1 !== lanes.length) {
    const keep = laneSel.value; laneSel.length = 1;
    for (const l of lanes) laneSel.add(new Option(l, l));
    laneSel.value = keep;
  }
  const show = $("f-state").value;
  const rows = s.alarms.filter((a) => (!sev.value || a.severity === sev.value) && (!laneSel.value || a.lane === laneSel.value)
    && (show === "all" || (a.cleared === null && (show === "active" || !a.acked_by))));
  const may = s.user && s.user.role === "operator";
  $("alarm-body").innerHTML = rows.map((a) => `<tr class="${a.severity}${a.cleared ? " cleared" : ""}" data-lane="${esc(a.lane)}" data-alarm="${esc(a.code)}">
    <td>${esc(a.lane)}</td><td>${a.severity}</td><td>${esc(a.code)}</td><td>${esc(a.message)}</td><td>${time(a.since)}</td>
    <td>${a.cleared ? time(a.cleared) : "active"}</td><td class="acked">${a.acked_by ? `${esc(a.acked_by)} ${time(a.acked)}` : ""}</td>
    <td>${!a.cleared && !a.acked_by ? `<button class="ack" ${may ? "" : "disabled"}>Ack</button>` : ""}</td></tr>`).join("");
  for (const b of document.querySelectorAll("#alarm-body button.ack")) {
    const row = b.closest("tr");
    b.onclick = () => act(row.dataset.lane, "ack_alarm", row.dataset.alarm);
  }
}

function drawTrends(s) {
  const w = s.trends.windows;
  const label = { "5m": "last 5 min", "15m": "last 15 min", "60m": "last 60 min", start: "since start" };
  $("trend-body").innerHTML = Object.entries(w).map(([k, v]) =>
    `<tr data-window="${k}"><td>${label[k] || k}</td><td>${v.p50 ?? "–"}</td><td>${v.p95 ?? "–"}</td><td>${v.p99 ?? "–"}</td><td>${v.vph}</td></tr>`).join("");
  const pts = s.trends.points.slice().reverse();
  const maxL = Math.max(50, ...pts.map((p) => p.p95 || 0)), maxV = Math.max(100, ...pts.map((p) => p.vph));
  const x = (i) => (i / Math.max(1, pts.length - 1)) * 600;
  const line = (f, max) => pts.map((p, i) => (f(p) === null ? null : `${x(i).toFixed(1)},${(155 - (f(p) / max) * 145).toFixed(1)}`)).filter(Boolean).join(" ");
  $("trend-plot").innerHTML = `<polyline fill="none" stroke="#54a0ff" stroke-width="2" points="${line((p) => p.vph, maxV)}"/>
    <polyline fill="none" stroke="#ff9f43" stroke-width="2" points="${line((p) => p.p95, maxL)}"/>
    <text x="4" y="12" fill="#ff9f43" font-size="11">${maxL.toFixed(0)} ms</text><text x="530" y="12" fill="#54a0ff" font-size="11">${maxV.toFixed(0)} veh/h</text>`;
}

function draw() {
  const s = state;
  if (!s) return;
  $("conn").className = s.broker ? "up" : "down"; text("conn", s.broker ? "broker connected" : "broker NOT connected");
  $("sim-clock").hidden = s.sim_time_s === null; text("clock-sim", s.sim_time_s === null ? "" : dur(s.sim_time_s));
  $("login").hidden = !!s.user; $("whoami").hidden = !s.user;
  if (s.user) { text("who", s.user.name); text("role", s.user.role); }
  drawTiles(s); drawLane(s); drawAlarms(s); drawTrends(s);
}

function tickClock() {
  const now = new Date();
  text("clock-utc", now.toISOString().slice(11, 19));
  text("clock-local", now.toLocaleTimeString());
}

async function poll() {
  try {
    const resp = await fetch(api("state"), { credentials: "same-origin" });
    state = await resp.json();
    draw();
  } catch (err) {
    $("conn").className = "down"; text("conn", "console not reachable");
  }
  setTimeout(poll, 1000);
}

$("login").onsubmit = async (e) => {
  e.preventDefault();
  try {
    await post("login", { user: $("login-user").value, password: $("login-password").value });
    $("login-password").value = "";
    const resp = await fetch(api("state")); state = await resp.json(); draw();
  } catch (err) { toast(`login refused: ${err.message}`, true); }
};
$("logout").onclick = async () => { await post("logout", {}); const r = await fetch(api("state")); state = await r.json(); draw(); };
for (const id of ["f-severity", "f-lane", "f-state"]) $(id).onchange = draw;
setInterval(tickClock, 1000); tickClock();
poll();
