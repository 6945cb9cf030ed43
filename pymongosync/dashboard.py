"""The operator's dashboard, served by the process itself at ``GET /``: one page, no build step
and nothing fetched from elsewhere (inline CSS and JavaScript, charts drawn on ``<canvas>``).

The page polls ``GET /api/v1/progress`` every second and keeps what it needs in the browser:
a time series of lag and events applied per second for the charts, and successive copy figures
per namespace for rates and ETAs. Its Pause/Resume/Commit buttons ask for confirmation, then
POST ``{}`` to the API and show the API's ``errorDescription`` when it refuses. Every figure the
API may leave out (``verification`` before there is a verifier, anything in IDLE or
INITIALIZING) is shown as "not available" rather than breaking the page.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pymongosync dashboard</title>
<link rel="icon" href="data:,">
<style>
  :root { --fg: #1d2330; --muted: #667085; --line: #d9dee8; --bg: #f6f7fb; --card: #fff;
          --accent: #1f6feb; --good: #1a7f37; --warn: #9a6700; --bad: #cf222e; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
         color: var(--fg); background: var(--bg); }
  header { display: flex; flex-wrap: wrap; align-items: center; gap: 12px 20px;
           padding: 14px 24px; background: var(--card); border-bottom: 1px solid var(--line); }
  header h1 { font-size: 18px; margin: 0; }
  main { padding: 18px 24px; display: grid; gap: 16px;
         grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); }
  section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
            padding: 14px 16px; min-width: 0; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
       margin: 0 0 10px; }
  .badge { display: inline-block; padding: 3px 10px; border-radius: 999px; font-weight: 600;
           background: #e7ecf5; }
  .badge.RUNNING { background: #dafbe1; color: var(--good); }
  .badge.PAUSED, .badge.INITIALIZING { background: #fff8c5; color: var(--warn); }
  .badge.COMMITTING, .badge.REVERSING { background: #ddf4ff; color: var(--accent); }
  .badge.COMMITTED { background: #1a7f37; color: #fff; }
  .badge.FAILED, .badge.UNREACHABLE { background: #ffebe9; color: var(--bad); }
  .muted { color: var(--muted); }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px; margin: 0; }
  dt { color: var(--muted); } dd { margin: 0; font-variant-numeric: tabular-nums; }
  .bar { position: relative; height: 14px; background: #eceff4; border-radius: 7px;
         overflow: hidden; min-width: 80px; }
  .bar > span { position: absolute; inset: 0 auto 0 0; background: var(--accent);
                border-radius: 7px; transition: width .4s; }
  .bar.done > span { background: var(--good); }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
           white-space: nowrap; }
  th { color: var(--muted); font-weight: 500; } td.bar-cell { width: 32%; }
  td.num, th.num { text-align: right; }
  #verification th, #verification td { padding: 4px 6px; white-space: normal; }
  canvas { width: 100%; height: 160px; display: block; }
  .buttons { display: flex; gap: 8px; margin-left: auto; }
  button { font: inherit; padding: 6px 14px; border-radius: 6px; border: 1px solid var(--line);
           background: var(--card); cursor: pointer; }
  button:disabled { opacity: .45; cursor: not-allowed; }
  button#commit:not(:disabled) { background: var(--good); color: #fff; border-color: var(--good); }
  #message { min-height: 1.4em; }
  #message.error { color: var(--bad); } #message.ok { color: var(--good); }
  #banner { display: none; padding: 10px 24px; background: #ffebe9; color: var(--bad); }
  #banner.shown { display: block; }
  ul { margin: 0; padding-left: 18px; } li { margin: 2px 0; }
  #next-step { font-size: 15px; }
</style>
</head>
<body>
<header>
  <h1>pymongosync</h1>
  <span id="state" class="badge">loading</span>
  <span id="phase" class="muted">-</span>
  <span id="direction" class="muted"></span>
  <div class="buttons">
    <button id="pause" disabled>Pause</button>
    <button id="resume" disabled>Resume</button>
    <button id="commit" disabled>Commit</button>
  </div>
</header>
<div id="banner"></div>
<main>
  <section class="wide">
    <h2>Next step</h2>
    <div id="next-step">loading</div>
    <div id="message"></div>
  </section>
  <section>
    <h2>Copy</h2>
    <div class="bar" id="copy-bar"><span style="width:0%"></span></div>
    <dl style="margin-top:10px">
      <dt>copied</dt><dd id="copy-percent">-</dd>
      <dt>bytes</dt><dd id="copy-bytes">-</dd>
      <dt>documents</dt><dd id="copy-documents">-</dd>
      <dt>partitions</dt><dd id="copy-partitions">-</dd>
      <dt>rate</dt><dd id="copy-rate">-</dd>
      <dt>ETA</dt><dd id="copy-eta">-</dd>
    </dl>
  </section>
  <section>
    <h2>Change events</h2>
    <dl>
      <dt>lag</dt><dd id="lag">-</dd>
      <dt>events applied</dt><dd id="events">-</dd>
      <dt>events/s</dt><dd id="events-rate">-</dd>
      <dt>stage</dt><dd id="cea-stage">-</dd>
      <dt>canCommit</dt><dd id="can-commit">-</dd>
      <dt>canWrite</dt><dd id="can-write">-</dd>
    </dl>
  </section>
  <section>
    <h2>Verification</h2>
    <div id="verification" class="muted">not available</div>
  </section>
  <section>
    <h2>Lag (seconds)</h2>
    <canvas id="lag-chart" data-points="0"></canvas>
  </section>
  <section>
    <h2>Events applied per second</h2>
    <canvas id="events-chart" data-points="0"></canvas>
  </section>
  <section>
    <h2>Warnings</h2>
    <div id="warnings" class="muted">none</div>
  </section>
  <section class="wide">
    <h2>Namespaces</h2>
    <table>
      <thead><tr><th>namespace</th><th>progress</th><th class="num">documents</th>
        <th class="num">bytes</th><th class="num">partitions</th><th class="num">rate</th>
        <th class="num">ETA</th></tr></thead>
      <tbody id="namespaces"><tr><td colspan="7" class="muted">not available yet</td></tr></tbody>
    </table>
  </section>
</main>
<script>
"use strict";
(function () {
  const API = "/api/v1/";
  const HISTORY_SECONDS = 300;   // what the charts show
  const RATE_WINDOW_SECONDS = 10; // rates are measured over this much of the past
  // generation: bumped by stop(), so that a poll already waiting for its answer then renders
  // nothing (it would undo what the caller of stop() set on the page).
  const state = { samples: [], copy: [], namespaces: new Map(), timer: null, last: null,
                  busy: false, generation: 0 };
  const $ = (id) => document.getElementById(id);
  const isNumber = (v) => typeof v === "number" && Number.isFinite(v);

  function bytes(n) {
    if (!isNumber(n)) return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }
  function count(n) { return isNumber(n) ? n.toLocaleString("en-US") : "-"; }
  function duration(s) {
    if (!isNumber(s) || s < 0) return "-";
    s = Math.round(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") +
      " min";
  }
  function text(id, value) { $(id).textContent = value; }
  function setBar(bar, fraction, done) {
    const f = Math.max(0, Math.min(1, isNumber(fraction) ? fraction : 0));
    bar.firstElementChild.style.width = (f * 100).toFixed(1) + "%";
    bar.classList.toggle("done", !!done);
    bar.dataset.fraction = f.toFixed(4);
  }
  // Rate of `value` over the last RATE_WINDOW_SECONDS of `series` ([{t, v}]).
  function rate(series) {
    if (series.length < 2) return null;
    const last = series[series.length - 1];
    let first = series[0];
    for (const point of series) {
      if (last.t - point.t <= RATE_WINDOW_SECONDS) { first = point; break; }
    }
    if (last.t <= first.t) return null;
    return (last.v - first.v) / (last.t - first.t);
  }
  function keep(series, t, v, seconds) {
    series.push({ t: t, v: v });
    while (series.length > 2 && t - series[0].t > seconds) series.shift();
  }

  function nextStep(p) {
    const lag = p.lagTimeSeconds;
    if (p.error) return "The migration stopped on a fatal error (" + p.error.name + "): fix " +
      "the cause, run `mongosync reset`, then start a new migration.";
    switch (p.state) {
      case "INITIALIZING": return "mongosync is connecting to the clusters: wait.";
      case "IDLE": return "Start a migration: POST /api/v1/start with a body such as " +
        '{"source": "cluster0", "destination": "cluster1"} (run `mongosync check` first ' +
        "to see what pre-flight will say).";
      case "PAUSED": return "Paused: press Resume to continue.";
      case "COMMITTING": return "Committing: wait for COMMITTED" +
        (p.canWrite ? " (the destination already takes writes)." : ".");
      case "COMMITTED": return "Done: the destination takes writes; point your applications " +
        "at it.";
      case "REVERSING": return "Reversing: wait for RUNNING in the other direction.";
      case "RUNNING":
        if (p.standby) return "This process is standing by; the owner of the migration " +
          "answers on its own port.";
        if (p.canCommit) return "Lag is " + lag + " s: stop writes to the source, then press " +
          "Commit.";
        if (p.info === "change event application") return lag === null || lag === undefined ?
          "Change event application is starting: wait." :
          "Lag is " + lag + " s: wait until it is at most 30 s, then commit.";
        return "The initial copy is running: wait; commit becomes possible once it has " +
          "finished and lag is at most 30 s.";
    }
    return "See GET /api/v1/progress.";
  }

  function drawChart(canvas, series, unit) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 400, height = canvas.clientHeight || 160;
    canvas.width = width * ratio; canvas.height = height * ratio;
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const left = 46, right = 8, top = 8, bottom = 20;
    const w = width - left - right, h = height - top - bottom;
    const values = series.map((p) => p.v).filter(isNumber);
    // The time axis grows with the data, from one minute up to HISTORY_SECONDS.
    const span = series.length ? series[series.length - 1].t - series[0].t : 0;
    const window_ = Math.min(HISTORY_SECONDS, Math.max(60, span));
    const peak = Math.max(1, ...values);
    const scale = Math.pow(10, Math.floor(Math.log10(peak)));
    const max = Math.ceil(peak / scale) * scale;
    g.font = "11px system-ui, sans-serif"; g.fillStyle = "#667085"; g.strokeStyle = "#d9dee8";
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = top + h - h * i / 4;
      g.beginPath(); g.moveTo(left, y); g.lineTo(left + w, y); g.stroke();
      const label = max * i / 4;
      g.fillText(String(Number(label.toFixed(2))) + unit, 2, y + 4);
    }
    g.fillText("-" + Math.round(window_ / 60) + " min", left, height - 4);
    g.fillText("now", left + w - 22, height - 4);
    canvas.dataset.points = String(values.length);
    canvas.dataset.last = values.length ? String(values[values.length - 1]) : "";
    if (series.length < 2) return;
    const now = series[series.length - 1].t;
    g.strokeStyle = "#1f6feb"; g.lineWidth = 2; g.beginPath();
    let started = false;
    for (const point of series) {
      if (!isNumber(point.v)) { started = false; continue; }
      const x = left + w - (now - point.t) / window_ * w;
      const y = top + h - point.v / max * h;
      if (x < left) continue;
      if (started) g.lineTo(x, y); else { g.moveTo(x, y); started = true; }
    }
    g.stroke();
  }

  function renderNamespaces(list, t, copying) {
    const body = $("namespaces");
    if (!Array.isArray(list) || list.length === 0) {
      body.innerHTML = '<tr><td colspan="7" class="muted">not available yet</td></tr>';
      return;
    }
    const rows = [];
    for (const ns of list) {
      const name = String(ns.namespace);
      let history = state.namespaces.get(name);
      if (!history) { history = []; state.namespaces.set(name, history); }
      keep(history, t, ns.copiedDocuments || 0, RATE_WINDOW_SECONDS * 3);
      const done = ns.partitions > 0 && ns.partitionsDone >= ns.partitions;
      const fraction = done ? 1 : (ns.estimatedBytes ? ns.copiedBytes / ns.estimatedBytes :
        (ns.estimatedDocuments ? ns.copiedDocuments / ns.estimatedDocuments : 0));
      const perSecond = copying && !done ? rate(history) : null;
      const remaining = (ns.estimatedDocuments || 0) - (ns.copiedDocuments || 0);
      const row = document.createElement("tr");
      row.dataset.namespace = name;
      row.innerHTML = '<td class="ns"></td><td class="bar-cell"><div class="bar"><span>' +
        '</span></div></td><td class="num docs"></td><td class="num bytes"></td>' +
        '<td class="num parts"></td><td class="num rate"></td><td class="num eta"></td>';
      row.querySelector(".ns").textContent = name;
      setBar(row.querySelector(".bar"), fraction, done);
      row.querySelector(".docs").textContent = count(ns.copiedDocuments) + " / " +
        count(ns.estimatedDocuments);
      row.querySelector(".bytes").textContent = bytes(ns.copiedBytes) + " / " +
        bytes(ns.estimatedBytes);
      row.querySelector(".parts").textContent = count(ns.partitionsDone) + " / " +
        count(ns.partitions);
      row.querySelector(".rate").textContent = done ? "done" :
        (perSecond ? count(Math.round(perSecond)) + " docs/s" : "-");
      row.querySelector(".eta").textContent = done ? "-" :
        (perSecond > 0 ? duration(remaining / perSecond) : "-");
      rows.push(row);
    }
    body.replaceChildren(...rows);
  }

  function renderVerification(v) {
    const box = $("verification");
    if (!v || typeof v !== "object" || (!v.source && !v.destination)) {
      box.className = "muted"; box.textContent = "not available"; return;
    }
    const fields = [["phase", "phase"], ["estimatedDocumentCount", "documents (estimate)"],
      ["hashedDocumentCount", "hashed"], ["scannedCollectionCount", "collections scanned"],
      ["totalCollectionCount", "collections"], ["lagTimeSeconds", "lag (s)"]];
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th></th><th>source</th><th>destination</th></tr></thead>";
    const body = document.createElement("tbody");
    for (const [key, label] of fields) {
      const row = document.createElement("tr");
      const show = (side) => {
        const value = (v[side] || {})[key];
        return value === undefined || value === null ? "-" :
          (isNumber(value) ? count(value) : String(value));
      };
      for (const cell of [label, show("source"), show("destination")]) {
        const td = document.createElement("td"); td.textContent = cell; row.appendChild(td);
      }
      body.appendChild(row);
    }
    table.appendChild(body);
    box.className = ""; box.replaceChildren(table);
  }

  function render(p, t) {
    state.last = p;
    t = isNumber(t) ? t : Date.now() / 1000;
    const s = p.state || "UNKNOWN";
    const badge = $("state");
    badge.textContent = p.error ? s + " (failed)" : s;
    badge.className = "badge " + (p.error ? "FAILED" : s);
    const details = p.copyDetails || {};
    text("phase", [details.phase || p.info, p.ceaStage].filter(Boolean).join(" · ") || "-");
    const mapping = p.directionMapping;
    text("direction", mapping ? mapping.Source + "  \u2192  " + mapping.Destination : "");
    text("next-step", nextStep(p));

    const copy = p.collectionCopy;
    const copying = p.info === "collection copy" && s === "RUNNING";
    if (copy && isNumber(copy.estimatedCopiedBytes)) {
      const total = Math.max(copy.estimatedTotalBytes || 1, 1);
      const finished = p.info && p.info !== "collection copy";
      const fraction = finished ? 1 : Math.min(copy.estimatedCopiedBytes / total, 1);
      keep(state.copy, t, copy.estimatedCopiedBytes, RATE_WINDOW_SECONDS * 3);
      const perSecond = copying ? rate(state.copy) : null;
      setBar($("copy-bar"), fraction, finished);
      text("copy-percent", (fraction * 100).toFixed(1) + " %");
      text("copy-bytes", bytes(copy.estimatedCopiedBytes) + " of " + bytes(total));
      text("copy-rate", perSecond ? bytes(perSecond) + "/s" : "-");
      text("copy-eta", perSecond > 0 ? duration((total - copy.estimatedCopiedBytes) / perSecond) :
        (finished ? "done" : "-"));
    } else {
      setBar($("copy-bar"), 0, false);
      for (const id of ["copy-percent", "copy-bytes", "copy-rate", "copy-eta"]) {
        text(id, "not available");
      }
    }
    text("copy-documents", isNumber(details.copiedDocuments) ? count(details.copiedDocuments) +
      " of about " + count(details.estimatedDocuments) : "not available");
    text("copy-partitions", isNumber(details.partitions) ? count(details.partitionsDone) +
      " / " + count(details.partitions) : "not available");
    renderNamespaces(details.namespaces, t, copying);

    const lag = p.lagTimeSeconds;
    text("lag", isNumber(lag) ? lag + " s" : "-");
    text("events", isNumber(p.totalEventsApplied) ? count(p.totalEventsApplied) : "-");
    text("cea-stage", p.ceaStage || "-");
    text("can-commit", String(!!p.canCommit));
    text("can-write", p.canWrite === null || p.canWrite === undefined ? "-" : String(p.canWrite));
    const previous = state.samples[state.samples.length - 1];
    let eventsPerSecond = null;
    if (previous && isNumber(p.totalEventsApplied) && isNumber(previous.events) && t > previous.t) {
      eventsPerSecond = Math.max(0, (p.totalEventsApplied - previous.events) / (t - previous.t));
    }
    state.samples.push({ t: t, lag: isNumber(lag) ? lag : null,
                         events: isNumber(p.totalEventsApplied) ? p.totalEventsApplied : null,
                         eventsPerSecond: eventsPerSecond });
    while (state.samples.length > 2 && t - state.samples[0].t > HISTORY_SECONDS) {
      state.samples.shift();
    }
    text("events-rate", isNumber(eventsPerSecond) ? eventsPerSecond.toFixed(1) : "-");
    drawChart($("lag-chart"), state.samples.map((x) => ({ t: x.t, v: x.lag })), " s");
    drawChart($("events-chart"), state.samples.map((x) => ({ t: x.t, v: x.eventsPerSecond })), "");

    renderVerification(p.verification);
    const warnings = Array.isArray(p.warnings) ? p.warnings.slice() : [];
    const box = $("warnings");
    if (warnings.length) {
      const list = document.createElement("ul");
      for (const w of warnings) {
        const li = document.createElement("li");
        li.textContent = w;
        list.appendChild(li);
      }
      box.className = ""; box.replaceChildren(list);
    } else { box.className = "muted"; box.textContent = "none"; }

    const owner = !p.standby;
    $("pause").disabled = state.busy || !(owner && s === "RUNNING");
    $("resume").disabled = state.busy || !(owner && s === "PAUSED");
    $("commit").disabled = state.busy || !(owner && s === "RUNNING" && p.canCommit);
  }

  function unreachable(reason) {
    const banner = $("banner");
    banner.textContent = "mongosync does not answer (" + reason + "); the figures below are " +
      "the last ones received. Retrying every second.";
    banner.className = "shown";
    const badge = $("state");
    badge.className = "badge UNREACHABLE";
    badge.textContent = (state.last ? state.last.state : "UNKNOWN") + " (not answering)";
    for (const id of ["pause", "resume", "commit"]) $(id).disabled = true;
  }

  async function poll() {
    const generation = state.generation;
    try {
      const answer = await fetch(API + "progress", { cache: "no-store" });
      const doc = await answer.json();
      if (generation !== state.generation) return;
      if (!doc.success) { unreachable(doc.error + ": " + doc.errorDescription); return; }
      $("banner").className = "";
      render(doc.progress || {}, Date.now() / 1000);
    } catch (err) {
      if (generation !== state.generation) return;
      unreachable(String(err && err.message ? err.message : err));
    }
  }

  const QUESTIONS = {
    pause: "Pause the migration? It stops at a checkpoint; Resume continues from there.",
    resume: "Resume the migration?",
    commit: "Commit now? Stop writes to the source first: the destination becomes the " +
      "cluster your applications use.",
  };
  async function control(endpoint) {
    if (!window.confirm(QUESTIONS[endpoint])) return;
    const message = $("message");
    state.busy = true;
    for (const id of ["pause", "resume", "commit"]) $(id).disabled = true;
    message.className = ""; message.textContent = endpoint + " ...";
    try {
      const answer = await fetch(API + endpoint, { method: "POST", body: "{}",
        headers: { "Content-Type": "application/json" } });
      let doc = {};
      try { doc = await answer.json(); } catch (e) { doc = {}; }
      if (answer.ok && doc.success) {
        message.className = "ok"; message.textContent = endpoint + ": accepted";
      } else {
        message.className = "error";
        message.textContent = endpoint + " refused: " + (doc.error || ("HTTP " + answer.status)) +
          (doc.errorDescription ? ": " + doc.errorDescription : "");
      }
    } catch (err) {
      message.className = "error"; message.textContent = endpoint + " failed: " + err;
    } finally {
      state.busy = false;
      await poll();
    }
  }
  for (const id of ["pause", "resume", "commit"]) {
    $(id).addEventListener("click", () => control(id));
  }

  window.dashboard = {
    render: render, poll: poll, state: state,
    stop: function () { clearInterval(state.timer); state.timer = null; state.generation += 1; },
  };
  poll();
  state.timer = setInterval(poll, 1000);
})();
</script>
</body>
</html>
"""
