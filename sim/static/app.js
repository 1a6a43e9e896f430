// The lane simulator's dashboard: state over Server-Sent Events, camera frames by polling.
// Plain JS, no build step, no external resources. Everything from the server is put into the
// page with textContent, never innerHTML (reasons and alarm texts come from scanned codes).
"use strict";

const $ = (id) => document.getElementById(id);
let state = null;
let selected = 1; // 1-based lane shown in the camera and event panels
let catalogue = [];
const FRAME_INTERVAL_MS = 250;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k === "onclick") node.addEventListener("click", v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function clock(t) {
  const s = Math.floor(t);
  const pad = (n) => String(n).padStart(2, "0");
  return `${pad(Math.floor(s / 3600))}:${pad(Math.floor(s / 60) % 60)}:${pad(s % 60)}`;
}

function money(minor, currency) {
  if (minor === null || minor === undefined) return "–";
  return `${Math.floor(minor / 100)}.${String(minor % 100).padStart(2, "0")} ${currency || ""}`;
}

function pct(p) {
  if (!p || p.p50 === null) return "–";
  return `p50 ${p.p50} · p95 ${p.p95} · p99 ${p.p99} ms`;
}

function fmt(v, suffix = "") {
  return v === null || v === undefined ? "–" : `${v}${suffix}`;
}

// --- rendering -------------------------------------------------------------------------------

function render(s) {
  state = s;
  if (selected > s.lanes.length) selected = 1;
  $("scenario").textContent = s.scenario ? `scenario: ${s.scenario}` : "";
  $("mode").textContent = s.mode;
  $("clock").textContent = clock(s.t);
  $("speed").textContent = `${s.speed}×`;
  $("arrivals").textContent = s.arrivals;
  $("vph-recent").textContent = s.plaza.throughput.recent_vph;
  $("vph-total").textContent = s.plaza.throughput.total_vph;
  const lat = s.plaza.recent_latency_ms;
  $("lat-head").textContent = lat.p50 === null ? "–" : `${lat.p50} / ${lat.p99} ms`;
  renderRoad(s);
  renderTabs(s);
  renderLanes(s);
  renderFaults(s);
  renderUplink(s);
  renderHistogram(s.plaza);
  renderAlarms(s);
  renderTransactions(s);
  renderEvents(s);
}

// A closed road (lane sim --road N): the plazas along a line, the gaps drawn to scale.
function renderRoad(s) {
  const panel = $("road-panel");
  panel.hidden = !s.road;
  if (!s.road) return;
  const r = s.road;
  $("road-summary").textContent = `${r.length_km} km · ${r.on_road} on the road · `
    + `${r.legs.entry_queue} at entries · ${r.legs.exit_queue} at exits · ${r.legs.done} done`;
  const parts = [];
  r.plazas.forEach((p, i) => {
    if (i > 0) {
      const gap = p.km - r.plazas[i - 1].km;
      parts.push(el("div", { class: "segment", style: `flex-grow:${gap}` },
        el("span", {}, `${gap.toFixed(1)} km`)));
    }
    parts.push(el("div", { class: "plaza", "data-plaza": p.plaza },
      el("div", { class: "top" }, el("strong", {}, p.plaza), el("span", { class: "muted small" }, `km ${p.km}`)),
      roadLane(s, p.entry, "entry"), roadLane(s, p.exit, "exit"),
      el("div", { class: "small", id: `heading-${p.plaza}` }, `${p.heading_here} heading here`)));
  });
  $("road").replaceChildren(...parts);
}

function roadLane(s, index, role) {
  const l = s.lanes[index - 1];
  const shown = (l.display || [])[0] || "";
  return el("div", { class: `road-lane${index === selected ? " selected" : ""}`, "data-lane": index,
    onclick: () => select(index) },
    el("span", {}, `${role} ${l.lane.split("/")[1]}`),
    el("span", { class: `phase ${l.phase}`, "data-testid": "road-phase" }, l.phase),
    el("span", { class: "muted" }, `queue ${l.queue} · ${l.passed} passed`),
    el("span", { class: "shown" }, shown));
}

function renderTabs(s) {
  const tabs = $("lane-tabs");
  if (tabs.childElementCount !== s.lanes.length) {
    tabs.replaceChildren(...s.lanes.map((l) => el("button", {
      "data-lane": l.index, onclick: () => select(l.index), textContent: l.lane,
    })));
  }
  for (const b of tabs.children) b.classList.toggle("selected", Number(b.dataset.lane) === selected);
  $("camera-lane").textContent = s.lanes[selected - 1].lane;
}

function select(index) {
  selected = index;
  if (state) render(state);
}

function renderLanes(s) {
  $("lanes").replaceChildren(...s.lanes.map((l) => {
    const alarms = Object.keys(l.alarms);
    return el("div", { class: `lane${l.index === selected ? " selected" : ""}`, "data-lane": l.index,
      onclick: () => select(l.index) },
      el("div", { class: "top" },
        el("strong", {}, l.lane),
        el("span", { class: `phase ${l.phase}`, id: `phase-${l.index}`, "data-testid": "phase" }, l.phase)),
      el("dl", { class: "kv" },
        el("dt", {}, "barrier"), el("dd", { id: `barrier-${l.index}` }, l.barrier + (l.device_fault ? ` (device: ${l.device_fault})` : "")),
        el("dt", {}, "queue"), el("dd", {}, `${l.queue} waiting`),
        el("dt", {}, "served"), el("dd", {}, `${l.passed} passed of ${l.served}`),
        el("dt", {}, "veh/h"), el("dd", {}, `${l.throughput.recent_vph} (5 min)`),
        el("dt", {}, "camera"), el("dd", {}, l.camera.blackout ? "BLACKOUT" : `${l.camera.fps} fps`),
        ...(l.process ? [el("dt", {}, "ops"), el("dd", { "data-testid": "ops" }, opsLink(l.process.ops))] : [])),
      el("div", { class: "display", id: `display-${l.index}` }, (l.display || []).join("\n")),
      alarms.length ? el("div", { class: "alarm-count" }, `⚠ ${alarms.join(", ")}`) : "");
  }));
}

// A booth's own /metrics, /healthz, /readyz (lane sim --lane-processes); "–" while it is down.
function opsLink(url) {
  if (!url) return "–";
  return el("a", { href: `${url}/metrics`, target: "_blank", rel: "noopener", textContent: url.replace("http://", "") });
}

function faultActive(s, name, laneId) {
  return s.faults.some((f) => f.name === name && (f.lane === null || laneId === undefined || f.lane === laneId));
}

const GROUPS = [
  ["Back office", ["backoffice_offline", "uplink_down"]],
  ["Acquirer", ["acquirer_outage", "acquirer_slow", "acquirer_declines", "acquirer_slow_body", "acquirer_cut_body"]],
  ["Barrier", ["barrier_offline", "barrier_stuck", "barrier_stuck_open", "barrier_no_ack", "barrier_slow_ack", "barrier_fault"]],
  ["Camera", ["camera_blackout"]],
  ["Attack", ["code_burst"]],
];

function renderFaults(s) {
  const box = $("fault-buttons");
  if (!box.childElementCount && catalogue.length) {
    const byName = Object.fromEntries(catalogue.map((f) => [f.name, f]));
    for (const [group, names] of GROUPS) {
      box.append(el("div", { class: "group" }, group));
      for (const name of names) {
        const f = byName[name];
        if (!f) continue;
        box.append(el("button", { "data-fault": f.name, title: f.description, textContent: f.label,
          onclick: () => toggleFault(f) }));
      }
    }
  }
  const laneId = s.lanes[selected - 1].lane;
  for (const b of box.querySelectorAll("button")) {
    const f = catalogue.find((c) => c.name === b.dataset.fault);
    const active = f && !f.one_shot && faultActive(s, f.name, f.scope === "lane" ? laneId : undefined);
    b.classList.toggle("active", Boolean(active));
    b.setAttribute("aria-pressed", active ? "true" : "false");
  }
}

async function toggleFault(f) {
  const toast = $("toast");
  const all = document.querySelector('input[name="target"]:checked').value === "all";
  const laneId = state ? state.lanes[selected - 1].lane : undefined;
  const on = f.one_shot || !(state && faultActive(state, f.name, f.scope === "lane" ? laneId : undefined));
  const body = { fault: f.name, on, lane: f.scope === "lane" && !all ? selected : null };
  try {
    const resp = await fetch("/api/faults", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    toast.className = "toast";
    toast.textContent = data.done.join("; ");
  } catch (err) {
    toast.className = "toast error";
    toast.textContent = `not applied: ${err.message}`;
  }
}

function renderUplink(s) {
  const bo = s.backoffice;
  $("backoffice").textContent = !bo.online ? "CUT OFF" : bo.connected ? "online" : "connecting";
  $("backoffice").className = bo.online && bo.connected ? "up" : "down";
  $("backoffice-detail").textContent = `${bo.records} records stored in ${bo.batches} batches, ${bo.duplicates} resends collapsed`;
  $("uplink-body").replaceChildren(...s.lanes.map((l) => {
    const u = l.uplink || {};
    // "up" is the MQTT link only: records that get no acknowledgement say more than it.
    const stalled = "uplink_stalled" in (l.alarms || {});
    const unacked = u.backlog > 0 && (u.last_ack_age_s === null || u.last_ack_age_s > 5);
    const link = !u.link_up ? "down" : stalled ? "STALLED" : unacked ? "no acks" : "up";
    return el("tr", { "data-lane": l.index },
      el("td", {}, l.lane),
      el("td", { class: link === "up" ? "up" : "down", id: `link-${l.index}` }, link),
      el("td", { class: "backlog", id: `backlog-${l.index}` }, fmt(u.backlog)),
      el("td", {}, fmt(u.backlog_max)),
      el("td", {}, fmt(u.oldest_age_s, " s")),
      el("td", {}, u.last_ack_age_s === null || u.last_ack_age_s === undefined ? "–" : `${u.last_ack_age_s} s ago`),
      el("td", {}, `${l.records_written} / ${l.records_ingested}`));
  }));
  const a = s.acquirer;
  if (a) {
    const parts = [];
    if (a.outages && a.outages.length) parts.push(`OUTAGE (${a.outages[0].mode})`);
    if (a.latency_median_ms) parts.push(`latency median ${a.latency_median_ms} / p99 ${a.latency_p99_ms} ms`);
    else if (a.latency_ms) parts.push(`latency ${a.latency_ms} ms`);
    if (a.decline_rate) parts.push(`declines ${Math.round(a.decline_rate * 100)}%`);
    if (a.error_rate) parts.push(`errors ${Math.round(a.error_rate * 100)}%`);
    if (a.slow_body_rate) parts.push(`answers stall ${Math.round(a.slow_body_rate * 100)}% (a byte every ${a.slow_body_ms} ms)`);
    if (a.cut_body_rate) parts.push(`answers cut ${Math.round(a.cut_body_rate * 100)}%`);
    $("acquirer").textContent = parts.length ? parts.join(", ") : "healthy, instant";
  }
}

function renderHistogram(plaza) {
  const bins = plaza.histogram;
  const max = Math.max(1, ...bins.map((b) => b.count));
  $("histogram").replaceChildren(...bins.map((b) => el("div", { class: "bar", title: `${b.label} ms: ${b.count}` },
    el("span", { class: "count" }, b.count || ""),
    el("div", { class: "fill", style: `height:${(100 * b.count) / max}%` }),
    el("span", { class: "label" }, b.label))));
  $("lat-all").textContent = pct(plaza.latency_ms);
  $("lat-token").textContent = pct(plaza.token_latency_ms);
}

function renderAlarms(s) {
  const active = [];
  for (const l of s.lanes) for (const [code, message] of Object.entries(l.alarms)) active.push([l.lane, code, message]);
  $("alarms").replaceChildren(...(active.length
    ? active.map(([lane, code, message]) => el("li", { "data-alarm": code }, `${lane}  ${code}: ${message}`))
    : [el("li", { class: "none" }, "no active alarm")]));
  const log = s.lanes.flatMap((l) => l.alarm_log.map((a) => ({ ...a, lane: l.lane })))
    .sort((a, b) => b.t - a.t).slice(0, 20);
  $("alarm-log").replaceChildren(...log.map((a) => el("li", {},
    el("span", { class: "t" }, clock(a.t)), `${a.lane} ${a.code} ${a.active ? "raised" : "cleared"}`)));
}

function renderTransactions(s) {
  const rows = s.lanes.flatMap((l) => l.transactions).sort((a, b) => b.t - a.t || b.seq - a.seq).slice(0, 20);
  $("tx-body").replaceChildren(...rows.map((tx) => el("tr", { "data-record": tx.record_id },
    el("td", {}, clock(tx.t)),
    el("td", {}, tx.lane),
    el("td", {}, tx.kind),
    el("td", {}, tx.vehicle_class),
    el("td", {}, money(tx.amount_minor, tx.currency) + (tx.refund_text ? ` (${tx.refund_text})` : "")),
    el("td", {}, tx.method + (tx.offline ? " (offline)" : "")),
    el("td", { class: tx.result }, tx.result + (tx.flags.length && tx.result === "declined" ? `: ${tx.flags[tx.flags.length - 1]}` : "")),
    el("td", {}, fmt(tx.auth_ms)),
    el("td", {}, tx.open_ms === null || tx.open_ms === undefined ? "–" : tx.open_ms.toFixed(1)))));
}

function renderEvents(s) {
  const lane = s.lanes[selected - 1];
  $("events").replaceChildren(...lane.events.map((e) => {
    const { t, name, ...rest } = e;
    const detail = Object.entries(rest).filter(([k]) => k !== "vehicle_id" && k !== "record_id")
      .map(([k, v]) => `${k}=${v}`).join(" ");
    return el("li", {}, el("span", { class: "t" }, clock(t)), `${name} ${detail}`);
  }));
}

// --- camera ----------------------------------------------------------------------------------

let lastUrl = null;

async function pollFrame() {
  try {
    if (!document.hidden && state) {
      const resp = await fetch(`/api/lanes/${selected}/frame.jpg`, { cache: "no-store" });
      if (resp.status === 200) {
        const size = (resp.headers.get("X-Frame-Size") || "1280x720").split("x").map(Number);
        const polygons = JSON.parse(resp.headers.get("X-Polygons") || "[]");
        const blob = await resp.blob();
        const url = URL.createObjectURL(blob);
        const img = $("frame");
        img.onload = () => { if (lastUrl && lastUrl !== url) URL.revokeObjectURL(lastUrl); lastUrl = url; };
        img.src = url;
        const svg = $("overlay");
        svg.setAttribute("viewBox", `0 0 ${size[0]} ${size[1]}`);
        svg.replaceChildren(...polygons.map((poly) => {
          const p = document.createElementNS("http://www.w3.org/2000/svg", "polygon");
          p.setAttribute("points", poly.map(([x, y]) => `${x},${y}`).join(" "));
          return p;
        }));
        $("no-frame").style.display = "none";
        $("frame-info").textContent = `frame #${resp.headers.get("X-Frame-Id")}` + (polygons.length ? ", code read" : "");
      }
    }
  } catch (err) {
    $("frame-info").textContent = `frame: ${err.message}`;
  }
  setTimeout(pollFrame, FRAME_INTERVAL_MS);
}

// --- wiring ----------------------------------------------------------------------------------

async function loadCatalogue() {
  try {
    const resp = await fetch("/api/faults");
    catalogue = (await resp.json()).catalogue;
    if (state) render(state);
  } catch (err) {
    setTimeout(loadCatalogue, 1000);
  }
}

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => { $("conn").textContent = "live"; $("conn").className = "conn up"; });
  source.addEventListener("error", () => { $("conn").textContent = "reconnecting…"; $("conn").className = "conn down"; });
  source.addEventListener("state", (ev) => render(JSON.parse(ev.data)));
}

loadCatalogue();
connect();
pollFrame();
