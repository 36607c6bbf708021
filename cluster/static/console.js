// durable-cluster console: vanilla JavaScript over the JSON API (docs/console.md).
// Every value from the database goes into the page as text (textContent), never as HTML.
"use strict";

const REFRESH_MS = 2000;
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const state = {
  csrf: null,
  status: "",
  label: "",
  cursor: null, // the cursor of the page shown (null: the first page)
  nextCursor: null,
  selected: null, // instance id shown in the detail pane
  graphText: null,
  busy: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function statusBadge(status) {
  return el("span", status || "pending", "status status-" + (status || "pending"));
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return isNaN(date) ? iso : date.toLocaleString();
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (error) {
    body = { error: text };
  }
  if (!response.ok) {
    const error = new Error((body && body.error) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

async function post(path, data) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf },
    body: JSON.stringify(data),
  });
}

function say(text, isError) {
  const message = $("message");
  message.textContent = text || "";
  message.className = isError ? "error" : "";
}

// -- the list ---------------------------------------------------------------------------

function listQuery() {
  const params = new URLSearchParams();
  if (state.status) params.set("status", state.status);
  if (state.label) params.set("label", state.label);
  if (state.cursor) params.set("cursor", state.cursor);
  params.set("limit", "50");
  return "/api/instances?" + params.toString();
}

function renderList(page) {
  const body = $("instances").querySelector("tbody");
  const rows = page.instances.map((instance) => {
    const row = el("tr");
    row.dataset.instanceId = instance.instance_id;
    row.dataset.status = instance.status;
    if (instance.instance_id === state.selected) row.className = "selected";
    row.append(el("td", instance.instance_id, "mono"), el("td", instance.label || ""));
    const status = el("td");
    status.append(statusBadge(instance.status));
    row.append(status, el("td", when(instance.created_at)));
    const output = instance.output || "";
    row.append(el("td", output.length > 60 ? output.slice(0, 57) + "..." : output, "mono"));
    row.addEventListener("click", () => select(instance.instance_id));
    return row;
  });
  body.replaceChildren(...rows);
  $("empty").hidden = rows.length > 0;
  state.nextCursor = page.next_cursor;
  $("next-page").disabled = !page.next_cursor;
  $("first-page").disabled = !state.cursor;
}

function renderCounts(status) {
  const counts = $("counts");
  const parts = [];
  if (status && status.instances) {
    for (const name of ["pending", "running", "completed", "failed", "cancelled"]) {
      const badge = statusBadge(name);
      badge.textContent = name + " " + status.instances[name];
      badge.dataset.count = status.instances[name];
      badge.id = "count-" + name;
      parts.push(badge);
    }
  }
  counts.replaceChildren(...parts);
}

// -- the detail pane --------------------------------------------------------------------

function fact(list, name, value) {
  if (value === null || value === undefined || value === "") return;
  list.append(el("dt", name), el("dd", value));
}

function renderDetail(shown) {
  const instance = shown.instance;
  $("detail").hidden = false;
  $("detail").dataset.instanceId = instance.instance_id;
  $("detail-id").textContent = instance.instance_id;
  $("detail-label").textContent = instance.label || "";
  const status = $("detail-status");
  status.textContent = instance.status;
  status.className = "status status-" + instance.status;
  const facts = el("dl");
  facts.id = "detail-facts";
  fact(facts, "submitted by", instance.submitted_by);
  fact(facts, "created", when(instance.created_at));
  fact(facts, "completed", when(instance.completed_at));
  if (instance.duration_seconds !== null) fact(facts, "duration", instance.duration_seconds.toFixed(3) + " s");
  fact(facts, "executions", instance.execution_count);
  fact(facts, "output", instance.output);
  $("detail-facts").replaceWith(facts);
  const terminal = TERMINAL.has(instance.status);
  $("cancel-button").disabled = terminal;
  $("signal-send").disabled = terminal;
  if (terminal) $("cancel-form").hidden = true;

  const rows = shown.nodes
    .filter((node) => node.node_type !== "THEN")
    .map((node) => {
      const row = el("tr");
      row.dataset.nodeId = node.node_id;
      row.dataset.status = node.inferred_status;
      row.append(el("td", node.node_id, "mono"), el("td", node.label, "mono"));
      const cell = el("td");
      cell.append(statusBadge(node.inferred_status));
      if (node.inferred_status !== node.status) cell.append(el("span", " (" + node.status + ")", "muted"));
      row.append(cell);
      row.append(el("td", node.attempt ? node.attempt + " / " + node.max_attempts : ""));
      row.append(el("td", node.elapsed_seconds === null ? "" : "+" + node.elapsed_seconds.toFixed(3) + " s"));
      row.append(el("td", node.error || "", "error"));
      return row;
    });
  $("nodes").querySelector("tbody").replaceChildren(...rows);
  const executions = shown.executions.map((execution) => {
    const row = el("tr");
    row.append(
      el("td", execution.execution_id),
      el("td", execution.status),
      el("td", execution.event_count),
      el("td", execution.duration_ms === null ? "" : execution.duration_ms + " ms"),
    );
    return row;
  });
  $("executions").querySelector("tbody").replaceChildren(...executions);
}

async function loadGraph(id) {
  const response = await fetch("/api/instances/" + id + "/graph.svg", { credentials: "same-origin" });
  if (!response.ok) return;
  const text = await response.text();
  if (text === state.graphText || state.selected !== id) return;
  state.graphText = text;
  // Our own SVG (text escaped by render.py), parsed as XML: no script runs, and the CSP forbids it anyway.
  const parsed = new DOMParser().parseFromString(text, "image/svg+xml");
  const picture = document.importNode(parsed.documentElement, true);
  $("graph").replaceChildren(picture);
}

async function refreshDetail() {
  const id = state.selected;
  if (!id) return;
  try {
    const shown = await api("/api/instances/" + id);
    if (state.selected !== id) return;
    renderDetail(shown);
    await loadGraph(id);
  } catch (error) {
    if (error.status === 404) {
      say("Instance " + id + " is not visible to this role.", true);
    } else {
      throw error;
    }
  }
}

function select(id) {
  if (state.selected !== id) {
    state.graphText = null;
    $("graph").replaceChildren();
    say("");
    $("cancel-form").hidden = true;
  }
  state.selected = id;
  history.replaceState(null, "", "/#instance=" + id);
  for (const row of $("instances").querySelectorAll("tbody tr")) {
    row.classList.toggle("selected", row.dataset.instanceId === id);
  }
  refreshDetail().catch(stale);
}

// -- refresh loop -------------------------------------------------------------------------

function stale(error) {
  const live = $("live");
  live.classList.add("stale");
  live.textContent = error && error.status === 401 ? "signed out" : "offline";
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const [page, status] = await Promise.all([api(listQuery()), api("/api/status")]);
    renderList(page);
    renderCounts(status);
    await refreshDetail();
    const live = $("live");
    live.classList.remove("stale");
    live.textContent = "live · " + new Date().toLocaleTimeString();
    live.dataset.refreshed = String(Date.now());
  } catch (error) {
    stale(error);
  } finally {
    state.busy = false;
  }
}

// -- start ----------------------------------------------------------------------------------

async function start() {
  const hash = location.hash.match(/instance=([0-9a-fA-F]{8})/);
  // The token has been exchanged for the session cookie: take it out of the address bar.
  if (location.search) history.replaceState(null, "", "/" + location.hash);
  const session = await api("/api/session");
  state.csrf = session.csrf;
  $("role").textContent = "role " + session.role + " · " + session.database;

  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.status = $("status-filter").value;
    state.label = $("label-filter").value.trim();
    state.cursor = null;
    refresh();
  });
  $("status-filter").addEventListener("change", () => $("apply-filters").click());
  $("next-page").addEventListener("click", () => {
    state.cursor = state.nextCursor;
    refresh();
  });
  $("first-page").addEventListener("click", () => {
    state.cursor = null;
    refresh();
  });
  $("close-detail").addEventListener("click", () => {
    state.selected = null;
    $("detail").hidden = true;
    history.replaceState(null, "", "/");
  });
  $("cancel-button").addEventListener("click", () => {
    $("cancel-form").hidden = false;
    $("cancel-reason").focus();
  });
  $("cancel-confirm").addEventListener("click", async () => {
    const id = state.selected;
    try {
      const result = await post("/api/instances/" + id + "/cancel", { reason: $("cancel-reason").value });
      say(result.message);
      $("cancel-form").hidden = true;
    } catch (error) {
      say(error.message, true);
    }
    refresh();
  });
  $("signal-send").addEventListener("click", async () => {
    const id = state.selected;
    const name = $("signal-name").value.trim();
    if (!name) {
      say("Give the signal's name.", true);
      return;
    }
    try {
      const result = await post("/api/instances/" + id + "/signal", { name: name, data: $("signal-data").value || "{}" });
      say(result.message);
    } catch (error) {
      say(error.message, true);
    }
    refresh();
  });

  if (hash) state.selected = hash[1].toLowerCase();
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

start().catch(stale);
