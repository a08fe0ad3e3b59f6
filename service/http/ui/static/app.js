// The page's logic: models, a sequence, predict, stream, and the equivalent calls.
//
// It talks to the service only through the public API, as any client would:
//   GET  /v1/models, /v1/models/{m}, /v1/models/{m}/versions/{v}
//   GET  /ui/models/{m}/versions/{v}/examples       (the page's own: shipped examples)
//   POST /v1/models/{m}/versions/{v}:predict        {"instances": [seq], "return_sequences": b}
//                                                   (a forecaster: its next `horizon` steps)
//   WS   /v1/models/{m}/versions/{v}/stream         {"timesteps": [...]} -> {"predictions", "steps"}
// The API key lives only in the `apiKey` variable below: never in storage or cookies.

import { barChart, clearChart, color, lineChart } from "./plot.js";

const $ = (id) => document.getElementById(id);

let apiKey = "";
const state = {
  models: [],        // [{name, version, info}] one per served version
  model: null,       // the selected one
  examples: [],
  sequence: null,    // {source, value (what is sent), raw (unparsed JSON text) | null, label}
  stream: null,      // {socket, position, running, timer}
};

// What the test (and a curious person) can read back: the last plot of each chart.
window.lstmUi = { lastPlot: null, plots: {}, state };

// ---------- HTTP ----------

function headers(extra = {}) {
  return apiKey ? { ...extra, Authorization: `Bearer ${apiKey}` } : extra;
}

// fetch + JSON, showing the server's own {"error": ...} as it phrased it.
async function call(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = body;
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    showError("network", `could not reach the server: ${err.message}`);
    throw err;
  }
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch { /* not JSON: shown as text below */ }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : text;
    showError(`HTTP ${response.status}`, message);
    const err = new Error(message);
    err.status = response.status;
    throw err;
  }
  return data;
}

function showError(status, message) {
  $("error-status").textContent = status;
  $("error-message").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-status").textContent = "";
  $("error-message").textContent = "";
}

// ---------- models ----------

function versionPath(m) {
  return `/v1/models/${encodeURIComponent(m.name)}/versions/${encodeURIComponent(m.version)}`;
}

async function loadModels() {
  const listing = await call("GET", "/v1/models");
  const models = [];
  for (const latest of listing.models) {
    let versions = [latest.version];
    try {
      const status = await call("GET", `/v1/models/${encodeURIComponent(latest.name)}`);
      versions = status.model_version_status
        .filter((s) => s.state === "AVAILABLE").map((s) => s.version);
    } catch { /* keep the latest only */ }
    for (const version of versions.sort((a, b) => Number(b) - Number(a))) {
      models.push({ name: latest.name, version, info: version === latest.version ? latest : null });
    }
  }
  state.models = models;
  $("model-select").replaceChildren(...models.map((m, i) => {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = `${m.name} — version ${m.version}`;
    return option;
  }));
  $("models-status").textContent = `${models.length} model version(s) loaded`;
  if (models.length) await selectModel(0);
}

async function selectModel(index) {
  const m = state.models[index];
  if (!m.info) m.info = await call("GET", versionPath(m));
  state.model = m;
  stopStream(true);
  showModelInfo(m.info);
  state.sequence = null;
  clearChart($("input-chart"));
  clearChart($("output-chart"));
  clearChart($("stream-chart"));
  $("final-result").hidden = true;
  $("input-summary").textContent = "No sequence yet: pick an example, paste or upload one.";
  updateButtons();
  await loadExamples(m);
}

function features(info) {
  return info.inputs.instances.shape[2];
}

// Outputs per step: the last dimension of the final (or a forecaster's forecast) output.
function outputWidth(info) {
  const shape = (info.outputs.final || info.outputs.forecast).shape;
  return shape[shape.length - 1];
}

function showModelInfo(info) {
  const fmt = (v) => (typeof v === "number" ? Number(v.toPrecision(4)).toString() : String(v));
  const metrics = Object.entries(info.metrics || {})
    .filter(([, v]) => typeof v === "number").map(([k, v]) => `${k} ${fmt(v)}`).join(", ");
  const layers = info.layers.map((l) => `${(l.cell || "lstm").toUpperCase()} ${l.units}${l.bidirectional ? " (bidirectional)" : ""}`);
  if (info.forecast) layers.splice(info.forecast.encoder_layers, 0, `repeat ×${info.horizon}`);
  layers.push(`dense ${outputWidth(info)}`);
  const target = info.horizon ? `forecast of the next ${info.horizon} steps`
    : info.target === "sequence" ? "per-timestep targets" : "final target";
  const rows = [
    ["task", `${info.task} (${target})`],
    ["features", `${features(info)}${info.inputs.instances.features ? `: ${info.inputs.instances.features.join(", ")}` : ""}`],
    ["classes", info.classes ? info.classes.join(", ") : "— (regression)"],
    ["layers", layers.join(" → ")],
    ["training metrics", metrics || "—"],
    ["parity (onnxruntime vs torch)", `max |diff| ${info.parity_max_abs_diff.toExponential(2)}`],
    ["stateful streaming", info.stateful ? "yes" : info.horizon ? "no (a forecaster)" : "no (bidirectional)"],
    ["providers", (info.providers || []).join(", ")],
    ["created", info.created_at],
  ];
  $("model-info").replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = k;
    dd.textContent = v;
    dd.dataset.field = k;
    return [dt, dd];
  }));
}

async function loadExamples(m) {
  const box = $("examples");
  state.examples = [];
  box.replaceChildren(Object.assign(document.createElement("span"), { className: "muted", textContent: "loading…" }));
  const path = `/ui/models/${encodeURIComponent(m.name)}/versions/${encodeURIComponent(m.version)}/examples`;
  let data = null;
  try {
    const response = await fetch(path, { headers: headers() });
    if (response.ok) data = await response.json();
  } catch { /* no examples */ }
  if (state.model !== m) return;  // another model was chosen meanwhile
  state.examples = data ? data.examples : [];
  if (!state.examples.length) {
    box.replaceChildren(Object.assign(document.createElement("span"), { className: "muted", textContent: "this model ships no examples" }));
    return;
  }
  box.replaceChildren(...state.examples.map((ex, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "example";
    button.dataset.example = String(i);
    button.textContent = ex.name;
    button.addEventListener("click", () => useExample(i));
    return button;
  }));
}

// ---------- the sequence ----------

function isSequence(value) {
  return Array.isArray(value) && value.length > 0 && value.every(
    (step) => Array.isArray(step) && step.every((v) => typeof v === "number" && Number.isFinite(v)));
}

function setSequence(sequence) {
  state.sequence = sequence;
  stopStream(true);
  clearError();
  clearChart($("output-chart"));
  clearChart($("stream-chart"));
  $("final-result").hidden = true;
  const value = sequence.value;
  const label = sequence.label ? `; true label: ${sequence.label}` : "";
  if (isSequence(value)) {
    const width = Math.max(...value.map((s) => s.length));
    $("input-summary").textContent = `${sequence.source}: ${value.length} timesteps × ${width} features${label}`;
    plot("input-chart", lineChart($("input-chart"), channels(value), { height: 200 }));
  } else {
    $("input-summary").textContent = `${sequence.source}: not a list of timesteps of numbers, `
      + "so it cannot be plotted; Predict sends it as it is and shows what the server says.";
    clearChart($("input-chart"));
  }
  updateButtons();
}

function channels(seq) {
  const names = state.model?.info.inputs.instances.features;
  const width = Math.max(...seq.map((s) => s.length));
  return Array.from({ length: width }, (_, f) => ({
    name: names?.[f] ?? `feature ${f}`,
    values: seq.map((step) => step[f]),
  }));
}

function useExample(i) {
  const ex = state.examples[i];
  document.querySelectorAll("#examples button").forEach((b) => b.classList.toggle("selected", b.dataset.example === String(i)));
  setSequence({ source: `example “${ex.name}”`, value: ex.timesteps, raw: null, label: ex.label });
  predict();  // one click shows the outputs over time
}

// A paste or a file: JSON (a sequence, {"instances": [seq]} or {"timesteps": seq}) or CSV
// (one timestep per line, optional header; the long format of models/data.py too).
// Nothing is checked here beyond reading: the server validates and says what is wrong.
export function parseText(text, source) {
  const trimmed = text.trim();
  if (trimmed.startsWith("[") || trimmed.startsWith("{")) {
    try {
      let value = JSON.parse(trimmed);
      if (value && !Array.isArray(value) && Array.isArray(value.instances) && value.instances.length === 1) {
        value = value.instances[0];
      } else if (value && !Array.isArray(value) && value.timesteps !== undefined) {
        value = value.timesteps;
      }
      return { source, value, raw: null, label: null };
    } catch {
      return { source, value: null, raw: trimmed, label: null };  // sent verbatim: the server says why
    }
  }
  const rows = trimmed.split(/\r?\n/).map((line) => line.split(/[,;\t]/).map((c) => c.trim()))
    .filter((cells) => cells.some((c) => c !== ""));
  const numeric = (c) => c !== "" && Number.isFinite(Number(c));
  let columns = null;
  if (rows.length && !rows[0].every(numeric)) columns = rows.shift();
  let keep = (cells) => cells;
  if (columns && columns[0] === "sequence_id" && columns[1] === "timestep") {
    const take = columns.map((c, i) => i >= 2 && c !== "label" && !c.startsWith("target"));
    const first = rows.length ? rows[0][0] : null;
    keep = (cells) => cells.filter((_, i) => take[i]);
    rows.splice(0, rows.length, ...rows.filter((cells) => cells[0] === first));
  }
  const value = rows.map((cells) => keep(cells).map((c) => (numeric(c) ? Number(c) : c)));
  return { source, value, raw: null, label: null };
}

// ---------- predict ----------

function mode() {
  return $("mode-sequence").checked ? "sequence" : "final";
}

function instancesBody(returnSequences) {
  const s = state.sequence;
  const instance = s.raw !== null ? s.raw : JSON.stringify(s.value);
  return `{"instances": [${instance}], "return_sequences": ${returnSequences}}`;
}

async function predict() {
  const m = state.model;
  const s = state.sequence;
  if (!m || !s) return;
  // A forecaster answers its horizon whatever the mode: it refuses return_sequences: true.
  const returnSequences = !m.info.horizon && mode() === "sequence";
  const path = `${versionPath(m)}:predict`;
  const body = instancesBody(returnSequences);
  showSnippets({ kind: "predict", path, body, returnSequences });
  clearError();
  $("predict-status").textContent = "predicting…";
  let answer;
  try {
    answer = await call("POST", path, body);
  } catch {
    $("predict-status").textContent = "the server refused it (see the message below)";
    clearChart($("output-chart"));
    $("final-result").hidden = true;
    return;
  } finally {
    if ($("predict-status").textContent === "predicting…") $("predict-status").textContent = "";
  }
  if (state.sequence !== s || state.model !== m) return;  // superseded meanwhile
  $("predict-status").textContent = `answered by ${answer.model} version ${answer.version}`;
  drawAnswer(answer.predictions[0], returnSequences, m.info, s);
}

function drawAnswer(prediction, returnSequences, info, s) {
  if (info.horizon) return drawForecast(prediction, info, s);
  const chart = $("output-chart");
  const classes = info.classes;
  $("true-label-wrap").hidden = !s.label;
  $("true-label").textContent = s.label || "";
  if (classes) {
    const last = returnSequences ? prediction[prediction.length - 1] : prediction;
    $("final-label").textContent = last.label;
    $("final-probability").textContent = Math.max(...last.probabilities).toFixed(4);
    $("final-probability-wrap").hidden = false;
    $("final-result").hidden = false;
    if (returnSequences) {
      const series = classes.map((name, k) => ({ name, values: prediction.map((p) => p.probabilities[k]) }));
      plot("output-chart", lineChart(chart, series, { yRange: [0, 1] }));
    } else {
      plot("output-chart", barChart(chart, classes, last.probabilities, { highlight: classes.indexOf(last.label) }));
    }
    return;
  }
  // Regression: the outputs against the input channels (dashed), on one time axis.
  const inputs = isSequence(s.value) ? channels(s.value).map((c, i) => ({ ...c, name: `input: ${c.name}`, dashed: true, color: color(i + 4) })) : [];
  let outputs;
  if (returnSequences) {
    const k = prediction[0].length;
    outputs = Array.from({ length: k }, (_, j) => ({ name: k > 1 ? `output ${j}` : "output", values: prediction.map((row) => row[j]) }));
  } else {
    const n = isSequence(s.value) ? s.value.length : 1;
    outputs = prediction.map((v, j) => ({ name: `final output ${j}`, values: [...Array(n - 1).fill(NaN), v] }));
  }
  $("final-label").textContent = returnSequences
    ? `last step ${prediction[prediction.length - 1].map((v) => v.toPrecision(5)).join(", ")}`
    : prediction.map((v) => v.toPrecision(5)).join(", ");
  $("final-probability-wrap").hidden = true;
  $("final-result").hidden = false;
  plot("output-chart", lineChart(chart, [...outputs, ...inputs]));
}

// A forecaster's answer: its `horizon` future steps plotted right after the input, on one
// time axis (the input dashed, the forecast from timestep T on).
function drawForecast(prediction, info, s) {
  const classes = info.classes;
  const n = isSequence(s.value) ? s.value.length : 0;
  const gap = Array(n).fill(NaN);
  const inputs = isSequence(s.value) ? channels(s.value).map((c, i) => ({ ...c, name: `input: ${c.name}`, dashed: true, color: color(i + 4) })) : [];
  const rows = classes ? prediction.map((p) => p.probabilities) : prediction;
  const names = classes || rows[0].map((_, j) => (rows[0].length > 1 ? `forecast ${j}` : "forecast"));
  const outputs = names.map((name, j) => ({ name, values: [...gap, ...rows.map((row) => row[j])] }));
  $("true-label-wrap").hidden = !s.label;
  $("true-label").textContent = s.label || "";
  $("final-label").textContent = classes
    ? `next ${info.horizon} steps: ${prediction.map((p) => p.label).join(", ")}`
    : `next ${info.horizon} steps: ${rows.map((row) => row.map((v) => v.toPrecision(5)).join(" ")).join(", ")}`;
  $("final-probability-wrap").hidden = true;
  $("final-result").hidden = false;
  const series = classes ? outputs : [...outputs, ...inputs];
  plot("output-chart", lineChart($("output-chart"), series, { yRange: classes ? [0, 1] : null }));
}

function plot(id, plotted) {
  window.lstmUi.plots[id] = plotted;
  window.lstmUi.lastPlot = { chart: id, ...plotted };
}

// ---------- streaming ----------

function streamUrl(m) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${versionPath(m)}/stream`;
}

function streamStatus(text) {
  $("stream-status").textContent = text;
}

function streamSeries() {
  const classes = state.model.info.classes;
  const k = state.model.info.outputs.sequence.shape[2];
  return Array.from({ length: k }, (_, j) => ({ name: classes ? classes[j] : `output ${j}`, values: [] }));
}

function redrawStream() {
  const st = state.stream;
  const total = isSequence(state.sequence?.value) ? state.sequence.value.length : null;
  const classes = state.model.info.classes;
  plot("stream-chart", lineChart($("stream-chart"), st.series, { yRange: classes ? [0, 1] : null, xMax: total }));
}

function openStream() {
  const m = state.model;
  // Browsers cannot set an Authorization header on a WebSocket: the key travels as
  // the subprotocol "bearer.<key>" next to "lstm-serving" (a server with keys on picks one).
  const protocols = apiKey ? ["lstm-serving", `bearer.${apiKey}`] : [];
  const socket = new WebSocket(streamUrl(m), protocols);
  const st = { socket, position: 0, running: false, timer: null, waiting: false, series: streamSeries(), steps: 0, model: m };
  state.stream = st;
  socket.addEventListener("message", (event) => onStreamMessage(st, JSON.parse(event.data)));
  socket.addEventListener("close", (event) => {
    if (state.stream === st) {
      streamStatus(`connection closed (${event.code}${event.reason ? ` ${event.reason}` : ""})`);
      st.running = false;
      state.stream = null;
      updateButtons();
    }
  });
  socket.addEventListener("error", () => streamStatus("the WebSocket failed"));
  return new Promise((resolve, reject) => {
    socket.addEventListener("open", () => resolve(st), { once: true });
    socket.addEventListener("close", () => reject(new Error("closed")), { once: true });
  });
}

function onStreamMessage(st, message) {
  if (state.stream !== st) return;
  st.waiting = false;
  if (st.awaitingReset) {  // answers to timesteps sent before the reset: drop them
    if (message.reset) st.awaitingReset = false;
    return;
  }
  if (message.error !== undefined) {
    showError("stream", message.error);
    st.running = false;
    streamStatus("the server refused a message (see below)");
    updateButtons();
    return;
  }
  if (message.reset) {
    st.steps = 0;
    $("stream-steps").textContent = "0";
    return;
  }
  if (message.predictions) {
    const classes = state.model.info.classes;
    for (const p of message.predictions) {
      const row = classes ? p.probabilities : p;
      row.forEach((v, j) => st.series[j].values.push(v));
    }
    st.steps = message.steps;
    $("stream-steps").textContent = String(message.steps);
    redrawStream();
  }
  scheduleNext(st);
}

function scheduleNext(st) {
  const seq = state.sequence.value;
  if (!st.running) return;
  if (st.position >= seq.length) {
    st.running = false;
    streamStatus(`done: ${st.steps} steps streamed`);
    updateButtons();
    return;
  }
  const delay = Math.max(0, Number($("stream-delay").value) || 0);
  st.timer = setTimeout(() => sendNext(st), delay);
}

function sendNext(st) {
  st.timer = null;
  if (!st.running || state.stream !== st || st.socket.readyState !== WebSocket.OPEN) return;
  const chunk = Math.max(1, Math.floor(Number($("stream-chunk").value) || 1));
  const seq = state.sequence.value;
  const timesteps = seq.slice(st.position, st.position + chunk);
  st.position += timesteps.length;
  st.waiting = true;
  st.socket.send(JSON.stringify({ timesteps }));
}

async function startStream() {
  if (!state.sequence || !isSequence(state.sequence.value)) return;
  clearError();
  let st = state.stream;
  if (!st) {
    streamStatus("connecting…");
    try {
      st = await openStream();
    } catch {
      streamStatus("could not open the WebSocket");
      return;
    }
    redrawStream();
  }
  if (st.position >= state.sequence.value.length) resetStream();
  st.running = true;
  streamStatus("streaming…");
  showSnippets({ kind: "stream", path: `${versionPath(state.model)}/stream` });
  updateButtons();
  if (!st.waiting) sendNext(st);
}

function stopStream(close = false) {
  const st = state.stream;
  if (!st) return;
  st.running = false;
  if (st.timer) clearTimeout(st.timer);
  st.timer = null;
  if (close) {
    state.stream = null;
    if (st.socket.readyState === WebSocket.OPEN) st.socket.send(JSON.stringify({ end: true }));
    st.socket.close();
    $("stream-steps").textContent = "0";
    streamStatus("");
  } else {
    streamStatus(`stopped at ${st.position} of ${state.sequence.value.length} timesteps`);
  }
  updateButtons();
}

function resetStream() {
  const st = state.stream;
  if (st) {
    stopStream();
    st.position = 0;
    st.series = streamSeries();
    if (st.socket.readyState === WebSocket.OPEN) {
      st.awaitingReset = true;
      st.socket.send(JSON.stringify({ reset: true }));
    }
    redrawStream();
    streamStatus("reset: the state is zero again");
  }
  $("stream-steps").textContent = "0";
  updateButtons();
}

// ---------- the equivalent calls ----------

function showSnippets(what) {
  const origin = location.origin;
  const host = location.host;
  const auth = apiKey ? " \\\n  -H \"Authorization: Bearer $LSTM_SERVE_API_KEY\"" : "";
  const pyAuth = apiKey ? ', headers={"Authorization": "Bearer " + os.environ["LSTM_SERVE_API_KEY"]}' : "";
  const m = state.model;
  const seqJson = state.sequence.raw ?? JSON.stringify(state.sequence.value);
  if (what.kind === "predict") {
    $("curl-snippet").textContent = `curl -s ${origin}${what.path} \\\n  -H "Content-Type: application/json"${auth} \\\n  -d @- <<'EOF'\n${what.body}\nEOF`;
  } else {
    $("curl-snippet").textContent = "# curl cannot speak WebSocket; the same stream over plain HTTP, with server-held state:\n"
      + `curl -s ${origin}${versionPath(m)}:predict -H "Content-Type: application/json"${auth} \\\n`
      + `  -d '{"instances": [[FIRST_TIMESTEPS]], "return_sequences": true, "sequence_id": "demo", "sequence_start": true}'\n`
      + `# ... then "sequence_id": "demo" alone for the next pieces, and "sequence_end": true on the last`;
  }
  const output = m.info.horizon ? "forecast"
    : what.kind === "stream" || what.returnSequences ? "sequence_output" : "final_output";
  const sequenceArgs = what.kind === "stream" ? ",\n                     sequence_id=17, sequence_start=True, sequence_end=True" : "";
  $("python-snippet").textContent = `${apiKey ? "import os\n\n" : ""}import numpy as np
import tritonclient.http as triton

client = triton.InferenceServerClient("${host}")
x = np.array([${seqJson}], dtype=np.float32)  # [1, T, F]
inp = triton.InferInput("x", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
out = client.infer(${JSON.stringify(m.name)}, [inp], model_version=${JSON.stringify(m.version)},
                   outputs=[triton.InferRequestedOutput("${output}")]${sequenceArgs}${pyAuth})
print(out.as_numpy("${output}")[0])  # ${m.info.horizon ? `the next ${m.info.horizon} steps: ` : ""}${m.info.classes ? `probabilities of ${JSON.stringify(m.info.classes)}` : "output values"}`;
}

// ---------- wiring ----------

function updateButtons() {
  const have = !!state.model && !!state.sequence;
  const streamable = have && isSequence(state.sequence.value) && state.model.info.stateful;
  const st = state.stream;
  $("predict").disabled = !have;
  // A forecaster has one answer, its horizon: the per-timestep/final choice does not apply.
  document.querySelectorAll("input[name=mode]").forEach((r) => { r.disabled = !!state.model?.info.horizon; });
  $("stream-start").disabled = !streamable || (st && st.running);
  $("stream-stop").disabled = !(st && st.running);
  $("stream-reset").disabled = !st;
}

async function readFile(file) {
  const text = await file.text();
  setSequence(parseText(text, `file ${file.name}`));
}

function init() {
  $("api-key").addEventListener("input", (e) => { apiKey = e.target.value.trim(); });
  // A server with keys on answers the first listing 401: list again once a key is given.
  $("api-key").addEventListener("change", () => { if (!state.models.length) listModels(); });
  $("model-select").addEventListener("change", (e) => selectModel(Number(e.target.value)));
  $("use-paste").addEventListener("click", () => setSequence(parseText($("paste").value, "pasted sequence")));
  $("file").addEventListener("change", (e) => e.target.files[0] && readFile(e.target.files[0]));
  $("predict").addEventListener("click", predict);
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", () => state.sequence && predict()));
  $("stream-start").addEventListener("click", startStream);
  $("stream-stop").addEventListener("click", () => stopStream(false));
  $("stream-reset").addEventListener("click", resetStream);
  listModels();
}

function listModels() {
  loadModels().catch((err) => { $("models-status").textContent = `could not list models: ${err.message}`; });
}

init();
