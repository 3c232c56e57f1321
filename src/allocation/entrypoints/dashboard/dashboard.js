// The operator's dashboard: a namespace's items, live. Plain JavaScript, no dependencies.
// The token lives in this page's memory and sessionStorage only (never in a URL), and goes out
// only as an Authorization header to this origin.
"use strict";

const PAGE_SIZE = 500; // items per listing request
const MAX_ITEMS = 5000; // rows at most: the poll reads them all every POLL_MS
const POLL_MS = 3000; // the listing, for items without a stream
const HEALTH_MS = 2000; // /readyz and the namespace's stats
const RATE_WINDOW_MS = 60000; // the sale rate is over the last minute at most...
const RATE_MIN_MS = 5000; // ...and at least this much of it
const BACKOFF_MS = [500, 1000, 2000, 5000, 10000, 30000];
const SILENCE_MS = 45000; // the server sends a keep-alive every 15 s: longer means it is gone
const TOKEN_KEY = "allocation.dashboard.token";
const NAMESPACE_KEY = "allocation.dashboard.namespace";

const $ = (id) => document.getElementById(id);
let session = null; // {token, namespace, items: Map, abort: AbortController}

// Browsers open at most 6 HTTP/1.1 connections to an origin, and each stream holds one for
// good: stream a few and leave room for the polls. Over HTTP/2 they share one connection.
function streamLimit() {
  const nav = performance.getEntriesByType("navigation")[0];
  const proto = nav ? nav.nextHopProtocol : "";
  return proto === "h2" || proto === "h3" ? 50 : 4;
}

class Unauthorized extends Error {}

async function api(path, signal) {
  const response = await fetch(path, {
    headers: {Authorization: `Bearer ${session.token}`}, signal, cache: "no-store"});
  if (response.status === 401 || response.status === 403) {
    throw new Unauthorized(`the token was refused (${response.status})`);
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function listItems(signal) {
  const ns = encodeURIComponent(session.namespace);
  const found = [];
  let after = null;
  do {
    const query = `limit=${PAGE_SIZE}` + (after ? `&after=${encodeURIComponent(after)}` : "");
    const page = await api(`/v1/${ns}/items?${query}`, signal);
    found.push(...page.items);
    after = page.next;
  } while (after && found.length < MAX_ITEMS);
  return {items: found.slice(0, MAX_ITEMS), more: Boolean(after)};
}

// --- Figures, rate and time to sell out ---------------------------------------------------

function update(item) {
  const entry = session.items.get(item.sku);
  if (!entry) return;
  const before = entry.data;
  entry.data = item;
  sample(entry, Date.now());
  render(entry, before);
}

function sample(entry, now) {
  const samples = entry.samples;
  samples.push([now, entry.data.consumed]);
  // Keep one sample from before the window: the rate spans the whole window once it can.
  while (samples.length > 2 && samples[1][0] <= now - RATE_WINDOW_MS) samples.shift();
}

function rate(entry, now) {
  // Samples come every second, so the oldest kept lies at most a second before the window.
  const [first] = entry.samples;
  const span = now - first[0];
  if (span < RATE_MIN_MS) return null;
  return Math.max(0, (entry.data.consumed - first[1]) / (span / 1000)); // refunds: not negative
}

function duration(seconds) {
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  if (seconds < 86400 * 2) return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
  return "days";
}

const number = (n) => n.toLocaleString("en");

function render(entry, before) {
  const {data, cells, row} = entry;
  for (const field of ["total", "consumed", "held", "available"]) {
    const text = number(data[field]);
    if (cells[field].textContent !== text) {
      cells[field].textContent = text;
      if (before) flash(cells[field]);
    }
  }
  const share = data.total ? (100 * data.consumed) / data.total : 0;
  cells.bar.firstChild.firstChild.style.width = `${share.toFixed(1)}%`;
  cells.bar.title = `${share.toFixed(1)}% sold`;
  row.classList.toggle("sold-out", data.available === 0);
  renderRate(entry, Date.now());
}

function renderRate(entry, now) {
  const {cells, data} = entry;
  const perSecond = rate(entry, now);
  entry.rate = perSecond;
  cells.rate.textContent = perSecond === null ? "…" : perSecond.toFixed(perSecond < 10 ? 2 : 1);
  let eta = "—";
  if (data.available === 0) eta = "sold out";
  else if (perSecond) eta = duration(data.available / perSecond);
  cells.eta.textContent = eta;
}

function flash(cell) {
  cell.classList.remove("flash");
  void cell.offsetWidth; // restart the animation
  cell.classList.add("flash");
}

function renderTotals() {
  const sums = {total: 0, consumed: 0, held: 0, available: 0, rate: 0};
  for (const entry of session.items.values()) {
    for (const field of ["total", "consumed", "held", "available"]) sums[field] += entry.data[field];
    sums.rate += entry.rate || 0;
  }
  for (const cell of document.querySelectorAll("tfoot [data-sum]")) {
    const field = cell.dataset.sum;
    cell.textContent = field === "rate" ? sums.rate.toFixed(2) : number(sums[field]);
  }
}

// Every second: rates fall while nothing sells, so sample even without a change.
function tick() {
  if (!session) return;
  const now = Date.now();
  for (const entry of session.items.values()) {
    sample(entry, now);
    renderRate(entry, now);
  }
  renderTotals();
}

// --- Rows ---------------------------------------------------------------------------------

function addRow(item) {
  const row = document.createElement("tr");
  row.dataset.sku = item.sku;
  const cells = {};
  for (const field of ["sku", "total", "consumed", "held", "available", "bar", "rate", "eta", "feed"]) {
    const cell = document.createElement("td");
    cell.dataset.field = field;
    row.append(cell);
    cells[field] = cell;
  }
  cells.sku.textContent = item.sku;
  cells.bar.className = "bar";
  cells.bar.append(document.createElement("div"));
  cells.bar.firstChild.append(document.createElement("span"));
  cells.feed.textContent = "poll";
  const entry = {data: item, row, cells, samples: [], rate: null, live: false};
  session.items.set(item.sku, entry);
  sample(entry, Date.now());
  render(entry, null);
  return entry;
}

function setLive(entry, live) {
  entry.live = live;
  entry.cells.feed.textContent = live ? "stream" : "poll";
  entry.cells.feed.classList.toggle("live", live);
  entry.row.dataset.live = String(live);
}

// --- The stock stream, read with fetch (EventSource cannot send Authorization) ------------

async function follow(entry, signal) {
  const url = `/v1/${encodeURIComponent(session.namespace)}/items/${encodeURIComponent(entry.data.sku)}/stream`;
  let lastId = null;
  let failures = 0;
  while (!signal.aborted) {
    // A connection of its own to abort: when the page stops, or when the server falls silent.
    const connection = new AbortController();
    const end = () => connection.abort();
    signal.addEventListener("abort", end, {once: true});
    let watchdog = setTimeout(end, SILENCE_MS);
    const heard = () => { clearTimeout(watchdog); watchdog = setTimeout(end, SILENCE_MS); };
    try {
      const headers = {Authorization: `Bearer ${session.token}`, Accept: "text/event-stream"};
      if (lastId !== null) headers["Last-Event-ID"] = lastId; // resume: only what changed
      const response = await fetch(url, {headers, signal: connection.signal, cache: "no-store"});
      if (response.status === 401 || response.status === 403) {
        throw new Unauthorized(`the token was refused (${response.status})`);
      }
      if (response.status === 404) return; // the item is gone; the poll shows the rest
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      setLive(entry, true);
      for await (const event of serverSentEvents(response.body, heard)) {
        failures = 0;
        if (event.id !== null) lastId = event.id;
        if (event.type === "stock" && event.data) update(JSON.parse(event.data));
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof Unauthorized) return stop(error.message);
    } finally {
      clearTimeout(watchdog);
      signal.removeEventListener("abort", end);
    }
    setLive(entry, false);
    // Back off, with jitter so that many streams do not come back at one instant.
    const delay = BACKOFF_MS[Math.min(failures++, BACKOFF_MS.length - 1)];
    await pause(delay * (0.75 + Math.random() / 2), signal);
  }
}

// Yields {type, id, data} from a text/event-stream body (the WHATWG parsing rules, short);
// calls heard() on every chunk, keep-alives included.
async function* serverSentEvents(body, heard) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = {type: "message", id: null, data: []};
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      heard();
      buffer += value;
      // A trailing \r may be half of a \r\n: it waits, with any unfinished line.
      const held = buffer.endsWith("\r") ? "\r" : "";
      const lines = buffer.slice(0, buffer.length - held.length).split(/\r\n|\r|\n/);
      buffer = lines.pop() + held;
      for (const line of lines) {
        if (line === "") { // a blank line ends an event
          if (event.data.length) yield {type: event.type, id: event.id, data: event.data.join("\n")};
          event = {type: "message", id: event.id, data: []};
          continue;
        }
        if (line.startsWith(":")) continue; // a comment: the keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event.type = text;
        else if (field === "data") event.data.push(text);
        else if (field === "id") event.id = text;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, {once: true});
  });
}

// --- The listing poll, /readyz and stats -----------------------------------------------

async function poll(signal) {
  while (!signal.aborted) {
    await pause(POLL_MS, signal);
    if (signal.aborted) return;
    try {
      const {items, more} = await listItems(signal);
      let added = false;
      for (const item of items) {
        const entry = session.items.get(item.sku);
        if (!entry) { addRow(item); added = true; }
        else if (!entry.live) update(item); // a live row has fresher figures, with their seq
      }
      if (added) sortRows();
      showCount(more);
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof Unauthorized) return stop(error.message);
      status(`listing failed: ${error.message}; retrying`, true);
    }
  }
}

function sortRows() {
  const body = document.querySelector("#items tbody");
  const skus = [...session.items.keys()].sort();
  body.append(...skus.map((sku) => session.items.get(sku).row));
}

function showCount(more) {
  const live = [...session.items.values()].filter((e) => e.live).length;
  status(`${session.items.size} items${more ? ` (the first ${MAX_ITEMS})` : ""} in ` +
         `${session.namespace}: ${live} streamed live, the rest polled every ${POLL_MS / 1000} s.`);
}

async function health() {
  for (;;) {
    await Promise.all([readiness(), stats()]);
    await new Promise((resolve) => setTimeout(resolve, HEALTH_MS));
  }
}

async function readiness() {
  const ready = $("ready");
  try {
    const response = await fetch("/readyz", {cache: "no-store"});
    const parts = await response.json();
    parts.ledger = parts.ledger || (parts.redis === "ok" ? "ok" : "unknown");
    // The backlog is every namespace's: /readyz tells how far behind, and needs no token.
    $("lag").textContent = String(parts.ledger).replace(/^degraded: /, "");
    $("lag").className = parts.ledger === "ok" ? "ok" : "warn";
    ready.replaceChildren(...Object.entries(parts).map(([name, state]) => {
      const span = document.createElement("span");
      state = String(state);
      span.className = state === "ok" ? "ok" : state.startsWith("degraded") ? "warn" : "bad";
      span.textContent = `${name}: ${state} `;
      return span;
    }));
  } catch (error) {
    ready.textContent = $("lag").textContent = "unreachable";
    ready.className = $("lag").className = "bad";
  }
}

// This namespace's own figures (GET /v1/{ns}/stats, for its read tokens): /metrics shows every
// namespace's and needs a token of all of them.
async function stats() {
  if (!session) return;
  const mine = session;
  let figures;
  try {
    figures = await api(`/v1/${encodeURIComponent(mine.namespace)}/stats`, mine.abort.signal);
  } catch (error) {
    if (session !== mine) return;
    if (error instanceof Unauthorized) return stop(error.message);
    $("refusals").textContent = $("drift").textContent = "unreachable";
    return;
  }
  if (session !== mine) return;
  const drifted = figures.drift_items;
  $("drift").textContent = drifted === null ? "not measured yet"
    : drifted ? `${number(drifted)} items (run allocation drift NS --repair)` : "none";
  $("drift").className = drifted ? "warn" : "ok";
  const reasons = Object.entries(figures.refusals).filter(([, n]) => n > 0)
    .map(([reason, n]) => `${reason} ${number(n)}`);
  if (figures.units.expired) reasons.push(`held units expired ${number(figures.units.expired)}`);
  $("refusals").textContent = reasons.length ? reasons.join(", ") : "none";
  const shown = [...Object.entries(figures.units).map(([k, n]) => [`units ${k}`, n]),
                 ...Object.entries(figures.holds_ended).map(([k, n]) => [`holds ${k}`, n]),
                 ["stream clients", figures.stream_clients]];
  $("ns-metrics-box").hidden = false;
  $("ns-metrics").textContent = shown.map(([k, n]) => `${k} ${number(n)}`).join(" · ");
  renderSales(figures.sales || [], mine);
}

// A sale's waiting room: its queue, and how long serving it takes at the rate tickets were
// admitted between the last two reads of the stats (places served a second).
function renderSales(sales, mine) {
  const body = $("sales").tBodies[0];
  body.replaceChildren();
  const now = performance.now();
  for (const sale of sales) {
    const before = mine.sales?.get(sale.sale);
    const rate = before && now > before.at ? (sale.served - before.served) * 1000 / (now - before.at)
      : 0;
    const eta = sale.sold_out ? "sold out" : sale.waiting === 0 ? "served"
      : rate > 0 ? duration(sale.waiting / rate) : "…";
    const row = body.insertRow();
    row.dataset.sale = sale.sale;
    for (const value of [sale.sale, number(sale.waiting), number(sale.admitted),
                         number(sale.passes_used), number(sale.passes_expired),
                         number(sale.available), eta]) {
      row.insertCell().textContent = value;
    }
  }
  mine.sales = new Map(sales.map((sale) => [sale.sale, {served: sale.served, at: now}]));
  $("sales").hidden = sales.length === 0;
}

// --- Starting and stopping ----------------------------------------------------------------

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function stop(message) {
  if (!session) return;
  session.abort.abort();
  session = null;
  if (message) status(message, true);
}

async function start(token, namespace) {
  stop();
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(NAMESPACE_KEY, namespace);
  const abort = new AbortController();
  session = {token, namespace, items: new Map(), abort};
  const mine = session;
  document.querySelector("#items tbody").replaceChildren();
  $("items").hidden = true;
  status(`loading ${namespace}…`);
  let listing;
  try {
    listing = await listItems(abort.signal);
  } catch (error) {
    if (session === mine) stop(error instanceof Unauthorized ? error.message : `cannot list ${namespace}: ${error.message}`);
    return;
  }
  if (session !== mine) return; // another start came meanwhile
  for (const item of listing.items) addRow(item);
  sortRows();
  $("items").hidden = false;
  renderTotals();
  const limit = streamLimit();
  [...session.items.values()].slice(0, limit).forEach((entry) => follow(entry, abort.signal));
  poll(abort.signal);
  showCount(listing.more);
  if (listing.items.length === 0) status(`no items in ${namespace} yet; polling for them.`);
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("namespace").value = sessionStorage.getItem(NAMESPACE_KEY) || "";
  $("connect").addEventListener("submit", (event) => {
    event.preventDefault();
    start($("token").value.trim(), $("namespace").value.trim());
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    stop("token forgotten");
  });
  setInterval(tick, 1000);
  health();
  if ($("token").value && $("namespace").value) start($("token").value, $("namespace").value);
});
