// logpipe console: search /api/logs (one service, several or every one), page with its
// cursor, tail new events, chart the whole range from /api/stats.
// Every value from the API reaches the page through textContent or a DOM property, never as
// markup. The read key, when the console asks for one, lives in sessionStorage and travels
// only in the Authorization header, never in a URL.
// The URL holds the whole query (the API's parameters, plus tz=local when times are shown in
// the browser's zone): a search pushes a history entry, so back, forward and reload restore it.
"use strict";

const LEVELS = ["trace", "debug", "info", "warn", "error", "fatal"];
const PRESETS = ["15m", "1h", "6h", "24h", "7d", "31d"];
// A trace look-up searches at least the last day: these ranges already cover it.
const DAY_OR_MORE = ["24h", "7d", "31d"];
const DAY_MS = 86_400_000;
const TAIL_EVERY_MS = 2000;
const TAIL_OVERLAP_MS = 60000; // late arrivals within a minute still show up in the tail
const MAX_ROWS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const KEY_STORE = "logpipe.readKey";
const BUSY_RETRIES = 5; // a read answered 429 is asked again after its Retry-After, so often
const ATTR = "attr."; // the API's prefix of an attribute filter: attr.order_id=42
const TRACE_SHOWN = 12; // characters of a trace id shown in its link (all of it on hover)

const $ = (id) => document.getElementById(id);
const state = {
  params: null, // URLSearchParams of the current search, as sent to the API
  tz: "utc", // "utc" or "local": how times are shown
  attrs: [], // [key, value] filters of the form, shown as chips
  cursors: [null], // cursors[n] loads page n
  page: 0,
  next: null,
  events: [],
  pageCount: 0, // how many of `events` the page's search answered; the rest arrived live
  ids: new Set(),
  loading: false,
  stats: null, // the last /api/stats answer for the current search
  statsError: null,
  tailTimer: null,
  tailLoop: 0, // one polling loop at a time: a loop whose number is stale stops
  failed: false, // the last search answered an error, not events
  generation: 0, // bumped by every search or page change; late answers of older ones are dropped
  statsGeneration: 0,
  keyPrompt: null, // the one pending request for a read key, shared by every caller
  services: [], // names from /api/services, for the suggestions
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
async function getPage(params, cursor, generation, progress) {
  const limit = Number(params.get("limit"));
  let body = await getJson(logsUrl(params, cursor));
  const events = body.events;
  let requests = 1;
  while (!body.complete && body.cursor && events.length < limit) {
    if (generation !== state.generation) return null;
    if (progress) {
      progress(`Searching… ${events.length} found so far (${requests} request${requests === 1 ? "" : "s"})`);
    }
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

function serviceNames(text) {
  const names = text.split(",").map((s) => s.trim().toLowerCase()).filter(Boolean);
  return [...new Set(names)];
}

// The form's query, or null when it cannot be sent (the error says why).
function formParams() {
  const typed = $("attr-input").value.trim();
  if (typed) {
    const eq = typed.indexOf("=");
    if (eq < 1) {
      showError(`An attribute filter is key=value, got ${JSON.stringify(typed)}`);
      return null;
    }
    addAttr(typed.slice(0, eq).trim(), typed.slice(eq + 1).trim());
    $("attr-input").value = "";
  }
  const params = new URLSearchParams();
  for (const service of serviceNames($("service").value)) params.append("service", service);
  for (const box of document.querySelectorAll("#levels input:checked")) {
    params.append("level", box.value);
  }
  if ($("range").value === "custom") {
    if ($("since").value.trim()) params.set("since", $("since").value.trim());
    if ($("until").value.trim()) params.set("until", $("until").value.trim());
  } else {
    params.set("since", $("range").value);
  }
  if ($("q").value) params.set("q", $("q").value);
  if ($("trace-id").value.trim()) params.set("trace_id", $("trace-id").value.trim());
  for (const [key, value] of state.attrs) params.append(ATTR + key, value);
  params.set("limit", $("limit").value);
  return params;
}

function fillForm(params) {
  $("service").value = params.getAll("service").join(", ");
  const levels = new Set(params.getAll("level"));
  for (const box of document.querySelectorAll("#levels input")) box.checked = levels.has(box.value);
  $("q").value = params.get("q") || "";
  $("trace-id").value = params.get("trace_id") || "";
  const limit = params.get("limit") || "100";
  if (![...$("limit").options].some((o) => o.value === limit)) {
    // A page size from a hand-made URL: offered too, so the form still sends it.
    $("limit").append(new Option(limit));
  }
  $("limit").value = limit;
  const since = params.get("since");
  if (since && (!PRESETS.includes(since) || params.get("until"))) {
    $("range").value = "custom";
    $("since").value = since;
    $("until").value = params.get("until") || "";
  } else {
    $("range").value = since || "1h";
  }
  state.attrs = [];
  for (const [name, value] of params) {
    if (name.startsWith(ATTR)) state.attrs.push([name.slice(ATTR.length), value]);
  }
  renderChips();
  showCustom();
}

function addAttr(key, value) {
  if (!state.attrs.some(([k, v]) => k === key && v === value)) state.attrs.push([key, value]);
  renderChips();
}

function renderChips() {
  const list = $("chips");
  list.replaceChildren(
    ...state.attrs.map(([key, value], n) => {
      const li = document.createElement("li");
      li.className = "chip";
      const text = document.createElement("span");
      text.textContent = `${key} = ${value}`;
      text.title = `only events whose attribute ${key} is ${value}`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `remove the filter ${key}=${value}`);
      remove.addEventListener("click", () => {
        state.attrs.splice(n, 1);
        renderChips();
        search(null);
      });
      li.append(text, remove);
      return li;
    }),
  );
  list.hidden = state.attrs.length === 0;
}

function showCustom() {
  const custom = $("range").value === "custom";
  for (const el of document.querySelectorAll("label.custom")) el.hidden = !custom;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

// The service field suggests names; after a comma, names to add to those already typed.
function suggestServices() {
  const typed = $("service").value;
  const cut = typed.lastIndexOf(",");
  const prefix = cut < 0 ? "" : `${typed.slice(0, cut + 1)} `;
  const taken = new Set(serviceNames(prefix));
  $("services").replaceChildren(
    ...state.services
      .filter((s) => !taken.has(s.service))
      .map((s) => {
        const option = document.createElement("option");
        option.value = prefix + s.service;
        option.textContent = `last seen ${s.last_seen}`;
        return option;
      }),
  );
}

// --- the URL ------------------------------------------------------------------------------

function pageUrl(params, tz) {
  const query = new URLSearchParams(params);
  if (tz === "local") query.set("tz", "local");
  return `?${query}`;
}

function urlState() {
  const params = new URLSearchParams(location.search);
  const tz = params.get("tz") === "local" ? "local" : "utc";
  params.delete("tz");
  return { params, tz };
}

function remember(push) {
  const url = pageUrl(state.params, state.tz);
  if (url === location.search) return;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

async function onPopState() {
  const { params, tz } = urlState();
  setTz(tz);
  if (state.params && params.toString() === state.params.toString()) {
    renderAll();
    return;
  }
  fillForm(params);
  await run(params, false);
}

// --- searching and paging -----------------------------------------------------------------

async function search(event) {
  if (event) event.preventDefault();
  const params = formParams();
  if (params) await run(params, true);
}

// Starts the search `params`: the rows of the previous one go at once, so no old result is
// ever shown under the new form.
async function run(params, push) {
  stopTail();
  state.params = params;
  state.cursors = [null];
  state.page = 0;
  state.events = [];
  state.pageCount = 0;
  state.ids = new Set();
  state.next = null;
  remember(push);
  loadStats();
  await loadPage(0);
  scheduleTail();
}

// Shows page `index` of the current search; the page number changes only once it is in.
async function loadPage(index) {
  const generation = ++state.generation;
  // Until this page is in, its cursor is unknown: no paging from a page still loading.
  $("older").disabled = true;
  $("newer").disabled = true;
  state.loading = true;
  showLoading(index === 0 ? "Searching…" : `Loading page ${index + 1}…`);
  try {
    const body = await getPage(state.params, state.cursors[index], generation, showLoading);
    if (!body || generation !== state.generation) return;
    showError(null);
    state.failed = false;
    state.page = index;
    state.events = body.events;
    state.pageCount = body.events.length;
    state.ids = new Set(body.events.map((e) => e.id));
    state.next = body.cursor;
  } catch (err) {
    if (generation !== state.generation) return;
    showError(err.message);
    if (index === 0) {
      state.failed = true;
      state.page = 0;
      state.events = [];
      state.pageCount = 0;
      state.ids = new Set();
      state.next = null;
    }
  } finally {
    if (generation === state.generation) {
      state.loading = false;
      $("loading").hidden = true;
      $("results").removeAttribute("aria-busy");
      render();
    }
  }
}

function showLoading(text) {
  document.querySelector("#results tbody").replaceChildren();
  $("empty").hidden = true;
  $("results").setAttribute("aria-busy", "true");
  $("loading-text").textContent = text;
  $("loading").hidden = false;
  $("summary").textContent = text;
}

function older() {
  if (!state.next || state.loading) return;
  state.cursors[state.page + 1] = state.next;
  stopTail();
  loadPage(state.page + 1).then(scheduleTail);
}

function newer() {
  if (state.page === 0 || state.loading) return;
  stopTail();
  loadPage(state.page - 1).then(scheduleTail);
}

// A trace id's link: the whole trace, every service, every level, at least the last day.
function traceParams(event) {
  const params = new URLSearchParams();
  params.set("trace_id", event.trace_id);
  const since = state.params ? state.params.get("since") : null;
  const until = state.params ? state.params.get("until") : null;
  const recent = Date.parse(event.timestamp) >= Date.now() - DAY_MS;
  if (recent && !(DAY_OR_MORE.includes(since) && !until)) {
    params.set("since", "24h");
  } else {
    // The current range holds the event (it was found in it) and reaches back a day or more.
    if (since) params.set("since", since);
    if (until) params.set("until", until);
  }
  params.set("limit", state.params ? state.params.get("limit") : "100");
  return params;
}

function showTrace(event) {
  const params = traceParams(event);
  fillForm(params);
  run(params, true);
}

function filterOnAttribute(key, value) {
  addAttr(key, value);
  search(null);
}

// --- live tail ----------------------------------------------------------------------------

function tailAllowed() {
  // Only the newest page of an open-ended range can grow.
  return state.params && !state.failed && state.page === 0 && !state.params.get("until");
}

function stopTail() {
  clearTimeout(state.tailTimer);
  state.tailTimer = null;
  state.tailLoop += 1;
}

function scheduleTail() {
  stopTail();
  const loop = state.tailLoop;
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
  if (state.loading) return;
  const generation = state.generation;
  const params = new URLSearchParams(state.params);
  const newest = state.events.length ? Date.parse(state.events[0].timestamp) : null;
  if (newest !== null) params.set("since", new Date(newest - TAIL_OVERLAP_MS).toISOString());
  params.set("limit", "1000");
  let note = "";
  try {
    const body = await getPage(params, null, generation, null);
    if (!body || generation !== state.generation || state.loading) return;
    const fresh = body.events.filter((e) => !state.ids.has(e.id));
    if (fresh.length && state.events.length + fresh.length <= MAX_ROWS) {
      for (const e of fresh) state.ids.add(e.id);
      state.events = fresh.concat(state.events);
      state.events.sort((a, b) => (a.timestamp < b.timestamp ? 1 : a.timestamp > b.timestamp ? -1 : 0));
      render(new Set(fresh.map((e) => e.id)));
    } else if (fresh.length) {
      note = ` (not shown: the page holds ${state.events.length} rows; search again)`;
    }
    showError(null);
    const time = formatTime(new Date().toISOString()).slice(11, 19);
    $("tail-status").textContent = `● Live tail: checked ${time} ${zoneName()}, ${fresh.length} new${note}`;
  } catch (err) {
    showError(`Live tail: ${err.message}`);
  }
  if (loop === state.tailLoop && $("tail").checked && tailAllowed()) {
    state.tailTimer = setTimeout(() => tail(loop), TAIL_EVERY_MS);
  }
}

// --- times --------------------------------------------------------------------------------

function setTz(tz) {
  state.tz = tz;
  $(tz === "local" ? "tz-local" : "tz-utc").checked = true;
}

// "UTC", or the browser's offset from it now ("UTC+05:30").
function zoneName() {
  if (state.tz === "utc") return "UTC";
  const east = -new Date().getTimezoneOffset();
  const sign = east < 0 ? "-" : "+";
  return `UTC${sign}${pad(Math.floor(Math.abs(east) / 60))}:${pad(Math.abs(east) % 60)}`;
}

function showTimeHead() {
  const head = $("time-head");
  head.textContent = state.tz === "utc" ? "Time (UTC)" : `Time (local, ${zoneName()})`;
  head.title = state.tz === "utc" ? "" : Intl.DateTimeFormat().resolvedOptions().timeZone || "";
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

// "2026-01-31 08:00:00.123" in UTC or in the browser's zone.
function formatTime(iso) {
  if (state.tz === "utc") return iso.replace("T", " ").replace("Z", "");
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return `${day} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function onTzChange() {
  setTz($("tz-local").checked ? "local" : "utc");
  if (state.params) remember(true);
  renderAll();
}

// --- rendering ----------------------------------------------------------------------------

function renderAll() {
  if (!state.loading) renderTable(new Set());
  renderChart();
  showTimeHead();
}

function who(params) {
  if (params.get("trace_id")) return `trace ${params.get("trace_id")}`;
  const services = params.getAll("service");
  return services.length ? services.join(", ") : "every service";
}

function render(freshIds) {
  renderTable(freshIds || new Set());
  const n = state.events.length;
  const arrived = n - state.pageCount;
  const first = state.page * Number(state.params.get("limit"));
  let text;
  if (state.failed) {
    text = "The search failed: see the message above.";
  } else if (n) {
    text = `${state.pageCount} event${state.pageCount === 1 ? "" : "s"} of ${who(state.params)} · page ${state.page + 1}`;
    if (state.page) text += ` (after ${first} newer)`;
    if (state.next) text += " · older ones on the next pages";
    if (arrived) text += ` · ${arrived} more arrived since (live tail)`;
  } else {
    text = `No events of ${who(state.params)} on this page.`;
  }
  $("summary").textContent = text;
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
  showTimeHead();
  const rows = [];
  for (const event of state.events) {
    const level = LEVELS.includes(event.level) ? event.level : "info";
    const tr = document.createElement("tr");
    tr.className = `event row-${level}` + (freshIds.has(event.id) ? " fresh" : "");
    tr.dataset.id = event.id;
    const time = cell(formatTime(event.timestamp), "time");
    time.title = event.timestamp;
    const badge = document.createElement("span");
    badge.className = `badge lv-${level}`;
    badge.textContent = event.level;
    const levelCell = cell("", "lvl");
    levelCell.append(badge);
    const message = document.createElement("div");
    message.className = "msg-text";
    message.textContent = event.message;
    const messageCell = cell("", "msg");
    messageCell.append(message);
    tr.append(time, levelCell, cell(event.service, "svc"), messageCell, attributesCell(event));
    tr.addEventListener("click", (click) => {
      if (click.target.closest("a, button")) return;
      if (String(window.getSelection())) return; // selecting text is not a click on the row
      toggleDetail(tr, event);
    });
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

// The trace id as a link to the whole trace, then each attribute as a compact button that
// filters on it (the full value on hover, and in the row's detail).
function attributesCell(event) {
  const td = cell("", "attrs");
  if (event.trace_id) {
    const link = document.createElement("a");
    link.className = "trace";
    link.href = pageUrl(traceParams(event), state.tz);
    link.title = `trace ${event.trace_id}: show the whole trace across services`;
    link.textContent =
      event.trace_id.length > TRACE_SHOWN ? `${event.trace_id.slice(0, TRACE_SHOWN)}…` : event.trace_id;
    link.addEventListener("click", (click) => {
      if (click.ctrlKey || click.metaKey || click.shiftKey || click.button !== 0) return;
      click.preventDefault();
      showTrace(event);
    });
    td.append(link);
  }
  for (const [key, raw] of Object.entries(event.attributes || {})) {
    const value = String(raw);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "attr";
    button.dataset.key = key;
    button.title = `${key}=${value}\nclick: only events with this value`;
    const k = document.createElement("span");
    k.className = "k";
    k.textContent = key;
    const v = document.createElement("span");
    v.className = "v";
    v.textContent = value;
    button.append(k, v);
    button.addEventListener("click", () => filterOnAttribute(key, value));
    td.append(button);
  }
  return td;
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
  td.colSpan = 5;
  const pre = document.createElement("pre");
  pre.textContent = JSON.stringify(event, null, 2);
  td.append(pre);
  detail.append(td);
  tr.after(detail);
}

// --- the chart: counts over the whole range, from /api/stats -------------------------------

async function loadStats() {
  const generation = ++state.statsGeneration;
  state.stats = null;
  state.statsError = null;
  renderChart();
  const query = new URLSearchParams();
  for (const service of state.params.getAll("service")) query.append("service", service);
  for (const name of ["since", "until"]) {
    if (state.params.get(name)) query.set(name, state.params.get(name));
  }
  try {
    const body = await getJson(`/api/stats?${query}`);
    if (generation !== state.statsGeneration) return;
    state.stats = body;
  } catch (err) {
    if (generation !== state.statsGeneration) return;
    state.statsError = err.message;
  }
  renderChart();
}

function svg(name, attributes, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function stepText(seconds) {
  const units = [[86400, "day"], [3600, "hour"], [60, "minute"], [1, "second"]];
  for (const [size, name] of units) {
    if (seconds % size === 0) {
      const n = seconds / size;
      return n === 1 ? name : `${n} ${name}s`;
    }
  }
  return `${seconds} seconds`;
}

function renderChart() {
  const chart = $("chart");
  const legend = $("legend");
  // Drawn in the element's own pixels, so text and bars keep their shape at any width.
  const pixels = Math.max(chart.clientWidth, 300);
  chart.setAttribute("viewBox", `0 0 ${pixels} 150`);
  chart.replaceChildren();
  legend.replaceChildren();
  $("chart-partial").hidden = true;
  $("chart-total").textContent = "";
  delete $("chart").dataset.total;
  const note = (text) => chart.append(svg("text", { x: pixels / 2, y: 80, "text-anchor": "middle" }, text));
  const params = state.params;
  $("chart-note").textContent =
    params && (params.get("q") || params.get("trace_id") || state.attrs.length)
      ? "The counts are of the services, levels and range searched; the message, trace and attribute filters do not apply to them."
      : "";
  if (!params) return;
  if (state.statsError) {
    $("chart-title").textContent = "Events by level over the whole range";
    note(`counts unavailable: ${state.statsError}`);
    return;
  }
  const stats = state.stats;
  if (!stats) {
    $("chart-title").textContent = "Events by level over the whole range";
    note("counting…");
    return;
  }
  const chosen = params.getAll("level");
  const levels = chosen.length ? LEVELS.filter((l) => chosen.includes(l)) : LEVELS;
  const counts = stats.buckets.map((b) => Object.fromEntries(levels.map((l) => [l, b.counts[l] || 0])));
  const totals = Object.fromEntries(levels.map((l) => [l, counts.reduce((s, c) => s + c[l], 0)]));
  const total = levels.reduce((s, l) => s + totals[l], 0);
  $("chart-title").textContent = `Events per ${stepText(stats.step_s)} by level over the whole range`;
  $("chart-total").textContent = `${total.toLocaleString("en")} event${total === 1 ? "" : "s"}`;
  chart.dataset.total = String(total);
  $("chart-partial").hidden = stats.complete;
  if (!stats.buckets.length) return;
  const peak = Math.max(1, ...counts.map((c) => levels.reduce((s, l) => s + c[l], 0)));
  const [left, top, plotW, plotH] = [40, 8, pixels - 50, 118];
  const step = plotW / stats.buckets.length;
  chart.append(svg("line", { class: "axis", x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH }));
  chart.append(svg("text", { x: left - 6, y: top + 10, "text-anchor": "end" }, String(peak)));
  chart.append(svg("text", { x: left - 6, y: top + plotH, "text-anchor": "end" }, "0"));
  const clock = (iso) => formatTime(iso).slice(0, 16);
  stats.buckets.forEach((bucket, i) => {
    const c = counts[i];
    const group = svg("g", {});
    const label = levels.filter((l) => c[l]).map((l) => `${c[l]} ${l}`).join(", ");
    group.append(svg("title", {}, `${clock(bucket.t)} ${zoneName()}: ${label || "none"}`));
    let y = top + plotH;
    for (const level of levels) {
      if (!c[level]) continue;
      const h = (c[level] / peak) * plotH;
      y -= h;
      const x = left + i * step + step * 0.1;
      group.append(svg("rect", { class: `f-${level}`, x, y, width: Math.max(step * 0.8, 1), height: h }));
    }
    chart.append(group);
  });
  const firstT = stats.buckets[0].t;
  const lastT = stats.buckets[stats.buckets.length - 1].t;
  chart.append(svg("text", { x: left, y: 146 }, `${clock(firstT)} ${zoneName()}`));
  chart.append(svg("text", { x: left + plotW, y: 146, "text-anchor": "end" }, `${clock(lastT)} ${zoneName()}`));
  for (const level of levels) {
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
    state.services = body.services;
    suggestServices();
  } catch (err) {
    showError(`Services: ${err.message}`);
  }
}

async function start() {
  $("search").addEventListener("submit", search);
  $("range").addEventListener("change", showCustom);
  $("older").addEventListener("click", older);
  $("newer").addEventListener("click", newer);
  $("tail").addEventListener("change", scheduleTail);
  $("service").addEventListener("input", suggestServices);
  $("tz-utc").addEventListener("change", onTzChange);
  $("tz-local").addEventListener("change", onTzChange);
  window.addEventListener("resize", renderChart);
  window.addEventListener("popstate", onPopState);
  const { params, tz } = urlState();
  setTz(tz);
  fillForm(params);
  const services = loadServices();
  // Every service is the default: a search needs no choice first.
  const initial = formParams();
  if (initial) await run(initial, false);
  await services;
  document.body.dataset.ready = "true";
}

start();
