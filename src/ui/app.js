// The dashboard: a page over the status API (/_jobhost/). Everything it shows comes from
// the API as JSON and is put on the page as text (never as markup), so guest output and
// names cannot run script; the Content-Security-Policy allows this file and nothing inline.
"use strict";

const API = "/_jobhost/";
const TOKEN = "jobhost.token";
const REFRESH_MS = 3000;
const STATES = ["queued", "scheduled", "running", "succeeded", "failed", "dead", "skipped", "cancelled"];
const TRIGGERS = ["http", "timer", "file", "manual", "queue", "chain"];

let refreshPaused = false;
// What the current view redraws on each refresh (set by the view).
let refreshView = null;

// An element with attributes and children; strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

class LoginNeeded extends Error {}

// Calls the API: JSON back, or an Error with the API's message.
async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(API + path, { ...options, headers, credentials: "omit" });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
  if (response.status === 401) throw new LoginNeeded(body && body.error);
  if (!response.ok) throw new Error((body && body.error) || response.status + " " + response.statusText);
  return body;
}

function showError(message) {
  const banner = document.getElementById("error");
  banner.textContent = message || "";
  banner.hidden = !message;
}

function time(text) {
  return text ? text.replace("T", " ").replace(/\.\d+Z$/, "Z") : "";
}

function stateCell(state) {
  return el("span", { class: "state state-" + state, "data-state": state }, state);
}

function query(params) {
  const pairs = Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined);
  return pairs.map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v)).join("&");
}

// The route in the address's hash: "#/invocations?state=dead" -> ["invocations", {state: "dead"}].
function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, search] = hash.split("?");
  const params = {};
  for (const [k, v] of new URLSearchParams(search || "")) params[k] = v;
  return [path.split("/").filter(Boolean), params];
}

function mount(...children) {
  const main = document.getElementById("main");
  main.replaceChildren(...children);
}

async function render() {
  refreshView = null;
  const [segments, params] = route();
  const page = segments[0] || "overview";
  for (const link of document.querySelectorAll("header nav a")) {
    link.classList.toggle("current", link.id === "nav-" + (page === "invocation" ? "invocations" : page));
  }
  try {
    if (page === "functions") await functionsView();
    else if (page === "invocations") await invocationsView(params);
    else if (page === "invocation" && segments[1]) await invocationView(decodeURIComponent(segments[1]));
    else await overviewView();
    showError("");
  } catch (e) {
    failed(e);
  }
}

function failed(e) {
  if (e instanceof LoginNeeded) {
    loginView();
  } else {
    showError(e.message);
  }
}

async function refresh() {
  // Each tick is counted, paused or not, so that a test can wait for ticks to pass.
  document.body.dataset.ticks = String(Number(document.body.dataset.ticks || 0) + 1);
  if (refreshPaused || !refreshView || document.hidden) return;
  try {
    await refreshView();
    showError("");
  } catch (e) {
    failed(e);
  }
}

function loginView() {
  refreshView = null;
  const refused = sessionStorage.getItem(TOKEN) !== null;
  sessionStorage.removeItem(TOKEN);
  const input = el("input", { id: "token", type: "password", autocomplete: "current-password", required: true });
  const form = el("form", { id: "login", class: "login" },
    el("h1", {}, "Sign in"),
    el("p", { class: "muted" }, "This host asks for its admin token (host.admin_token in runtime.toml). It is kept in this tab's session storage until the tab closes."),
    refused ? el("p", { id: "login-refused", class: "problem" }, "The host refused that token.") : null,
    el("label", {}, "Admin token ", input),
    el("button", { type: "submit", class: "primary" }, "Sign in"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN, input.value.trim());
    render();
  });
  mount(form);
  showError("");
  input.focus();
}

// Overview: counts by state, the last hour as a chart, the hosts of a cluster.
async function overviewView() {
  const counts = el("div", { class: "cards", id: "counts" });
  const chart = el("div", { id: "chart-box" });
  const hosts = el("div", { id: "hosts-box" });
  mount(el("h1", {}, "Overview"), counts,
    el("h2", {}, "Ended per minute, last hour"),
    el("p", { class: "legend" }, el("span", { class: "ok" }, "succeeded"), el("span", { class: "bad" }, "failed or dead")),
    chart, hosts);
  const draw = async () => {
    const [stats, cluster] = await Promise.all([api("stats?minutes=60"), api("hosts")]);
    const card = (id, label, n, href) =>
      el("a", { class: "card", id, href }, el("span", { class: "n" }, n), el("span", { class: "label" }, label));
    counts.replaceChildren(
      card("count-waiting", "queue depth", stats.waiting, "#/invocations?state=queued"),
      ...STATES.map((s) => card("count-" + s, s, stats.states[s] || 0, "#/invocations?" + query({ state: s }))));
    chart.replaceChildren(drawChart(stats.minutes));
    hosts.replaceChildren(...(cluster.length > 1 ? [
      el("h2", {}, "Hosts"),
      el("table", { id: "hosts" },
        el("thead", {}, el("tr", {}, el("th", {}, "host"), el("th", {}, "alive"), el("th", {}, "last heartbeat"), el("th", {}, "running"))),
        el("tbody", {}, cluster.map((h) => el("tr", {},
          el("td", {}, h.id), el("td", {}, h.alive ? "yes" : "no"), el("td", {}, time(h.last_heartbeat)), el("td", { class: "num" }, h.running))))),
    ] : []));
  };
  await draw();
  refreshView = draw;
}

// Stacked bars, one a minute: succeeded below, failed above.
function drawChart(minutes) {
  const width = 720, height = 160, left = 34, bottom = 18, top = 8;
  const top_value = Math.max(1, ...minutes.map((m) => m.succeeded + m.failed + m.other));
  const slot = (width - left - 4) / Math.max(1, minutes.length);
  const scale = (n) => (n / top_value) * (height - bottom - top);
  const chart = svg("svg", { class: "chart", id: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "invocations ended per minute" });
  chart.append(svg("text", { x: 2, y: top + 8 }, top_value), svg("text", { x: 2, y: height - bottom }, 0),
    svg("text", { x: left, y: height - 4 }, minutes.length + " min ago"),
    svg("text", { x: width - 30, y: height - 4 }, "now"));
  minutes.forEach((m, i) => {
    const x = left + i * slot;
    let y = height - bottom;
    const bar = svg("g", { "data-at": m.at });
    bar.append(svg("title", {}, `${time(m.at)}: ${m.succeeded} succeeded, ${m.failed} failed, ${m.other} other`));
    for (const [n, cls] of [[m.succeeded, "ok"], [m.failed, "bad"], [m.other, "other"]]) {
      if (!n) continue;
      const h = Math.max(1, scale(n));
      y -= h;
      bar.append(svg("rect", { class: cls, x: x + 1, y, width: Math.max(1, slot - 2), height: h }));
    }
    chart.append(bar);
  });
  return chart;
}

// Functions: shape, triggers, next runs, problems; pause, resume and invoke.
async function functionsView() {
  const table = el("tbody");
  const invokeBox = el("div", { id: "invoke-box" });
  mount(el("h1", {}, "Functions"),
    el("table", { id: "functions" },
      el("thead", {}, el("tr", {}, ["name", "status", "shape", "triggers", "next runs", "background work", ""].map((h) => el("th", {}, h)))),
      table),
    invokeBox);
  const draw = async () => {
    const functions = await api("functions");
    table.replaceChildren(...functions.map((f) => el("tr", { "data-function": f.name },
      el("td", {}, el("a", { href: "#/invocations?" + query({ function: f.name }) }, f.name)),
      el("td", {}, f.status, f.error ? el("div", { class: "problem" }, f.error) : null),
      el("td", {}, f.shape || ""),
      el("td", {}, f.triggers.join(", ")),
      el("td", { class: "muted" }, f.upcoming.map((t) => el("div", {}, t))),
      el("td", {}, f.paused
        ? [el("span", { class: "paused" }, "paused "), el("button", { class: "resume", type: "button", onclick: () => pause(f.name, false) }, "Resume")]
        : [el("span", { class: "active" }, "active "), el("button", { class: "pause", type: "button", onclick: () => pause(f.name, true) }, "Pause")]),
      el("td", {}, f.status === "ready" ? el("button", { class: "invoke", type: "button", onclick: () => invokeForm(invokeBox, f.name) }, "Invoke…") : null))));
  };
  const pause = async (name, paused) => {
    try {
      await api(`functions/${encodeURIComponent(name)}/${paused ? "pause" : "resume"}`, { method: "POST" });
      await draw();
    } catch (e) { failed(e); }
  };
  await draw();
  refreshView = draw;
}

function invokeForm(box, name) {
  const payload = el("textarea", { id: "invoke-payload", placeholder: "payload (stdin of the guest)" });
  const result = el("p", { id: "invoke-result" });
  const form = el("form", { id: "invoke" },
    el("h2", {}, "Invoke " + name),
    payload,
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary", id: "invoke-submit" }, "Queue it")),
    result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const record = await api(`functions/${encodeURIComponent(name)}/invoke`, { method: "POST", body: payload.value });
      const id = record.id;
      result.replaceChildren("Queued as ", el("a", { href: "#/invocation/" + encodeURIComponent(id) }, id));
    } catch (e) { failed(e); }
  });
  box.replaceChildren(form);
  payload.focus();
}

// Invocations: filters, pages by cursor, bulk retry of the dead ones.
async function invocationsView(params) {
  const functions = await api("functions");
  const choice = (name, values, current) => el("label", {}, name,
    el("select", { name }, el("option", { value: "" }, "any"),
      values.map((v) => el("option", { value: v, selected: v === current }, v))));
  const errorInput = el("input", { name: "error", type: "search", value: params.error || "", placeholder: "text in the error" });
  const form = el("form", { id: "filters", class: "filters" },
    choice("function", functions.map((f) => f.name), params.function),
    choice("state", STATES, params.state),
    choice("trigger", TRIGGERS, params.trigger),
    el("label", {}, "error", errorInput),
    el("button", { type: "submit", class: "primary" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    location.hash = "#/invocations?" + query({
      function: data.get("function"), state: data.get("state"), trigger: data.get("trigger"), error: data.get("error"),
    });
  });
  const body = el("tbody");
  const pager = el("div", { class: "pager" });
  const bulk = el("div", { class: "actions" });
  if (params.state === "dead") {
    const said = el("span", { id: "retry-dead-result" });
    bulk.append(el("button", { id: "retry-dead", type: "button", onclick: async () => {
      try {
        const answer = await api("invocations/retry?" + query({ function: params.function, state: "dead" }), { method: "POST" });
        said.textContent = `${answer.retried} queued again` + (answer.more ? " (more are left: press again)" : "");
        await draw();
      } catch (e) { failed(e); }
    } }, params.function ? `Retry every dead invocation of ${params.function}` : "Retry every dead invocation"), said);
  }
  mount(el("h1", {}, "Invocations"), form, bulk,
    el("table", { id: "invocations" },
      el("thead", {}, el("tr", {}, ["id", "function", "trigger", "reason", "state", "attempt", "created", "ms", "error"].map((h) => el("th", {}, h)))),
      body),
    pager);
  const limit = Math.min(Number(params.limit) || 50, 999);
  const filters = { function: params.function, state: params.state, trigger: params.trigger, error: params.error, limit: params.limit };
  const draw = async () => {
    // One more than shown tells whether an older page exists.
    const list = await api("invocations?" + query({ ...filters, before: params.before, limit: limit + 1 }));
    const more = list.length > limit;
    list.length = Math.min(list.length, limit);
    body.replaceChildren(...list.map((r) => el("tr", { "data-id": r.id },
      el("td", {}, el("a", { href: "#/invocation/" + encodeURIComponent(r.id) }, r.id)),
      el("td", { class: "function" }, r.function),
      el("td", {}, r.trigger),
      el("td", {}, r.reason),
      el("td", {}, stateCell(r.state)),
      el("td", { class: "num" }, `${r.attempt}/${r.max_attempts}`),
      el("td", {}, time(r.created_at)),
      el("td", { class: "num" }, r.duration_ms ?? ""),
      el("td", { class: "problem" }, r.error || ""))));
    if (!list.length) body.append(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No invocations match.")));
    // The next page starts before this one's last id.
    const last = more ? list[list.length - 1].id : null;
    pager.replaceChildren(...[
      params.before ? el("a", { id: "newest", href: "#/invocations?" + query(filters) }, "« Newest") : null,
      last ? el("a", { id: "older", href: "#/invocations?" + query({ ...filters, before: last }) }, "Older »") : null,
    ].filter(Boolean));
  };
  await draw();
  refreshView = draw;
}

// One invocation, all it keeps; retry when dead, cancel until it ends.
async function invocationView(id) {
  const box = el("div");
  // What the last button did; kept across redraws.
  const said = el("span", { id: "action-result" });
  mount(box);
  const draw = async () => {
    const r = await api("invocations/" + encodeURIComponent(id));
    const link = (other) => el("a", { href: "#/invocation/" + encodeURIComponent(other) }, other);
    const field = (name, ...value) => [el("dt", {}, name), el("dd", { id: "field-" + name.replace(/ /g, "-") }, ...value)];
    const output = (name, text, cut) => [
      el("h2", {}, name, cut ? el("span", { class: "muted" }, " (cut)") : null),
      el("pre", { id: name }, text || ""),
    ];
    const act = (verb) => async () => {
      try {
        await api(`invocations/${encodeURIComponent(id)}/${verb}`, { method: "POST" });
        said.textContent = verb === "retry" ? "queued again" : "cancel asked";
        await draw();
      } catch (e) { failed(e); }
    };
    const ended = ["succeeded", "dead", "cancelled", "skipped"].includes(r.state) || (r.state === "failed" && !r.next_attempt_at);
    box.replaceChildren(
      el("h1", {}, r.function, " ", el("span", { class: "muted" }, r.id)),
      el("dl", { class: "fields", id: "record" },
        field("state", stateCell(r.state)),
        field("trigger", r.trigger), field("reason", r.reason),
        field("attempt", `${r.attempt} of ${r.max_attempts}`),
        field("created", time(r.created_at)), field("started", time(r.started_at)), field("finished", time(r.finished_at)),
        r.next_attempt_at ? field("next attempt", time(r.next_attempt_at)) : [],
        field("duration", r.duration_ms === null ? "" : r.duration_ms + " ms"),
        field("exit code", r.exit_code ?? ""),
        field("error", el("span", { class: "problem" }, r.error || "")),
        field("host", r.host || ""), field("priority", r.priority),
        r.progress ? field("progress", `${r.progress.percent}% ${r.progress.message}`) : [],
        r.parent_id ? field("parent", link(r.parent_id)) : [],
        r.children && r.children.length ? field("children", r.children.map((c) => el("div", {}, link(c)))) : [],
        r.callback ? field("callback", `${r.callback.url}: ${r.callback.state}, ${r.callback.attempts} tries` + (r.callback.last_error ? `, ${r.callback.last_error}` : "")) : []),
      el("div", { class: "actions" },
        r.state === "dead" ? el("button", { id: "retry", type: "button", class: "primary", onclick: act("retry") }, "Retry") : null,
        !ended ? el("button", { id: "cancel", type: "button", onclick: act("cancel") }, "Cancel") : null,
        el("a", { href: "#/invocations?" + query({ function: r.function }) }, "All of " + r.function),
        said),
      ...output("payload", r.payload, r.payload_truncated),
      ...output("stdout", r.stdout, r.stdout_truncated),
      ...output("stderr", r.stderr, r.stderr_truncated));
  };
  await draw();
  refreshView = draw;
}

function toggleRefresh() {
  refreshPaused = !refreshPaused;
  const button = document.getElementById("refresh-toggle");
  button.textContent = refreshPaused ? "Resume auto-refresh" : "Pause auto-refresh";
  button.setAttribute("aria-pressed", String(refreshPaused));
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("refresh-toggle").addEventListener("click", toggleRefresh);
  window.addEventListener("hashchange", render);
  setInterval(refresh, REFRESH_MS);
  render();
});
