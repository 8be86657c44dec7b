// The claude-hooks status page: agents, their tasks, and one task's live log.
//
// The page is public; the data is not. It asks for the API token once, keeps it in
// sessionStorage (this tab only), and sends it as a bearer header. Live updates come
// from Server-Sent Events read with fetch streaming, because EventSource cannot send
// an Authorization header. Everything is rendered with textContent: task text comes
// from Forgejo comments and Claude's output, never trusted as HTML.
"use strict";

const TOKEN_KEY = "claude-hooks-token";
const RECONNECT_MS = 2000;
const RECENT_ROWS = 50;
// A pause (a usage limit, a daily budget) comes with a task change, but ends on the
// clock or by `claude-hooks resume`: the agents are read again on a change and this often.
const AGENTS_REFRESH_MS = 15000;

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  tasks: new Map(), // id → task, fed by GET /events
  agents: [], // from GET /agents
  feed: null, // AbortController of the /events stream
  log: null, // AbortController of the open task log stream
};

const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${state.token}`, ...extra };
}

async function getJSON(path) {
  const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

// Reads a text/event-stream response, calling onEvent({id, event, data}) per message.
async function readEventStream(path, { headers = {}, signal, onOpen, onEvent }) {
  const response = await fetch(path, {
    headers: authHeaders({ Accept: "text/event-stream", ...headers }),
    cache: "no-store",
    signal,
  });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  if (onOpen) onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = parseBlock(block);
      if (message) onEvent(message);
    }
  }
}

function parseBlock(block) {
  const message = { id: null, event: "message", data: [] };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") message.id = value;
    else if (field === "event") message.event = value;
    else if (field === "data") message.data.push(value);
  }
  if (!message.data.length) return null;
  return { ...message, data: JSON.parse(message.data.join("\n")) };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- sign-in ---------------------------------------------------------------------------------

function showLogin(message = "") {
  stopStreams();
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("login").hidden = false;
  $("overview").hidden = true;
  $("task-view").hidden = true;
  $("forget").hidden = true;
  $("login-error").textContent = message;
  setConnection("offline");
  $("token").focus();
}

function stopStreams() {
  for (const key of ["feed", "log"]) {
    if (state[key]) state[key].abort();
    state[key] = null;
  }
}

function setConnection(text) {
  const badge = $("connection");
  badge.textContent = text;
  badge.dataset.state = text;
}

async function start() {
  $("login").hidden = true;
  $("forget").hidden = false;
  try {
    state.agents = await getJSON("/agents");
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin("That token was refused.");
    setConnection("reconnecting");
  }
  followFeed();
  route();
}

// --- the feed of task changes --------------------------------------------------------------------

async function followFeed() {
  const controller = new AbortController();
  state.feed = controller;
  while (!controller.signal.aborted) {
    try {
      await readEventStream("/events", {
        signal: controller.signal,
        onOpen: () => setConnection("live"),
        onEvent: ({ event, data }) => {
          if (event !== "task") return;
          state.tasks.set(data.id, data);
          renderOverview();
          renderTaskFacts(data);
          refreshAgents();
        },
      });
    } catch (error) {
      if (error instanceof Unauthorized) return showLogin("The token was refused.");
      if (controller.signal.aborted) return;
    }
    setConnection("reconnecting");
    await sleep(RECONNECT_MS);
  }
}

// --- the overview ----------------------------------------------------------------------------

let agentsRefresh = null;

function refreshAgents() {
  // One read for a burst of changes.
  if (agentsRefresh || !state.token) return;
  agentsRefresh = setTimeout(async () => {
    try {
      state.agents = await getJSON("/agents");
      renderOverview();
    } catch (error) {
      if (error instanceof Unauthorized) showLogin("The token was refused.");
    } finally {
      agentsRefresh = null;
    }
  }, 300);
}

function pausedLine(agent) {
  const pause = agent?.paused;
  if (!pause || pause.until * 1000 <= Date.now()) return null;
  return el("p", { className: "paused", "data-cause": pause.cause,
    text: `${pause.reason}; will resume`,
    title: `claude-hooks resume ${agent.name} lifts it now` });
}

// The Docker engines an agent's tasks go to: shown for an engine pool, or when one is
// down (no task is placed on it; with all of them down the agent's tasks wait).
function enginesLine(agent) {
  const engines = agent?.engines ?? [];
  if (engines.length < 2 && engines.every((engine) => engine.up)) return null;
  return el("p", { className: "engines", title: "Docker engines of this agent" },
    ...engines.map((engine) => el("span", {
      className: engine.up ? "engine" : "engine down",
      "data-engine": engine.name,
      "data-up": String(engine.up),
      text: engine.up ? engine.name : `${engine.name} down`,
    })));
}

function taskLink(task, text) {
  return el("a", { href: `#/tasks/${Number(task.id)}`, text: text ?? `#${task.id}` });
}

function stateBadge(value) {
  return el("span", { className: "state", "data-state": value, text: value });
}

function formatSeconds(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "";
  const whole = Math.max(0, Math.round(seconds));
  const minutes = Math.floor(whole / 60);
  return minutes ? `${minutes}m ${String(whole % 60).padStart(2, "0")}s` : `${whole}s`;
}

function taskSeconds(task) {
  if (task.started_at == null) return null;
  const end = task.finished_at ?? Date.now() / 1000;
  return end - task.started_at;
}

function formatCost(cost) {
  return cost == null ? "" : `$${cost.toFixed(4)}`;
}

function renderOverview() {
  if (!state.token) return;
  const tasks = [...state.tasks.values()].sort((a, b) => b.id - a.id);
  const names = [...state.agents.map((a) => a.name)];
  for (const task of tasks) if (!names.includes(task.agent)) names.push(task.agent);
  const byName = new Map(state.agents.map((a) => [a.name, a]));

  const cards = names.map((name) => {
    const mine = tasks.filter((t) => t.agent === name);
    const running = mine.filter((t) => t.state === "running");
    const queued = mine.filter((t) => t.state === "queued").sort((a, b) => a.id - b.id);
    const list = el("ul");
    for (const task of running) {
      list.append(el("li", { "data-task-id": task.id }, stateBadge("running"), " ",
        taskLink(task), ` ${task.thread} · ${formatSeconds(taskSeconds(task))}`));
    }
    for (const task of queued) {
      const place = task.position ? ` (#${task.position} in queue)` : "";
      list.append(el("li", { "data-task-id": task.id }, stateBadge("queued"), " ",
        taskLink(task), ` ${task.thread}${place}`));
    }
    const paused = pausedLine(byName.get(name));
    const engines = enginesLine(byName.get(name));
    const idle = running.length + queued.length === 0 && !paused
      ? el("p", { className: "idle", text: "idle" }) : null;
    const role = byName.get(name)?.role ?? "";
    return el("div", { className: paused ? "agent paused" : "agent", "data-agent": name },
      el("h3", { text: name }, " ", el("span", { className: "role", text: role })),
      paused, engines, idle, list);
  });
  $("agents").replaceChildren(...cards);

  const rows = tasks.slice(0, RECENT_ROWS).map((task) =>
    el("tr", { "data-task-id": task.id, "data-state": task.state },
      el("td", {}, taskLink(task)),
      el("td", {}, stateBadge(task.state)),
      el("td", { text: task.agent }),
      el("td", { text: task.thread }),
      el("td", { className: "request", text: task.request, title: task.request }),
      el("td", { text: formatSeconds(taskSeconds(task)) }),
      el("td", { text: formatCost(task.cost_usd) })));
  $("recent").tBodies[0].replaceChildren(...rows);
  $("no-tasks").hidden = rows.length > 0;
}

// --- one task's live log -------------------------------------------------------------------------

function route() {
  if (!state.token) return;
  if (state.log) state.log.abort();
  state.log = null;
  const match = /^#\/tasks\/(\d+)$/.exec(location.hash);
  $("overview").hidden = Boolean(match);
  $("task-view").hidden = !match;
  if (match) showTask(Number(match[1]));
  else renderOverview();
}

function renderTaskFacts(task) {
  const view = $("task-view");
  if (view.hidden || Number(view.dataset.taskId) !== task.id) return;
  $("task-title").replaceChildren(`Task #${task.id} `, stateBadge(task.state));
  const facts = [
    ["Agent", task.agent],
    ["Thread", task.thread],
    ["Kind", `${task.kind} (from ${task.source}, by ${task.requested_by})`],
    ["Request", task.request],
    ["Position", task.position != null ? `#${task.position} in queue` : null],
    ["Time", formatSeconds(taskSeconds(task))],
    ["Cost", formatCost(task.cost_usd)],
    ["Turns", task.num_turns],
    ["Session", task.session_id],
    ["Error", task.error],
    ["Result", task.result],
  ];
  const nodes = [];
  for (const [name, value] of facts) {
    if (value == null || value === "") continue;
    nodes.push(el("dt", { text: name }), el("dd", { text: String(value) }));
  }
  for (const link of task.links ?? []) {
    nodes.push(el("dt", { text: "Link" }), el("dd", {}, el("a", { href: link, text: link })));
  }
  $("task-facts").replaceChildren(...nodes);
}

function logLine(event) {
  const time = new Date(event.ts * 1000).toLocaleTimeString();
  return el("li", { "data-seq": event.seq, "data-type": event.type },
    el("span", { className: "time", text: time }),
    el("span", { className: "type", text: event.type }),
    event.summary);
}

async function showTask(id) {
  const view = $("task-view");
  view.dataset.taskId = id;
  $("task-log").replaceChildren();
  $("task-end").hidden = true;
  $("task-title").textContent = `Task #${id}`;
  $("task-facts").replaceChildren();
  const controller = new AbortController();
  state.log = controller;
  try {
    const task = await getJSON(`/tasks/${id}`);
    state.tasks.set(task.id, task);
    renderTaskFacts(task);
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin("The token was refused.");
    $("task-title").textContent = `Task #${id}: not found`;
    return;
  }
  let lastSeq = 0;
  while (!controller.signal.aborted) {
    let ended = false;
    try {
      await readEventStream(`/tasks/${id}/events`, {
        signal: controller.signal,
        headers: lastSeq ? { "Last-Event-ID": String(lastSeq) } : {},
        onEvent: ({ id: seq, event, data }) => {
          if (event === "end") {
            ended = true;
            const end = $("task-end");
            end.textContent = `Task ${data.state}.`;
            end.hidden = false;
            return;
          }
          lastSeq = Number(seq);
          $("task-log").append(logLine(data));
        },
      });
    } catch (error) {
      if (error instanceof Unauthorized) return showLogin("The token was refused.");
      if (controller.signal.aborted) return;
    }
    if (ended) return;
    await sleep(RECONNECT_MS);
  }
}

// --- start-up ----------------------------------------------------------------------------------

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  start();
});
$("forget").addEventListener("click", () => showLogin());
window.addEventListener("hashchange", route);
// Running tasks' elapsed time ticks without waiting for an event.
setInterval(() => {
  if (!$("overview").hidden) renderOverview();
}, 5000);
setInterval(() => {
  if (!$("overview").hidden) refreshAgents();
}, AGENTS_REFRESH_MS);

if (state.token) start();
else showLogin();
