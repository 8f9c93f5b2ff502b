// genforge playground: plain JavaScript, no build step, no external assets. Talks to the JSON API only.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { models: [], walk: [], series: [], input: null, token: sessionStorage.getItem("genforge-token") || "" };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, body, { binary = false, form = null, raw = false } = {}) {
  // raw: the response itself, once it is known to be ok (a stream of server-sent events to read as it comes)
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const init = { method: body || form ? "POST" : "GET", headers };
  if (form) init.body = form;
  else if (body) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const response = await fetch(path, init);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    if (response.status === 401) $("token-row").hidden = false;
    throw new Error(message);
  }
  showError("");
  if (raw) return response;
  if (!binary) return response.json();
  const blob = await response.blob();
  blob.headers = response.headers;
  blob.answeredBy = `answered by ${response.headers.get("x-backend")} in ${Number(response.headers.get("x-latency-ms")).toFixed(1)} ms`;
  return blob;
}

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  select.append(o);
}

function drawImage(canvas, pixels, x0 = 0) {
  // pixels: H x W (gray) or C x H x W; drawn scaled to the canvas height
  const gray = !Array.isArray(pixels[0][0]);
  const h = gray ? pixels.length : pixels[0].length, w = gray ? pixels[0].length : pixels[0][0].length;
  const tmp = document.createElement("canvas");
  tmp.width = w; tmp.height = h;
  const ctx = tmp.getContext("2d"), img = ctx.createImageData(w, h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const i = 4 * (y * w + x);
    const rgb = gray ? [pixels[y][x], pixels[y][x], pixels[y][x]] : [0, 1, 2].map((c) => pixels[Math.min(c, pixels.length - 1)][y][x]);
    img.data.set([...rgb, 255], i);
  }
  ctx.putImageData(img, 0, 0);
  const out = canvas.getContext("2d");
  out.imageSmoothingEnabled = false;
  out.drawImage(tmp, x0, 0, canvas.height, canvas.height);
}

// ---- models and cards -----------------------------------------------------------------------------------
async function loadModels() {
  try {
    state.models = (await api("/v1/models")).models;
  } catch (e) { showError(e.message); return; }
  const clf = $("classifier"), gen = $("generator"), fc = $("forecaster"), txt = $("text-model");
  clf.replaceChildren(); gen.replaceChildren(); fc.replaceChildren(); txt.replaceChildren();
  for (const m of state.models) {
    if (m.verbs.includes("classify") && m.input_shape.length === 3 && m.input_shape[0] === 1) option(clf, m.name, m.name);
    if (m.verbs.includes("generate")) option(gen, m.name, `${m.name} (${m.kind})`);
    if (m.verbs.includes("forecast")) option(fc, m.name, `${m.name} (${m.kind})`);
    if (m.verbs.includes("complete")) option(txt, m.name, `${m.name} (language model)`);
    if (m.verbs.includes("classify") && readsText(m)) option(txt, m.name, `${m.name} (text classifier)`);
  }
  $("classify").hidden = !clf.options.length;
  $("generate").hidden = !gen.options.length;
  $("forecast").hidden = !fc.options.length;
  $("text").hidden = !txt.options.length;
  fillTextControls();
  fillLabels();
  fillExplainTargets();
  renderCards();
  if (fc.options.length) loadSeries();
}

function model(name) { return state.models.find((m) => m.name === name); }

function fillLabels() {
  const m = model($("generator").value);
  for (const id of ["label", "from-label", "to-label"]) {
    const select = $(id);
    select.replaceChildren();
    if (!m || !m.conditional) { option(select, "", "(unconditional)"); select.disabled = true; continue; }
    select.disabled = false;
    if (id === "label") option(select, "", "every class");
    m.classes.forEach((c, i) => option(select, i, c));
  }
  if (m && m.conditional) $("to-label").value = String(m.classes.length - 1);
  $("recon-box").hidden = !(m && m.verbs.includes("reconstruct"));
}

function renderCards() {
  const list = $("card-list");
  list.replaceChildren();
  for (const m of state.models) {
    const card = document.createElement("article");
    card.className = "card";
    const rows = Object.entries(m.metrics).map(([k, v]) => `<tr><th>${k}</th><td>${Number(v).toPrecision(4)}</td></tr>`).join("");
    card.innerHTML = `<h3></h3><p class="muted"></p><table>${rows}</table><details class="requests"><summary>Requests</summary><ul></ul></details><details><summary>Training config</summary><pre></pre></details>`;
    card.querySelector("h3").textContent = m.name;
    for (const r of Object.values(m.requests || {})) {  // each verb as its definition says: inputs, bounds, defaults
      const li = document.createElement("li");
      li.textContent = `${r.method} ${r.path.replace("{name}", m.name)}` + (r.inputs.length ? `: ${r.inputs.map((n) => describeInput(n, r.schema)).join(", ")}` : "");
      card.querySelector(".requests ul").append(li);
    }
    const f = m.forecast, reads = f ? `context ${f.context} · horizon ${f.horizon} · levels ${f.levels.join(", ")}`
      : `input ${m.input_shape.join("×")}`;
    card.querySelector("p").textContent = `${m.kind} · ${m.task} · ${m.dataset} · ${reads} · run ${m.run_id} · backend ${m.backend}`;
    card.querySelector("pre").textContent = JSON.stringify(m.config, null, 2);
    list.append(card);
  }
}

function describeInput(name, schema) {
  // an input of a verb's JSON schema: its name, then its choices, bounds and default (none for a required one)
  const p = schema.properties[name], kind = (p.anyOf || [p]).find((k) => k.type !== "null") || {}, bits = [];
  if (kind.enum) bits.push(kind.enum.join(" | "));
  const low = kind.minimum ?? kind.exclusiveMinimum, high = kind.maximum;
  if (low !== undefined || high !== undefined) bits.push(`${low ?? ""} to ${high ?? ""}`);
  if (p.default !== undefined && p.default !== null) bits.push(`default ${p.default}`);
  return bits.length ? `${name} (${bits.join("; ")})` : name;
}

// ---- classify: a drawing pad ----------------------------------------------------------------------------
const pad = $("pad"), ink = pad.getContext("2d");
let drawing = false, last = null, cursor = { x: 140, y: 140 }, penDown = false, pending = null;

function clearPad() {
  ink.fillStyle = "#000";
  ink.fillRect(0, 0, pad.width, pad.height);
  $("bars").replaceChildren();
  $("seen").getContext("2d").clearRect(0, 0, 112, 112);
  state.input = null;
  $("overlay").hidden = true;
  $("overlay-info").textContent = "";
}

function stroke(from, to) {
  ink.strokeStyle = "#fff";
  ink.lineWidth = 22;
  ink.lineCap = ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(from.x, from.y);
  ink.lineTo(to.x, to.y);
  ink.stroke();
}

function point(event) {
  const r = pad.getBoundingClientRect();
  return { x: (event.clientX - r.left) * (pad.width / r.width), y: (event.clientY - r.top) * (pad.height / r.height) };
}

function padPixels() {
  const small = document.createElement("canvas");
  small.width = small.height = 28;
  const ctx = small.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(pad, 0, 0, 28, 28);
  const data = ctx.getImageData(0, 0, 28, 28).data;
  return Array.from({ length: 28 }, (_, y) => Array.from({ length: 28 }, (_, x) => data[4 * (28 * y + x)]));
}

function showProbabilities(prediction, classes, bars = $("bars")) {
  bars.replaceChildren();
  prediction.probabilities.forEach((p, i) => {
    const li = document.createElement("li");
    if (i === prediction.index) li.className = "top";
    li.innerHTML = `<span></span><span class="track"><span class="bar" style="display:block;width:${(100 * p).toFixed(1)}%"></span></span><span>${(100 * p).toFixed(1)}%</span>`;
    li.firstChild.textContent = classes[i];
    li.setAttribute("aria-label", `${classes[i]} ${(100 * p).toFixed(1)} percent`);
    bars.append(li);
  });
}

async function classify(fromPad = true, file = null) {
  const name = $("classifier").value;
  if (!name) return;
  const m = model(name);
  try {
    let body;
    if (file) {
      const form = new FormData();
      form.append("file", file);
      body = await api(`/v1/models/${encodeURIComponent(name)}/classify?echo_input=true&top_k=${m.classes.length}`, null, { form });
      state.input = body.predictions[0].input;
      drawImage($("seen"), state.input);
    } else if (fromPad) {
      const pixels = padPixels();
      drawImage($("seen"), pixels);
      body = await api(`/v1/models/${encodeURIComponent(name)}/classify`, { inputs: [pixels], top_k: m.classes.length });
      state.input = pixels;
    }
    showProbabilities(body.predictions[0], m.classes);
    $("latency").textContent = `answered by ${body.backend} in ${body.latency_ms.toFixed(1)} ms`;
    explain();
  } catch (e) { showError(e.message); }
}

// ---- text: a prompt's continuation as it streams, or a sentence's class and what it rests on ------------------
function readsText(m) {
  const input = (m.tensors.inputs || [])[0];
  return Boolean(input && input.datatype === "BYTES" && m.classes.length);
}

function fillTextControls() {
  const m = model($("text-model").value), classifier = Boolean(m && m.classes.length);
  for (const label of document.querySelectorAll("#text .generation")) label.hidden = classifier;
  $("text-go").textContent = classifier ? "Classify" : "Complete";
  $("completion").hidden = classifier;
  $("text-bars").hidden = $("why").hidden = !classifier;
  $("text-info").textContent = "";
}

function shade(value, scale) {
  // an attribution's background, as `genforge explain --text` colours it: white to red (towards) or blue (away)
  const fade = Math.round(255 * (1 - 0.75 * (scale > 0 ? Math.min(1, Math.abs(value) / scale) : 0)));
  return value >= 0 ? `rgb(255,${fade},${fade})` : `rgb(${fade},${fade},255)`;
}

function colourCharacters(target, characters, values) {
  const scale = Math.max(0, ...values.map(Math.abs));
  target.replaceChildren(...characters.map((c, i) => {
    const span = document.createElement("span");
    span.textContent = c;
    span.style.background = shade(values[i], scale);
    span.title = values[i].toFixed(4);
    return span;
  }));
}

async function streamCompletion(name) {
  const prompt = $("prompt").value, out = $("completion"), added = document.createElement("b");
  out.replaceChildren(prompt, added);
  const request = { model: name, prompt, stream: true, max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value), seed: Number($("text-seed").value) };
  const t0 = performance.now();
  const response = await api("/v1/completions", request, { raw: true });
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "", pieces = 0, first = null, reason = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {  // one server-sent event: "data: {json}" or "data: [DONE]"
      const data = buffer.slice(0, cut).split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
      buffer = buffer.slice(cut + 2);
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      if (choice.text) {
        added.textContent += choice.text;
        pieces += 1;
        if (first === null) first = performance.now() - t0;
      }
      if (choice.finish_reason) reason = choice.finish_reason;
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  out.dataset.done = String(Number(out.dataset.done || 0) + 1);
  $("text-info").textContent = `${pieces} pieces in ${seconds.toFixed(2)} s, the first after ${(first ?? 0).toFixed(0)} ms (finished: ${reason || "?"})`;
}

async function classifyText(name, m) {
  const texts = [$("prompt").value];
  const body = await api(`/v1/models/${encodeURIComponent(name)}/classify`, { inputs: texts, top_k: m.classes.length });
  showProbabilities(body.predictions[0], m.classes, $("text-bars"));
  $("text-info").textContent = `answered by ${body.backend} in ${body.latency_ms.toFixed(1)} ms`;
  if (!m.verbs.includes("explain")) return;
  const why = await api(`/v1/models/${encodeURIComponent(name)}/explain`, { inputs: texts });
  const e = why.explanations[0];
  colourCharacters($("why-ig"), e.characters, e.attributions);
  colourCharacters($("why-rollout"), e.characters, e.rollout);
  $("why").hidden = false;
  $("why").dataset.answers = String(Number($("why").dataset.answers || 0) + 1);
  $("text-info").textContent += `; explained ${e.target.label} in ${why.latency_ms.toFixed(0)} ms`;
}

async function runText() {
  const name = $("text-model").value, m = model(name), button = $("text-go");
  if (!m) return;
  button.disabled = true;
  try {
    if (m.classes.length) await classifyText(name, m);
    else await streamCompletion(name);
  } catch (e) { showError(e.message); }
  finally { button.disabled = false; }
}

$("text-model").addEventListener("change", fillTextControls);
$("text-go").addEventListener("click", runText);

// ---- explain: the attributions of the predicted (or a chosen) class over what the model saw ----------------
const explaining = { busy: false, again: false };

function fillExplainTargets() {
  const m = model($("classifier").value), select = $("explain-target");
  select.replaceChildren();
  option(select, "", "the predicted one");
  if (m) m.classes.forEach((c, i) => option(select, i, c));
  $("explain-box").hidden = !(m && m.verbs.includes("explain"));
}

async function explain() {
  const name = $("classifier").value, m = model(name), canvas = $("overlay");
  if (!$("explain").checked || !state.input || !m || !m.verbs.includes("explain")) {
    canvas.hidden = true;
    $("overlay-info").textContent = "";
    return;
  }
  if (explaining.busy) { explaining.again = true; return; }  // slower than classify: one in flight, then the latest input
  explaining.busy = true;
  try {
    const body = { inputs: [state.input], format: "png" }, target = $("explain-target").value;
    const method = $("explain-method").value;
    if (target !== "") body.target = Number(target);
    if (method !== "") body.method = method;
    const blob = await api(`/v1/models/${encodeURIComponent(name)}/explain`, body, { binary: true });
    const bitmap = await createImageBitmap(blob), ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const label = m.classes[Number(blob.headers.get("x-target"))], used = blob.headers.get("x-method");
    canvas.setAttribute("aria-label", `Attributions of ${label} (${used}): red pixels push towards it, blue ones away`);
    canvas.dataset.answers = String(Number(canvas.dataset.answers || 0) + 1);
    canvas.hidden = false;
    $("overlay-info").textContent = `${label}: red towards, blue away (${used}), ${blob.answeredBy}`;
  } catch (e) { showError(e.message); }
  finally {
    explaining.busy = false;
    if (explaining.again) { explaining.again = false; explain(); }
  }
}

function scheduleClassify() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; classify(); }, 120);
}

pad.addEventListener("pointerdown", (e) => { drawing = true; last = point(e); stroke(last, last); pad.setPointerCapture(e.pointerId); });
pad.addEventListener("pointermove", (e) => { if (!drawing) return; const p = point(e); stroke(last, p); last = p; scheduleClassify(); });
for (const type of ["pointerup", "pointercancel"]) pad.addEventListener(type, () => { if (drawing) { drawing = false; classify(); } });
pad.addEventListener("keydown", (e) => {
  const moves = { ArrowLeft: [-10, 0], ArrowRight: [10, 0], ArrowUp: [0, -10], ArrowDown: [0, 10] };
  if (e.key === " ") { penDown = !penDown; if (penDown) stroke(cursor, cursor); e.preventDefault(); }
  else if (moves[e.key]) {
    const next = { x: Math.min(275, Math.max(5, cursor.x + moves[e.key][0])), y: Math.min(275, Math.max(5, cursor.y + moves[e.key][1])) };
    if (penDown) { stroke(cursor, next); scheduleClassify(); }
    cursor = next;
    e.preventDefault();
  } else if (e.key === "Enter") classify();
  else if (e.key === "Delete" || e.key === "Backspace") clearPad();
});
$("clear").addEventListener("click", clearPad);
$("upload").addEventListener("change", (e) => { if (e.target.files[0]) classify(false, e.target.files[0]); });
$("classifier").addEventListener("change", () => { fillExplainTargets(); classify(); });
$("explain").addEventListener("change", explain);
$("explain-target").addEventListener("change", explain);
$("explain-method").addEventListener("change", explain);

// ---- generate, walk, reconstruct ------------------------------------------------------------------------
async function generate() {
  const name = $("generator").value, label = $("label").value;
  const body = { n: Number($("count").value) || 16, seed: Number($("seed").value) || 0, format: "png" };
  if (label !== "") body.label = Number(label);
  try {
    const blob = await api(`/v1/models/${encodeURIComponent(name)}/generate`, body, { binary: true });
    const grid = $("grid");
    if (grid.src) URL.revokeObjectURL(grid.src);
    grid.src = URL.createObjectURL(blob);
    grid.hidden = false;
    $("grid-info").textContent = blob.answeredBy;
  } catch (e) { showError(e.message); }
}

async function walk() {
  const name = $("generator").value, m = model(name);
  const body = { steps: 16, seed: Number($("seed").value) || 0, format: "array" };
  if (m.conditional) { body.from_label = Number($("from-label").value); body.to_label = Number($("to-label").value); }
  try {
    state.walk = (await api(`/v1/models/${encodeURIComponent(name)}/interpolate`, body)).images;
    const slider = $("slider");
    slider.max = String(state.walk.length - 1);
    slider.disabled = false;
    showFrame();
  } catch (e) { showError(e.message); }
}

async function showFrame() {
  const i = Number($("slider").value), frame = state.walk[i];
  if (!frame) return;
  drawImage($("frame"), frame);
  const name = $("generator").value, m = model(name);
  if (!m.verbs.includes("reconstruct")) return;
  try {
    const body = { inputs: [frame] };
    if (m.conditional) body.label = Number($("to-label").value);
    const r = await api(`/v1/models/${encodeURIComponent(name)}/reconstruct`, body);
    drawImage($("recon"), frame, 0);
    drawImage($("recon"), r.images[0], 112);
    $("recon-error").textContent = `mean absolute error ${r.errors[0].toFixed(1)} / 255`;
  } catch (e) { showError(e.message); }
}

// ---- forecast: one of the model's own series, its median forecast and intervals -------------------------------
async function loadSeries() {
  const name = $("forecaster").value, select = $("series");
  select.replaceChildren();
  state.series = [];
  $("forecast-info").textContent = "";
  if (!name) return;
  $("horizon").value = String(model(name).forecast.horizon);
  try {
    state.series = (await api(`/v1/models/${encodeURIComponent(name)}/series`)).series;
  } catch (e) { showError(e.message); plot(null, null); return; }
  state.series.forEach((s, i) => option(select, i, `${s.id} (${s.length} values)`));
  plot(state.series[0], null);
}

async function forecast() {
  const name = $("forecaster").value, s = state.series[Number($("series").value)];
  if (!s) return;
  const f = model(name).forecast, body = { history: s.values }, horizon = Number($("horizon").value);
  if (horizon) body.horizon = horizon;
  if (f.calendar) body.end = s.times[s.times.length - 1];
  if (s.covariates) {  // the shown history's covariates and as many future steps as the horizon needs
    const steps = s.values.length + (horizon || f.horizon);
    body.covariates = Object.fromEntries(Object.entries(s.covariates).map(([k, v]) => [k, v.slice(0, steps)]));
  }
  try {
    const r = await api(`/v1/models/${encodeURIComponent(name)}/forecast`, body);
    plot(s, r);
    const beyond = r.recursive ? ` (steps beyond the trained ${r.trained_horizon} from its own forecasts)` : "";
    $("forecast-info").textContent = `${r.horizon} steps${beyond}, answered by ${r.backend} in ${r.latency_ms.toFixed(1)} ms`;
  } catch (e) { showError(e.message); }
}

function svg(parent, tag, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  parent.append(el);
  return el;
}

function plot(s, r) {
  // the history (black), then the median forecast (blue) in its 80% and 95% bands; r: a forecast answer or null
  const chart = $("chart"), W = 720, H = 280, left = 56, right = 12, top = 12, bottom = 28;
  chart.replaceChildren();
  if (!s) { chart.setAttribute("aria-label", "No series loaded"); return; }
  const n = s.values.length, h = r ? r.horizon : 0;
  const shown = [...s.values, ...(r ? [r.forecast, r.lo_95, r.hi_95, r.lo_80, r.hi_80].flatMap((v) => v || []) : [])];
  let lo = Math.min(...shown), hi = Math.max(...shown);
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const x = (i) => left + (W - left - right) * i / Math.max(n + h - 1, 1);
  const y = (v) => H - bottom - (H - top - bottom) * (v - lo) / (hi - lo);
  const points = (values, start) => values.map((v, i) => `${x(start + i).toFixed(1)},${y(v).toFixed(1)}`);
  const path = (values, start) => `M${points(values, start).join("L")}`;
  svg(chart, "line", { class: "axis", x1: left, x2: W - right, y1: H - bottom, y2: H - bottom });
  svg(chart, "text", { x: left - 4, y: top + 4, "text-anchor": "end" }, hi.toPrecision(4));
  svg(chart, "text", { x: left - 4, y: H - bottom, "text-anchor": "end" }, lo.toPrecision(4));
  svg(chart, "text", { x: left, y: H - 8 }, s.times[0].slice(0, 10));
  svg(chart, "text", { x: x(n - 1) - 4, y: H - 8, "text-anchor": "end" }, s.times[n - 1].slice(0, 10));
  svg(chart, "path", { class: "history", d: path(s.values, 0) });
  if (r) {
    for (const coverage of [95, 80]) {
      const low = r[`lo_${coverage}`], high = r[`hi_${coverage}`];
      if (!low || !high) continue;  // a model whose levels hold no such interval
      svg(chart, "path", { class: `band-${coverage}`, d: `M${[...points(low, n), ...points(high, n).reverse()].join("L")}Z` });
    }
    svg(chart, "line", { class: "origin", x1: x(n - 1), x2: x(n - 1), y1: top, y2: H - bottom });
    svg(chart, "path", { class: "median", d: path([s.values[n - 1], ...r.forecast], n - 1) });
    svg(chart, "text", { x: x(n - 1) + 4, y: H - 8 }, `+${h} steps`);
  }
  chart.setAttribute("aria-label", `${s.id}: the last ${n} values` + (r ? `, then the median forecast of ${h} steps with its 80% and 95% intervals` : ""));
}

$("forecaster").addEventListener("change", loadSeries);
$("series").addEventListener("change", () => plot(state.series[Number($("series").value)], null));
$("predict").addEventListener("click", forecast);
$("go").addEventListener("click", generate);
$("walk").addEventListener("click", walk);
$("slider").addEventListener("input", showFrame);
$("generator").addEventListener("change", fillLabels);
$("token").addEventListener("change", (e) => { state.token = e.target.value.trim(); sessionStorage.setItem("genforge-token", state.token); loadModels(); });

clearPad();
loadModels();
