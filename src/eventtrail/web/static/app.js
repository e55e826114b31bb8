// eventtrail's UI: recent requests, a request's waterfall, service health,
// the service map and the monitor (rate, errors and p95 over time), read from
// the JSON API of the same server. No framework:
// every view is built with DOM calls (never innerHTML with data).
"use strict";

const TOKEN_KEY = "eventtrail.token";
const state = { refreshSeconds: 2, timer: null, view: null, token: null, busy: false };

// ---------- helpers ----------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  if (value >= 1000) return `${(value / 1000).toFixed(2)} s`;
  return `${value.toFixed(value < 10 ? 1 : 0)} ms`;
}

function percent(rate) {
  return `${(rate * 100).toFixed(1)}%`;
}

function clock(timestamp) {
  return timestamp.replace("T", " ").replace("Z", "").slice(0, 23);
}

function setStatus(text, failed = false) {
  const line = document.getElementById("status-line");
  line.textContent = text;
  line.classList.toggle("failed", failed);
}

class ApiError extends Error {}

async function api(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== "" && value !== null && value !== undefined) query.set(key, value);
  }
  const url = query.toString() ? `${path}?${query}` : path;
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const response = await fetch(url, { headers });
  if (response.status === 401) {
    askForToken();
    throw new ApiError("this server requires an API token");
  }
  const body = await response.json();
  if (!response.ok) throw new ApiError(body.error || `HTTP ${response.status}`);
  return body;
}

function askForToken() {
  const dialog = document.getElementById("token-dialog");
  if (!dialog.open) dialog.showModal();
}

// ---------- requests ----------

const knownServices = new Set();

function rememberServices(names) {
  const before = knownServices.size;
  for (const name of names) knownServices.add(name);
  if (knownServices.size === before) return;
  document.getElementById("known-services").replaceChildren(
    ...[...knownServices].sort().map((name) => el("option", { value: name })),
  );
}

function requestFilters() {
  const form = document.getElementById("request-filters");
  return Object.fromEntries(new FormData(form).entries());
}

function requestRow(request) {
  return el(
    "tr",
    {
      class: "clickable",
      "data-testid": "request-row",
      "data-request-id": request.requestId,
      "data-status": request.status,
      onclick: () => { location.hash = `#/requests/${encodeURIComponent(request.requestId)}`; },
    },
    el("td", { class: "mono", text: clock(request.startedAt) }),
    el("td", { class: "mono" }, el("a", { href: `#/requests/${encodeURIComponent(request.requestId)}`, text: request.requestId })),
    el("td", { text: request.services.join(", ") }),
    el("td", { text: `${request.calls}${request.errors ? ` (${request.errors} failed)` : ""}` }),
    el("td", {}, el("span", { class: `badge ${request.status}`, "data-testid": "request-status", text: request.status })),
    el("td", { text: ms(request.durationMs) }),
  );
}

async function showRequests() {
  const filters = requestFilters();
  const data = await api("/api/requests", filters);
  document.getElementById("requests-body").replaceChildren(...data.requests.map(requestRow));
  rememberServices(data.requests.flatMap((request) => request.services));
  const note = data.requests.length
    ? `${data.requests.length} request${data.requests.length === 1 ? "" : "s"}, newest first`
    : "no requests match";
  document.getElementById("requests-note").textContent = data.cursor
    ? `${note} (more match: narrow the filters or show more)`
    : note;
}

// ---------- one request: the waterfall ----------

function showDetail(title, value) {
  document.getElementById("event-detail-title").textContent = title;
  document.getElementById("event-detail-body").textContent = JSON.stringify(value, null, 2);
  document.getElementById("event-detail").hidden = false;
}

function ticks(total) {
  const step = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000]
    .find((candidate) => total / candidate <= 6) || total / 5;
  const marks = [];
  for (let at = 0; at <= total + 1e-9; at += step) marks.push(at);
  return marks;
}

async function showFlow(requestId) {
  const flow = await api(`/api/flows/${encodeURIComponent(requestId)}`);
  const summary = flow.summary;
  const eventsById = new Map(flow.events.map((event) => [event.id, event]));
  const total = Math.max(summary.durationMs, 1);
  document.getElementById("flow-title").textContent = `Request ${summary.requestId}`;
  document.getElementById("flow-summary").textContent =
    `${clock(summary.startedAt)} UTC · ${summary.calls} calls to ${summary.services.join(", ")} · ` +
    `${ms(summary.durationMs)} · ${summary.status}`;

  const axis = document.getElementById("waterfall-axis");
  axis.replaceChildren(...ticks(total).map((at) => el("span", { style: `left:${(at / total) * 100}%`, text: ms(at) })));

  const rows = flow.calls.map((call) => {
    const left = (call.offsetMs / total) * 100;
    const width = call.durationMs === null ? 0 : (call.durationMs / total) * 100;
    const result = call.error ? call.error : call.status === null ? "pending" : String(call.status);
    const events = call.eventIds.map((id) => eventsById.get(id));
    const bar = el("button", {
      type: "button",
      class: `wf-bar ${call.outcome}`,
      "data-testid": "waterfall-bar",
      "data-service": call.service,
      "data-outcome": call.outcome,
      title: `${call.service} ${result} in ${ms(call.durationMs)}`,
      style: `left:${left}%;width:${width}%`,
      onclick: () => showDetail(`${call.service}: ${call.method || ""} ${call.path || ""} → ${result}`, events),
    });
    const label = `${call.service} · ${call.method || ""} ${call.path || ""}`;
    return el(
      "div",
      { class: "wf-row" },
      el("div", { class: "wf-label", title: label, text: label }),
      el(
        "div",
        { class: "wf-track" },
        bar,
        el("span", {
          class: "wf-time",
          // Right of the bar, or left of it when the bar reaches the right edge.
          style: left + width > 80 ? `right:calc(${100 - left}% + 6px)` : `left:calc(${left + width}% + 6px)`,
          text: `${result} · ${ms(call.durationMs)}`,
        }),
      ),
    );
  });
  document.getElementById("waterfall-rows").replaceChildren(...rows);

  const start = Date.parse(summary.startedAt);
  const eventRows = flow.events.map((event) => {
    const data = event.data || {};
    // A call its client gave up on ("disconnected") is no failure of the service's.
    const abandoned = event.type === "MICROSERVICE_ERROR" && data.error === "disconnected";
    const failed =
      (event.type === "MICROSERVICE_ERROR" && !abandoned) || (typeof data.status === "number" && data.status >= 500);
    const details = Object.entries(data)
      .filter(([key]) => key !== "Name" && key !== "callId")
      .map(([key, value]) => `${key}=${typeof value === "object" ? JSON.stringify(value) : value}`)
      .join(" ");
    return el(
      "tr",
      { class: "clickable", "data-testid": "flow-event", onclick: () => showDetail(event.type, event) },
      el("td", { class: "mono", text: (Date.parse(event.timestamp) - start).toFixed(0) }),
      el("td", {}, el("span", { class: `badge ${failed ? "failed" : abandoned ? "abandoned" : "ok"}`, text: event.type })),
      el("td", { text: data.Name || event.source }),
      el("td", { class: "mono wrap", text: details }),
    );
  });
  document.getElementById("flow-events-body").replaceChildren(...eventRows);
  return summary.status === "pending";
}

// ---------- service health ----------

function healthWindow() {
  return document.querySelector("#health-filters [name=window]").value;
}

async function showHealth() {
  const report = await api("/api/health", { window: healthWindow() });
  const verdict = document.getElementById("health-verdict");
  verdict.textContent = report.verdict;
  verdict.classList.toggle("faulty", report.faulty.length > 0);
  const rows = report.services.map((service) => {
    const faulty = service.status === "faulty";
    const badge = faulty ? "faulty" : service.status === "ok" ? "ok" : "few";
    return el(
      "tr",
      { class: faulty ? "faulty" : "", "data-testid": "health-row", "data-service": service.service, "data-status": service.status },
      el("td", { text: service.service }),
      el("td", {}, el("span", { class: `badge ${badge}`, "data-testid": "health-status", text: service.status })),
      el("td", { text: service.calls.toLocaleString() }),
      el("td", { text: service.errors.toLocaleString() }),
      el("td", { text: percent(service.errorRate) }),
      el("td", { "data-testid": "health-abandoned", text: service.abandoned ? service.abandoned.toLocaleString() : "–" }),
      el("td", { text: ms(service.p50Ms) }),
      el("td", { text: ms(service.p95Ms) }),
      el("td", { text: ms(service.p99Ms) }),
      el("td", { text: service.baselineCalls ? ms(service.baselineP95Ms) : "–" }),
      el("td", { class: "wrap", text: service.reasons.join("; ") }),
    );
  });
  document.getElementById("health-body").replaceChildren(...rows);
  const t = report.thresholds;
  document.getElementById("health-note").textContent =
    `${clock(report.since)} to ${clock(report.until)} UTC. Faulty: error rate over ${percent(t.maxErrorRate)}, ` +
    `or p95 latency ${t.latencyFactor}× its baseline (the window before) and ${t.minLatencyIncreaseMs} ms above it; ` +
    `no verdict under ${t.minCalls} calls.`;
  rememberServices(report.services.map((service) => service.service));
}

// ---------- service map ----------

async function showMap() {
  const report = await api("/api/health", { window: healthWindow() });
  const map = document.getElementById("service-map");
  const faulty = new Set(report.faulty);
  const callers = [...new Set(report.edges.map((edge) => edge.source))];
  const services = report.services.map((service) => service.service);
  const width = map.clientWidth || 900;
  const height = Math.max(map.clientHeight || 480, 120 * Math.max(services.length, callers.length));
  map.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const nodeWidth = 180;
  const nodeHeight = 44;
  const place = (names, x) =>
    new Map(names.map((name, index) => [name, { x, y: ((index + 1) * height) / (names.length + 1) }]));
  const left = place(callers, 40);
  const right = place(services, width - nodeWidth - 40);

  const edges = report.edges.map((edge) => {
    const from = left.get(edge.source);
    const to = right.get(edge.service);
    const x1 = from.x + nodeWidth;
    const y1 = from.y;
    const x2 = to.x;
    const y2 = to.y;
    const label = `${edge.calls.toLocaleString()} calls · ${percent(edge.errorRate)} errors · p50 ${ms(edge.p50Ms)} · p95 ${ms(edge.p95Ms)}`;
    return svg(
      "g",
      { class: `edge${faulty.has(edge.service) ? " faulty" : ""}`, "data-testid": "map-edge", "data-source": edge.source, "data-service": edge.service },
      svg("line", { x1, y1, x2, y2 }),
      svg("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 8, "text-anchor": "middle", text: label }),
    );
  });
  const node = (name, position, isFaulty) =>
    svg(
      "g",
      { class: `node${isFaulty ? " faulty" : ""}`, "data-testid": "map-node", "data-service": name, "data-faulty": String(isFaulty) },
      svg("rect", { x: position.x, y: position.y - nodeHeight / 2, width: nodeWidth, height: nodeHeight, rx: 6 }),
      svg("text", { x: position.x + nodeWidth / 2, y: position.y + 5, "text-anchor": "middle", text: isFaulty ? `⚠ ${name}` : name }),
    );
  map.replaceChildren(
    ...edges,
    ...callers.map((name) => node(name, left.get(name), false)),
    ...services.map((name) => node(name, right.get(name), faulty.has(name))),
  );
  document.getElementById("map-note").textContent = services.length
    ? `Calls in the last ${healthWindow()} (${clock(report.since)} to ${clock(report.until)} UTC). ${report.verdict}`
    : "no calls in this window";
}

// ---------- monitor: rate, errors and p95 over time ----------

const DURATIONS = { m: 60000, h: 3600000, d: 86400000 };

function stepMillis(step) {
  const found = step.match(/^(\d+)([mhd])$/);
  return found ? Number(found[1]) * DURATIONS[found[2]] : 60000;
}

function rememberMonitorServices(names) {
  const select = document.querySelector("#monitor-filters [name=service]");
  const present = new Set([...select.options].map((option) => option.value));
  for (const name of [...names].sort()) {
    if (!present.has(name)) select.append(el("option", { value: name, text: name }));
  }
}

// One small chart: a polyline over the points, a marker where the service
// turned faulty, and one clickable dot per point.
function chart(title, points, value, format, faultySince, stepMs) {
  const width = 360;
  const height = 120;
  const pad = { left: 46, right: 8, top: 18, bottom: 18 };
  const values = points.map(value);
  const known = values.filter((v) => v !== null && Number.isFinite(v));
  const top = Math.max(...known, 0) || 1;
  const first = Date.parse(points[0].t);
  const last = Date.parse(points[points.length - 1].t) + stepMs;
  const x = (time) => pad.left + ((time - first) / Math.max(last - first, 1)) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);
  const line = points
    .map((point, index) => [point, values[index]])
    .filter(([, v]) => v !== null && Number.isFinite(v))
    .map(([point, v]) => `${x(Date.parse(point.t) + stepMs / 2).toFixed(1)},${y(v).toFixed(1)}`)
    .join(" ");
  const children = [
    svg("text", { x: pad.left, y: 12, class: "chart-title", text: title }),
    svg("text", { x: pad.left - 4, y: pad.top + 4, "text-anchor": "end", class: "chart-axis", text: format(top) }),
    svg("text", { x: pad.left - 4, y: height - pad.bottom, "text-anchor": "end", class: "chart-axis", text: format(0) }),
    svg("line", { x1: pad.left, y1: height - pad.bottom, x2: width - pad.right, y2: height - pad.bottom, class: "chart-base" }),
    svg("polyline", { points: line, class: "chart-line" }),
  ];
  if (faultySince) {
    const at = x(Date.parse(faultySince));
    children.push(
      svg(
        "g",
        { "data-testid": "faulty-marker", "data-since": faultySince, class: "faulty-marker" },
        svg("line", { x1: at, y1: pad.top, x2: at, y2: height - pad.bottom }),
        // Anchored so that the label stays inside the chart near either edge.
        svg("text", {
          x: at,
          y: height - 4,
          "text-anchor": at > width - 60 ? "end" : at < pad.left + 60 ? "start" : "middle",
          text: `faulty since ${clock(faultySince).slice(11, 16)}`,
        }),
      ),
    );
  }
  for (const [index, point] of points.entries()) {
    const v = values[index];
    if (v === null || !Number.isFinite(v) || point.calls === 0) continue;
    children.push(
      svg(
        "circle",
        {
          cx: x(Date.parse(point.t) + stepMs / 2),
          cy: y(v),
          r: 3,
          class: `chart-point${point.errors ? " has-errors" : ""}`,
          "data-testid": "monitor-point",
          "data-t": point.t,
          "data-calls": String(point.calls),
        },
        svg("title", { text: `${clock(point.t)} · ${format(v)}${point.abandoned ? ` · ${point.abandoned} abandoned` : ""}` }),
      ),
    );
  }
  return svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title }, ...children);
}

async function showBucket(service, operation, t, stepMs) {
  const since = new Date(Date.parse(t)).toISOString();
  const until = new Date(Date.parse(t) + stepMs).toISOString();
  const data = await api("/api/requests", { service, since, until, limit: 100 });
  const box = document.getElementById("bucket-requests");
  box.hidden = false;
  box.setAttribute("data-service", service);
  box.setAttribute("data-t", t);
  document.getElementById("bucket-title").textContent =
    `${service}${operation ? ` · ${operation}` : ""}: requests started ${clock(t).slice(0, 16)} to ${clock(until).slice(11, 16)} UTC`;
  document.getElementById("bucket-body").replaceChildren(
    ...data.requests.map((request) => {
      const row = requestRow(request);
      row.setAttribute("data-testid", "bucket-request-row");
      return row;
    }),
  );
  document.getElementById("bucket-note").textContent = data.requests.length
    ? `${data.requests.length} request${data.requests.length === 1 ? "" : "s"}${data.cursor ? " (the newest 100)" : ""}`
    : "no request started in this bucket";
}

async function showMonitor() {
  const form = document.getElementById("monitor-filters");
  const window_ = form.querySelector("[name=window]").value;
  const service = form.querySelector("[name=service]").value;
  const params = { window: window_ };
  if (service) {
    params.service = service;
    params.perOperation = "true";
  }
  const [data, health] = await Promise.all([
    api("/api/series", params),
    api("/api/health", { window: window_ }),
  ]);
  const since = new Map(health.services.filter((s) => s.faultySince).map((s) => [s.service, s.faultySince]));
  rememberMonitorServices(health.services.map((s) => s.service));
  const stepMs = stepMillis(data.step);
  const perMinute = 60000 / stepMs;
  const cards = data.series.map((entry) => {
    const name = entry.operation ? `${entry.service} · ${entry.operation}` : entry.service;
    const faultySince = entry.operation ? null : since.get(entry.service) || null;
    const charts = [
      chart("rate (calls/min)", entry.points, (p) => p.calls * perMinute, (v) => v.toFixed(v < 10 ? 1 : 0), faultySince, stepMs),
      chart("errors (%)", entry.points, (p) => (p.calls ? (100 * p.errors) / p.calls : null), (v) => `${v.toFixed(0)}%`, faultySince, stepMs),
      chart("p95 latency", entry.points, (p) => p.p95Ms, (v) => ms(v), faultySince, stepMs),
    ];
    for (const figure of charts) {
      figure.addEventListener("click", (event) => {
        const point = event.target.closest("[data-testid=monitor-point]");
        if (point) showBucket(entry.service, entry.operation, point.getAttribute("data-t"), stepMs).catch((error) => setStatus(error.message, true));
      });
    }
    return el(
      "div",
      {
        class: `monitor-card${faultySince ? " faulty" : ""}`,
        "data-testid": "monitor-card",
        "data-service": entry.service,
        "data-operation": entry.operation || "",
        "data-faulty-since": faultySince || "",
      },
      el("h3", { text: faultySince ? `⚠ ${name}` : name }),
      el("div", { class: "monitor-charts" }, ...charts),
    );
  });
  document.getElementById("monitor-charts").replaceChildren(...cards);
  document.getElementById("monitor-note").textContent = data.series.length
    ? `${clock(data.since).slice(0, 16)} to ${clock(data.until).slice(0, 16)} UTC, one point per ${data.step}` +
      `${service ? `, per operation of ${service}` : ""}. Click a point to list that bucket's requests.`
    : "no calls in this window";
}

// ---------- routing and refresh ----------

// The address bar is input like any other: a malformed escape in it is an
// error to show, never an exception that leaves the UI stuck.
function decodeComponent(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return null;
  }
}

function route() {
  const hash = location.hash || "#/requests";
  const flow = hash.match(/^#\/requests\/(.+)$/);
  if (flow) {
    const requestId = decodeComponent(flow[1]);
    if (requestId === null) return { name: "flow", requestId: null, raw: flow[1] };
    return { name: "flow", requestId };
  }
  if (hash.startsWith("#/health")) return { name: "health" };
  if (hash.startsWith("#/map")) return { name: "map" };
  if (hash.startsWith("#/monitor")) return { name: "monitor" };
  return { name: "requests" };
}

async function render() {
  if (state.busy) return;
  state.busy = true;
  try {
    const current = route();
    for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${current.name}`;
    for (const link of document.querySelectorAll("nav a")) {
      const target = link.getAttribute("href").slice(2);
      link.classList.toggle("active", current.name === target || (current.name === "flow" && target === "requests"));
    }
    if (current.name === "flow" && current.requestId === null) {
      throw new ApiError(`the address holds a malformed request id (${current.raw}): pick a request from the list`);
    }
    let keepRefreshing = true;
    if (current.name === "requests") await showRequests();
    else if (current.name === "flow") keepRefreshing = await showFlow(current.requestId);
    else if (current.name === "health") await showHealth();
    else if (current.name === "monitor") await showMonitor();
    else await showMap();
    state.view = { ...current, keepRefreshing };
    setStatus(`updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    state.busy = false;
  }
}

function schedule() {
  clearInterval(state.timer);
  state.timer = setInterval(() => {
    const enabled = document.getElementById("auto-refresh").checked;
    if (enabled && !document.hidden && state.view && state.view.keepRefreshing) render();
  }, state.refreshSeconds * 1000);
}

function readTokenFromHash() {
  const found = location.hash.match(/[#&]token=([^&]+)/);
  if (found) {
    const token = decodeComponent(found[1]);
    if (token !== null) sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search + "#/requests");
  }
  state.token = sessionStorage.getItem(TOKEN_KEY);
}

async function connect() {
  try {
    const settings = await api("/api/ui-settings");
    state.refreshSeconds = settings.refreshSeconds;
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  await render();
  schedule();
}

function start() {
  readTokenFromHash();
  document.getElementById("token-form").addEventListener("submit", () => {
    state.token = document.getElementById("token-input").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    connect();
  });
  document.getElementById("close-detail").addEventListener("click", () => {
    document.getElementById("event-detail").hidden = true;
  });
  for (const form of document.querySelectorAll(".filters")) {
    form.addEventListener("change", render);
    form.addEventListener("submit", (event) => { event.preventDefault(); render(); });
  }
  connect();
}

window.addEventListener("hashchange", () => {
  document.getElementById("event-detail").hidden = true;
  render();
});
document.addEventListener("DOMContentLoaded", start, { once: true });
