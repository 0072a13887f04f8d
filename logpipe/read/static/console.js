// logpipe console: search /api/logs, page with its cursor, tail new events, chart them.
// Every value from the API reaches the page through textContent, never as markup.
// The read key, when the console asks for one, lives in sessionStorage and travels only in
// the Authorization header, never in a URL.
"use strict";

const LEVELS = ["trace", "debug", "info", "warn", "error", "fatal"];
const PRESETS = ["15m", "1h", "6h", "24h", "7d", "31d"];
const TAIL_EVERY_MS = 2000;
const TAIL_OVERLAP_MS = 60000; // late arrivals within a minute still show up in the tail
const MAX_ROWS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const KEY_STORE = "logpipe.readKey";
const BUSY_RETRIES = 5; // a read answered 429 is asked again after its Retry-After, so often

const $ = (id) => document.getElementById(id);
const state = {
  params: null, // URLSearchParams of the current search
  cursors: [null], // cursors[n] loads page n
  page: 0,
  next: null,
  events: [],
  ids: new Set(),
  tailTimer: null,
  tailLoop: 0, // one polling loop at a time: a loop whose number is stale stops
  failed: false, // the last search answered an error, not events
  generation: 0, // bumped by every search or page change; late answers of older ones are dropped
  keyPrompt: null, // the one pending request for a read key, shared by every caller
};

// --- talking to the API -------------------------------------------------------------------

async function getJson(url) {
  let busy = 0; // answers 429: the console serves as many reads as it may at once
  for (;;) {
    const key = sessionStorage.getItem(KEY_STORE);
    const headers = { Accept: "application/json" };
    if (key) headers.Authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch(url, { headers, cache: "no-store" });
    } catch (err) {
      throw new Error(`The console cannot be reached (${err.message}).`);
    }
    if (response.status === 401) {
      if (key && sessionStorage.getItem(KEY_STORE) === key) sessionStorage.removeItem(KEY_STORE);
      await askKey(Boolean(key));
      continue;
    }
    if (response.status === 429 && busy < BUSY_RETRIES) {
      busy += 1;
      const seconds = Number(response.headers.get("Retry-After")) || 1;
      await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
      continue;
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      throw new Error(body && body.error ? body.error : `HTTP ${response.status}`);
    }
    return body;
  }
}

// Asks once for a read key, however many requests were refused meanwhile.
function askKey(refused) {
  if (!state.keyPrompt) {
    state.keyPrompt = new Promise((resolve) => {
      const dialog = $("key-dialog");
      $("key-reason").textContent = refused
        ? "That read key was refused. Enter a read key of this console."
        : "This console needs a read key (one of LOGPIPE_READ_KEYS).";
      $("read-key").value = "";
      $("key-form").addEventListener(
        "submit",
        (event) => {
          event.preventDefault();
          sessionStorage.setItem(KEY_STORE, $("read-key").value.trim());
          $("read-key").value = "";
          dialog.close();
          state.keyPrompt = null;
          resolve();
        },
        { once: true },
      );
      dialog.showModal();
      $("read-key").focus();
    });
  }
  return state.keyPrompt;
}

// One page of a search: follows the cursor while an answer stopped at its query budget
// ("complete": false) before the page was full.
async function getPage(params, cursor, generation) {
  const limit = Number(params.get("limit"));
  let body = await getJson(logsUrl(params, cursor));
  const events = body.events;
  let requests = 1;
  while (!body.complete && body.cursor && events.length < limit) {
    if (generation !== state.generation) return null;
    $("summary").textContent =
      `Searching… ${events.length} found so far (${requests} request${requests === 1 ? "" : "s"})`;
    const rest = new URLSearchParams(params);
    rest.set("limit", String(limit - events.length));
    body = await getJson(logsUrl(rest, body.cursor));
    events.push(...body.events);
    requests += 1;
  }
  return { events, cursor: body.cursor };
}

function logsUrl(params, cursor) {
  const query = new URLSearchParams(params);
  if (cursor) query.set("cursor", cursor);
  return `/api/logs?${query}`;
}

// --- the form -----------------------------------------------------------------------------

function formParams() {
  const params = new URLSearchParams();
  params.set("service", $("service").value.trim().toLowerCase());
  if ($("level").value) params.set("level", $("level").value);
  if ($("range").value === "custom") {
    if ($("since").value.trim()) params.set("since", $("since").value.trim());
    if ($("until").value.trim()) params.set("until", $("until").value.trim());
  } else {
    params.set("since", $("range").value);
  }
  if ($("q").value) params.set("q", $("q").value);
  params.set("limit", $("limit").value);
  return params;
}

function fillForm(params) {
  $("service").value = params.get("service") || "";
  $("level").value = params.get("level") || "";
  $("q").value = params.get("q") || "";
  if (params.get("limit")) $("limit").value = params.get("limit");
  const since = params.get("since");
  if (since && (!PRESETS.includes(since) || params.get("until"))) {
    $("range").value = "custom";
    $("since").value = since;
    $("until").value = params.get("until") || "";
  } else if (since) {
    $("range").value = since;
  }
  showCustom();
}

function showCustom() {
  const custom = $("range").value === "custom";
  for (const el of document.querySelectorAll("label.custom")) el.hidden = !custom;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

// --- searching and paging -----------------------------------------------------------------

async function search(event) {
  if (event) event.preventDefault();
  state.params = formParams();
  state.cursors = [null];
  history.replaceState(null, "", `?${state.params}`);
  await loadPage(0);
  scheduleTail();
}

// Shows page `index` of the current search; the page number changes only once it is in.
async function loadPage(index) {
  const generation = ++state.generation;
  // Until this page is in, its cursor is unknown: no paging from a page still loading.
  $("older").disabled = true;
  $("newer").disabled = true;
  $("go").disabled = true;
  $("results").setAttribute("aria-busy", "true");
  try {
    const body = await getPage(state.params, state.cursors[index], generation);
    if (generation !== state.generation) return;
    showError(null);
    state.failed = false;
    state.page = index;
    state.events = body.events;
    state.ids = new Set(body.events.map((e) => e.id));
    state.next = body.cursor;
  } catch (err) {
    if (generation !== state.generation) return;
    showError(err.message);
    if (index === 0) {
      // A failed new search: the rows shown would not match the form any more.
      state.failed = true;
      state.page = 0;
      state.events = [];
      state.ids = new Set();
      state.next = null;
    }
  } finally {
    if (generation === state.generation) {
      $("go").disabled = false;
      $("results").removeAttribute("aria-busy");
      render();
    }
  }
}

function older() {
  if (!state.next) return;
  state.cursors[state.page + 1] = state.next;
  loadPage(state.page + 1).then(scheduleTail);
}

function newer() {
  if (state.page === 0) return;
  loadPage(state.page - 1).then(scheduleTail);
}

// --- live tail ----------------------------------------------------------------------------

function tailAllowed() {
  // Only the newest page of an open-ended range can grow.
  return state.params && !state.failed && state.page === 0 && !state.params.get("until");
}

function scheduleTail() {
  clearTimeout(state.tailTimer);
  state.tailTimer = null;
  const loop = ++state.tailLoop;
  if (!$("tail").checked) {
    $("tail-status").textContent = "";
    return;
  }
  if (!state.params) {
    $("tail-status").textContent = "Live tail starts with a search";
    return;
  }
  if (!tailAllowed()) {
    $("tail-status").textContent = state.failed
      ? "Live tail paused: the search failed"
      : "Live tail paused: go to the newest page of an open-ended range";
    return;
  }
  state.tailTimer = setTimeout(() => tail(loop), TAIL_EVERY_MS);
}

async function tail(loop) {
  const generation = state.generation;
  const params = new URLSearchParams(state.params);
  const newest = state.events.length ? Date.parse(state.events[0].timestamp) : null;
  if (newest !== null) params.set("since", new Date(newest - TAIL_OVERLAP_MS).toISOString());
  params.set("limit", "1000");
  try {
    const body = await getPage(params, null, generation);
    if (!body || generation !== state.generation) return;
    const fresh = body.events.filter((e) => !state.ids.has(e.id));
    if (fresh.length && state.events.length + fresh.length <= MAX_ROWS) {
      for (const e of fresh) state.ids.add(e.id);
      state.events = fresh.concat(state.events);
      state.events.sort((a, b) => (a.timestamp < b.timestamp ? 1 : a.timestamp > b.timestamp ? -1 : 0));
      render(new Set(fresh.map((e) => e.id)));
    }
    showError(null);
    const time = new Date().toISOString().slice(11, 19);
    $("tail-status").textContent = `● Live tail: checked ${time} UTC, ${fresh.length} new`;
  } catch (err) {
    showError(`Live tail: ${err.message}`);
  }
  if (loop === state.tailLoop && $("tail").checked && tailAllowed()) {
    state.tailTimer = setTimeout(() => tail(loop), TAIL_EVERY_MS);
  }
}

// --- rendering ----------------------------------------------------------------------------

function render(freshIds) {
  renderTable(freshIds || new Set());
  renderChart();
  const n = state.events.length;
  const first = state.page * Number(state.params.get("limit"));
  $("summary").textContent = state.failed
    ? "The search failed: see the message above."
    : n
      ? `${n} event${n === 1 ? "" : "s"} of ${state.params.get("service")} · page ${state.page + 1}` +
        (state.page ? ` (after ${first} newer)` : "")
      : `No events of ${state.params.get("service")} on this page.`;
  $("empty").hidden = n > 0 || state.failed;
  $("newer").disabled = state.page === 0;
  $("older").disabled = !state.next;
}

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

function renderTable(freshIds) {
  const body = document.querySelector("#results tbody");
  const rows = [];
  for (const event of state.events) {
    const level = LEVELS.includes(event.level) ? event.level : "info";
    const tr = document.createElement("tr");
    tr.className = `event row-${level}` + (freshIds.has(event.id) ? " fresh" : "");
    tr.dataset.id = event.id;
    tr.append(cell(event.timestamp.replace("T", " ").replace("Z", ""), "time"));
    const badge = document.createElement("span");
    badge.className = `badge lv-${level}`;
    badge.textContent = event.level;
    const levelCell = cell("", "lvl");
    levelCell.append(badge);
    tr.append(levelCell, cell(event.message, "msg"), cell(attributesText(event), "attrs"));
    tr.addEventListener("click", () => toggleDetail(tr, event));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function attributesText(event) {
  const parts = Object.entries(event.attributes || {}).map(([k, v]) => `${k}=${v}`);
  if (event.trace_id) parts.push(`trace_id=${event.trace_id}`);
  return parts.join("  ");
}

function toggleDetail(tr, event) {
  const next = tr.nextElementSibling;
  if (next && next.classList.contains("detail")) {
    next.remove();
    return;
  }
  const detail = document.createElement("tr");
  detail.className = "detail";
  const td = document.createElement("td");
  td.colSpan = 4;
  const pre = document.createElement("pre");
  pre.textContent = JSON.stringify(event, null, 2);
  td.append(pre);
  detail.append(td);
  tr.after(detail);
}

function svg(name, attributes, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function renderChart() {
  const chart = $("chart");
  const events = state.events;
  const legend = $("legend");
  // Drawn in the element's own pixels, so text and bars keep their shape at any width.
  const pixels = Math.max(chart.clientWidth, 300);
  chart.setAttribute("viewBox", `0 0 ${pixels} 150`);
  chart.replaceChildren();
  legend.replaceChildren();
  if (!events.length) {
    $("chart-title").textContent = "Events per minute by level";
    chart.append(svg("text", { x: pixels / 2, y: 80, "text-anchor": "middle" }, "no events to chart"));
    return;
  }
  const minute = (e) => Math.floor(Date.parse(e.timestamp) / 60000);
  const last = minute(events[0]);
  // At least 30 minutes wide, so a few events do not make a few huge bars.
  const first = Math.min(minute(events[events.length - 1]), last - 29);
  const width = Math.max(1, Math.ceil((last - first + 1) / 120)); // at most 120 bars
  const bars = Math.floor((last - first) / width) + 1;
  const counts = Array.from({ length: bars }, () => Object.fromEntries(LEVELS.map((l) => [l, 0])));
  const totals = Object.fromEntries(LEVELS.map((l) => [l, 0]));
  for (const e of events) {
    const level = LEVELS.includes(e.level) ? e.level : "info";
    counts[Math.floor((minute(e) - first) / width)][level] += 1;
    totals[level] += 1;
  }
  const peak = Math.max(...counts.map((c) => LEVELS.reduce((s, l) => s + c[l], 0)));
  const [left, top, plotW, plotH] = [40, 8, pixels - 50, 118];
  const step = plotW / bars;
  chart.append(svg("line", { class: "axis", x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH }));
  chart.append(svg("text", { x: left - 6, y: top + 10, "text-anchor": "end" }, String(peak)));
  chart.append(svg("text", { x: left - 6, y: top + plotH, "text-anchor": "end" }, "0"));
  counts.forEach((c, i) => {
    const group = svg("g", {});
    const start = new Date((first + i * width) * 60000).toISOString().slice(11, 16);
    const label = LEVELS.filter((l) => c[l]).map((l) => `${c[l]} ${l}`).join(", ");
    group.append(svg("title", {}, `${start} UTC: ${label || "none"}`));
    let y = top + plotH;
    for (const level of LEVELS) {
      if (!c[level]) continue;
      const h = (c[level] / peak) * plotH;
      y -= h;
      const x = left + i * step + step * 0.1;
      group.append(svg("rect", { class: `f-${level}`, x, y, width: Math.max(step * 0.8, 1), height: h }));
    }
    chart.append(group);
  });
  const time = (m) => new Date(m * 60000).toISOString().slice(11, 16);
  chart.append(svg("text", { x: left, y: 146 }, `${time(first)} UTC`));
  chart.append(svg("text", { x: left + plotW, y: 146, "text-anchor": "end" }, `${time(last)} UTC`));
  const per = width === 1 ? "minute" : `${width} minutes`;
  // Say what the bars count: the events on this page, which is the whole time range only
  // when there is no further page.
  const scope = state.next || state.page > 0
    ? `the ${events.length} events on this page, not the whole time range`
    : `all ${events.length} events in the time range`;
  $("chart-title").textContent = `Events per ${per} by level: ${scope}`;
  for (const level of LEVELS) {
    if (!totals[level]) continue;
    const li = document.createElement("li");
    li.className = `l-${level}`;
    li.textContent = `${level} ${totals[level]}`;
    legend.append(li);
  }
}

// --- start --------------------------------------------------------------------------------

async function loadServices() {
  try {
    const body = await getJson("/api/services");
    const list = $("services");
    list.replaceChildren(
      ...body.services.map((s) => {
        const option = document.createElement("option");
        option.value = s.service;
        option.textContent = `last seen ${s.last_seen}`;
        return option;
      }),
    );
    return body.services;
  } catch (err) {
    showError(`Services: ${err.message}`);
    return [];
  }
}

async function start() {
  $("search").addEventListener("submit", search);
  $("range").addEventListener("change", showCustom);
  $("older").addEventListener("click", older);
  $("newer").addEventListener("click", newer);
  $("tail").addEventListener("change", scheduleTail);
  window.addEventListener("resize", renderChart);
  const fromUrl = new URLSearchParams(location.search);
  fillForm(fromUrl);
  const services = await loadServices();
  if (!$("service").value && services.length) {
    const recent = services.slice().sort((a, b) => (a.last_seen < b.last_seen ? 1 : -1));
    $("service").value = recent[0].service;
  }
  if ($("service").value) await search(null);
  document.body.dataset.ready = "true";
}

start();
