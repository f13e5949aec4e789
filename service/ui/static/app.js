// latentserve's web page. Plain JavaScript, no build step, no library.
//
// The page is a client of the HTTP API like any other: it reads GET /models and calls /sample,
// /interpolate, /reconstruct and /anomaly-score, sending the API key typed at the top. What a
// model can do, which labels it takes and which threshold applies are the API's answers; the
// page only lays them out and draws them.

const API_ROOT = new URL("..", document.baseURI); // the page lives at <root>/ui/
const KEY_STORAGE = "latentserve.apiKey";
const MODEL_STORAGE = "latentserve.model";
const SCALES = [1, 2, 3, 4, 6, 8, 12, 16]; // the API's PNG `scale` goes from 1 to 16
const MAX_SCALE = 16;
const MAX_SEED = 2 ** 31; // seeds the dice picks; the API takes any below 2**63

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

const state = {
  models: [], // GET /models
  model: null, // the chosen ModelInfo, plus `description` from GET /models/{name}
  lastSample: null, // {seed, bytes} of the grid on screen, for "Same seed again"
  walk: null, // {images: [base64 PNG], latents}
  anomaly: [], // [{name, blob, url}] the images being scored
};

// -- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

/** Calls the API; `json` or `form` makes it a POST. Throws ApiError with the server's words. */
async function api(path, { json, form, accept } = {}) {
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (accept) headers.Accept = accept;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser sets the multipart boundary
  }
  let response;
  try {
    response = await fetch(new URL(path, API_ROOT), {
      method: body === undefined ? "GET" : "POST",
      headers,
      body,
    });
  } catch (err) {
    throw new ApiError(0, "unreachable", `the server did not answer (${err.message})`, null);
  }
  if (!response.ok) {
    let error = { code: "http_error", message: response.statusText, field: null };
    try {
      error = (await response.json()).error ?? error;
    } catch {
      // not our JSON error body: keep the status text
    }
    if (response.status === 401) {
      showNotice(
        key
          ? "The server refused this API key (401). Check it and press “Use key”."
          : "This server needs an API key (401). Enter it at the top and press “Use key”.",
      );
      $("#api-key").focus();
    }
    throw new ApiError(response.status, error.code, error.message, error.field);
  }
  return response;
}

function showNotice(text) {
  const notice = $("#notice");
  notice.textContent = text;
  notice.hidden = !text;
}

/** Shows an error in a panel (and returns it to the caller's catch). */
function showError(panel, err) {
  const box = $(".error", panel);
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const where = err.field ? ` (${err.field})` : "";
  const status = err.status ? `${err.status} ${err.code}: ` : "";
  box.textContent = `${status}${err.message}${where}`;
  box.hidden = false;
}

/** Runs `work` with the panel's buttons disabled and its errors shown. */
async function busy(panel, work) {
  const buttons = $$("button", panel);
  buttons.forEach((b) => (b.disabled = true));
  panel.setAttribute("aria-busy", "true");
  showError(panel, null);
  try {
    await work();
  } catch (err) {
    showError(panel, err);
    if (!(err instanceof ApiError)) console.error(err);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
    panel.removeAttribute("aria-busy");
    updateAvailability();
  }
}

// -- small helpers ---------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(2);
  return value.toPrecision(abs < 1 ? 3 : 4).replace(/\.?0+$/, "");
}

function percent(q) {
  return `${+(q * 100).toFixed(1)}%`;
}

function intValue(input) {
  return Number.parseInt(input.value, 10);
}

function randomSeed() {
  return Math.floor(Math.random() * MAX_SEED);
}

function pngUrl(base64) {
  return `data:image/png;base64,${base64}`;
}

function imageShape() {
  return state.model?.image_shape ?? null; // [C, H, W]
}

function can(operation) {
  return state.model?.operations.includes(operation) ?? false;
}

/** The largest PNG `scale` that keeps a grid of `count` cells (1-pixel borders) in `width`. */
function autoScale(count, width, columns) {
  const shape = imageShape();
  if (!shape) return 1;
  const cols = columns ?? Math.min(count, Math.ceil(Math.sqrt(count)));
  const cell = shape[2];
  const scale = Math.floor((width - 1 - cols) / (cols * cell));
  return Math.max(1, Math.min(MAX_SCALE, scale));
}

function loadImage(img, src) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the image did not decode"));
    img.src = src;
  });
}

// -- labels of conditional models ------------------------------------------------------------

/** Label controls appear for models with `num_classes`; values are the API's class indices. */
function fillLabelSelects() {
  const classes = state.model?.num_classes ?? 0;
  for (const select of $$("select[name=label]")) {
    const allowCycle = select.id === "sample-label";
    select.replaceChildren();
    if (allowCycle)
      select.append(el("option", { value: "cycle", text: `each in turn (0–${classes - 1})` }));
    for (let c = 0; c < classes; c++)
      select.append(el("option", { value: String(c), text: String(c) }));
  }
  $$(".conditional").forEach((field) => (field.hidden = classes === 0));
}

/** `labels` for a request of `n` examples, or undefined for unconditional models. */
function labelsFrom(select, n) {
  if (!state.model?.num_classes) return undefined;
  if (select.value === "cycle") {
    return Array.from({ length: n }, (_, i) => i % state.model.num_classes);
  }
  return [Number.parseInt(select.value, 10)];
}

// -- models ----------------------------------------------------------------------------------

async function loadModels() {
  const select = $("#model");
  try {
    const list = await (await api("models")).json();
    state.models = list.models;
    showNotice("");
    const remembered = sessionStorage.getItem(MODEL_STORAGE);
    select.replaceChildren();
    for (const m of list.models) {
      const text =
        m.status === "ready"
          ? `${m.name} (${m.kind}, ${m.provider})`
          : `${m.name} (failed to load)`;
      select.append(el("option", { value: m.name, text, disabled: m.status !== "ready" }));
    }
    const ready = list.models.filter((m) => m.status === "ready").map((m) => m.name);
    const pick = [remembered, list.default_model, ready[0]].find((n) => n && ready.includes(n));
    if (!pick) {
      select.append(el("option", { value: "", text: "no model is ready", selected: true }));
      return;
    }
    select.value = pick;
    await selectModel(pick);
  } catch (err) {
    select.replaceChildren(el("option", { value: "", text: "models could not be listed" }));
    if (err.status !== 401) showNotice(`GET /models failed: ${err.message}`);
  }
}

async function selectModel(name) {
  const info = state.models.find((m) => m.name === name);
  if (!info) return;
  sessionStorage.setItem(MODEL_STORAGE, name);
  state.model = { ...info, description: "" };
  try {
    const full = await (await api(`models/${encodeURIComponent(name)}`)).json();
    state.model.description = full.manifest?.description ?? "";
  } catch {
    // the list entry is enough to work with
  }
  renderModel();
  fillLabelSelects();
  fillScaleSelect();
  fillLatentFields();
  clearResults();
  updateAvailability();
}

function renderModel() {
  const m = state.model;
  $("#model-description").textContent = m.description;
  const shape = m.image_shape
    ? `${m.image_shape[1]}×${m.image_shape[2]}, ${m.image_shape[0] === 1 ? "grey" : `${m.image_shape[0]} channels`}`
    : `${m.input_shape.join("×")} values`;
  const facts = [
    ["kind", m.kind],
    ["provider in use", m.provider],
    ["precision", m.precision],
    ["version", m.version],
    ["input", shape],
    ["latent size", m.latent_dim],
    ["classes", m.num_classes ?? "—"],
    ["operations", m.operations.join(" · "), "long"],
    ["score methods", m.score_methods.join(" · "), "long"],
  ];
  $("#model-facts").replaceChildren(
    ...facts.map(([term, value, size]) =>
      el(
        "div",
        { class: size === "long" ? "fact long" : "fact" },
        el("dt", { text: term }),
        el("dd", { text: String(value ?? "—") }),
      ),
    ),
  );

  const metrics = Object.entries(m.metrics ?? {});
  $("#metrics-details").hidden = metrics.length === 0;
  $("#metrics-table tbody").replaceChildren(
    ...metrics.map(([k, v]) =>
      el("tr", {}, el("th", { scope: "row", text: k }), el("td", { text: fmt(v) })),
    ),
  );

  const calibration = Object.entries(m.calibration ?? {});
  const rows = calibration.map(([method, c]) =>
    el(
      "tr",
      {},
      el("th", { scope: "row", text: method }),
      el("td", { class: "num", text: `${fmt(c.threshold)} (${fmt(c.percentile)}th percentile)` }),
      el("td", { class: "num", text: fmt(c.quantiles?.["0.5"]) }),
    ),
  );
  const sets = [...new Set(calibration.map(([, c]) => `${c.dataset} (n = ${c.n})`))];
  $("#calibration-set").textContent = sets.length ? `Calibrated on ${sets.join("; ")}.` : "";
  const uncalibrated = m.score_methods.filter((s) => !(s in (m.calibration ?? {})));
  for (const method of uncalibrated) {
    rows.push(
      el(
        "tr",
        {},
        el("th", { scope: "row", text: method }),
        el("td", { colspan: "2", text: "not calibrated: no threshold" }),
      ),
    );
  }
  $("#calibration-details").hidden = rows.length === 0;
  $("#calibration-table tbody").replaceChildren(...rows);
}

/** Which controls make sense for this model, from its `operations` as the API lists them. */
function updateAvailability() {
  const imagesChoice = $("#walk-form input[value=images]");
  const noEncoder = !can("encode");
  imagesChoice.disabled = noEncoder;
  $("#walk-images-why").hidden = !noEncoder;
  if (noEncoder && imagesChoice.checked) {
    $("#walk-form input[value=seeds]").checked = true;
    showWalkSource();
  }
  $("#sample-again").disabled = !state.lastSample;
}

function clearResults() {
  state.lastSample = null;
  state.walk = null;
  $("#sample-results").replaceChildren();
  $("#same-seed-verdict").hidden = true;
  $("#walk-results").hidden = true;
  $("#anomaly-results").replaceChildren();
  $$(".panel").forEach((panel) => showError(panel, null));
}

// -- samples ---------------------------------------------------------------------------------

function fillScaleSelect() {
  const select = $("#sample-scale");
  const keep = select.value || "auto";
  select.replaceChildren(el("option", { value: "auto", text: "auto (fit the page)" }));
  for (const s of SCALES) select.append(el("option", { value: String(s), text: `${s}×` }));
  select.value = keep;
}

async function drawSamples(seed, width) {
  const n = intValue($("#sample-n"));
  const chosen = $("#sample-scale").value;
  const scale = chosen === "auto" ? autoScale(n, width) : Number(chosen);
  const body = {
    model: state.model.name,
    n,
    seed,
    temperature: Number($("#sample-temperature").value),
    labels: labelsFrom($("#sample-label"), n),
    scale,
  };
  if (!state.model.image_shape) {
    const data = await (await api("sample", { json: body })).json();
    return { seed: data.seed, text: JSON.stringify(data.samples.slice(0, 8)) };
  }
  const response = await api("sample", { json: body, accept: "image/png" });
  const blob = await response.blob();
  return {
    seed: Number(response.headers.get("X-Seed")),
    version: response.headers.get("X-Model-Version"),
    n,
    scale,
    blob,
    bytes: new Uint8Array(await blob.arrayBuffer()),
  };
}

async function sampleFigure(result, caption) {
  if (result.text) return el("pre", { class: "values", text: result.text });
  const img = el("img", {
    class: "pixelated",
    alt: `${result.n} samples from ${state.model.name}, seed ${result.seed}`,
  });
  await loadImage(img, URL.createObjectURL(result.blob));
  const h = state.model.image_shape[1];
  const w = state.model.image_shape[2];
  const size = `${img.naturalWidth}×${img.naturalHeight} px`;
  return el(
    "figure",
    { class: "sample-figure" },
    img,
    el("figcaption", {
      text: `${caption}seed ${result.seed} · ${result.n} × ${w}×${h} px drawn at ${result.scale}× · ${size}`,
    }),
  );
}

function samplesWidth(columns) {
  const available = $("#sample-results").clientWidth || 600;
  const gap = 16 * (columns - 1);
  return Math.min(640, Math.floor((available - gap) / columns));
}

async function sample(seed) {
  const result = await drawSamples(seed, samplesWidth(1));
  $("#sample-results").replaceChildren(await sampleFigure(result, ""));
  $("#sample-seed").value = String(result.seed);
  $("#same-seed-verdict").hidden = true;
  state.lastSample = result;
}

async function sampleAgain() {
  const first = state.lastSample;
  if (!first?.bytes) return;
  const width = samplesWidth(2);
  const again = await drawSamples(first.seed, width);
  const firstShown = first.scale === again.scale ? first : await drawSamples(first.seed, width);
  $("#sample-results").replaceChildren(
    await sampleFigure(firstShown, "first draw · "),
    await sampleFigure(again, "second draw · "),
  );
  const same =
    firstShown.bytes.length === again.bytes.length &&
    firstShown.bytes.every((b, i) => b === again.bytes[i]);
  const verdict = $("#same-seed-verdict");
  verdict.textContent = same
    ? `Same seed, same samples: the two PNGs from seed ${again.seed} are identical, byte for byte.`
    : `The two draws with seed ${again.seed} differ.`;
  verdict.className = same ? "verdict good" : "verdict bad";
  verdict.hidden = false;
}

// -- latent walk -----------------------------------------------------------------------------

function walkSource() {
  return $("#walk-form input[name=source]:checked").value;
}

function showWalkSource() {
  const source = walkSource();
  $$("#walk-form .source").forEach((field) => {
    field.hidden = !field.classList.contains(`source-${source}`);
  });
}

function fillLatentFields() {
  const d = state.model?.latent_dim;
  if (!d) return;
  $("#walk-z-a").value = JSON.stringify(Array(d).fill(-1));
  $("#walk-z-b").value = JSON.stringify(Array(d).fill(1));
}

function parseLatent(textarea) {
  try {
    const value = JSON.parse(textarea.value);
    if (Array.isArray(value)) return value;
  } catch {
    // reported below
  }
  throw new ApiError(
    0,
    "invalid_input",
    `${$(`label[for=${textarea.id}]`).textContent}: not a JSON list of numbers`,
    null,
  );
}

async function latentOfSeed(seed, labels) {
  const body = { model: state.model.name, n: 1, seed, labels, return_latents: true };
  const data = await (await api("sample", { json: body })).json();
  return data.latents[0];
}

async function walk() {
  const m = state.model;
  const steps = intValue($("#walk-steps"));
  const mode = $("#walk-mode").value;
  const labels = labelsFrom($("#walk-label"), 1);
  const shape = imageShape();
  const scale = shape ? Math.max(1, Math.min(MAX_SCALE, Math.floor(256 / shape[2]))) : 1;
  const common = {
    model: m.name,
    steps,
    mode,
    labels,
    output_format: shape ? "png" : "array",
    scale,
  };
  const source = walkSource();
  let response;
  if (source === "images") {
    const a = $("#walk-image-a").files[0];
    const b = $("#walk-image-b").files[0];
    if (!a || !b)
      throw new ApiError(0, "invalid_input", "choose a start image and an end image", "images");
    const form = new FormData();
    form.append("images", a, a.name);
    form.append("images", b, b.name);
    for (const [k, v] of Object.entries(common)) {
      if (v !== undefined) form.append(k, typeof v === "string" ? v : JSON.stringify(v));
    }
    response = await api("interpolate", { form });
  } else {
    let z;
    if (source === "seeds") {
      const seeds = [intValue($("#walk-seed-a")), intValue($("#walk-seed-b"))];
      z = await Promise.all(seeds.map((s) => latentOfSeed(s, labels)));
    } else {
      z = [parseLatent($("#walk-z-a")), parseLatent($("#walk-z-b"))];
    }
    response = await api("interpolate", { json: { ...common, z } });
  }
  const data = await response.json();
  state.walk = { images: data.images ?? [], outputs: data.outputs, latents: data.latents };
  renderWalk();
}

function renderWalk() {
  const { images } = state.walk;
  const slider = $("#walk-position");
  slider.max = String(Math.max(0, images.length - 1));
  slider.value = "0";
  const strip = $("#walk-strip");
  strip.replaceChildren(
    ...images.map((png, i) => {
      const button = el(
        "button",
        { type: "button", class: "strip-step" },
        el("img", { class: "pixelated", src: pngUrl(png), alt: `step ${i + 1}` }),
      );
      button.addEventListener("click", () => showWalkStep(i));
      return el("li", {}, button);
    }),
  );
  $("#walk-results").hidden = false;
  showWalkStep(0);
}

function showWalkStep(i) {
  const { images, latents } = state.walk;
  const slider = $("#walk-position");
  slider.value = String(i);
  const n = images.length;
  const t = n > 1 ? i / (n - 1) : 0;
  const img = $("#walk-image");
  img.src = pngUrl(images[i]);
  img.alt = `step ${i + 1} of ${n} on the path`;
  img.className = "pixelated";
  slider.setAttribute("aria-valuetext", `step ${i + 1} of ${n}`);
  const z = latents?.[i] ?? [];
  const norm = Math.sqrt(z.reduce((s, v) => s + v * v, 0));
  $("#walk-caption").textContent =
    `step ${i + 1} of ${n} · t = ${t.toFixed(2)} · |z| = ${norm.toFixed(2)}`;
  $$("#walk-strip .strip-step").forEach((b, j) => {
    if (j === i) b.setAttribute("aria-current", "step");
    else b.removeAttribute("aria-current");
  });
}

// -- anomaly ---------------------------------------------------------------------------------

function setAnomalyImages(files) {
  state.anomaly.forEach((item) => URL.revokeObjectURL(item.url));
  state.anomaly = [...files]
    .filter((f) => f.type === "" || f.type.startsWith("image/"))
    .map((f) => ({ name: f.name || "image", blob: f, url: URL.createObjectURL(f) }));
}

function anomalyForm(extra) {
  const form = new FormData();
  for (const item of state.anomaly) form.append("images", item.blob, item.name);
  form.append("model", state.model.name);
  const labels = labelsFrom($("#anomaly-label"), 1);
  if (labels) form.append("labels", JSON.stringify(labels));
  for (const [k, v] of Object.entries(extra)) form.append(k, String(v));
  return form;
}

async function scoreImages() {
  if (state.anomaly.length === 0) {
    throw new ApiError(0, "invalid_input", "drop or choose at least one image first", "images");
  }
  const m = state.model;
  const shape = imageShape();
  const k = intValue($("#anomaly-k"));
  const scale = shape ? Math.max(1, Math.min(MAX_SCALE, Math.floor(112 / shape[2]))) : 1;
  const reconstruction = can("reconstruct")
    ? api("reconstruct", { form: anomalyForm({ output_format: "png", scale }) }).then((r) =>
        r.json(),
      )
    : Promise.resolve(null);
  // the per-pixel heatmap is the reconstruction error, where the model offers that score
  const heat = m.score_methods.includes("reconstruction")
    ? api("anomaly-score", {
        form: anomalyForm({ method: "reconstruction", per_pixel: true }),
      }).then((r) => r.json())
    : Promise.resolve(null);
  const scores = Promise.all(
    m.score_methods.map((method) =>
      api("anomaly-score", { form: anomalyForm({ method, k, seed: 0 }) }).then((r) => r.json()),
    ),
  );
  const [rec, pixels, byMethod] = await Promise.all([reconstruction, heat, scores]);
  renderAnomaly(rec, pixels, byMethod);
}

/** inferno-like colours from dark (no error) to bright yellow (the largest error shown). */
const RAMP = [
  [0, 0, 4],
  [66, 10, 104],
  [147, 38, 103],
  [221, 81, 58],
  [252, 165, 10],
  [252, 255, 164],
];

function rampColour(t) {
  const x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  const f = x - i;
  return RAMP[i].map((c, j) => Math.round(c + f * (RAMP[i + 1][j] - c)));
}

function heatmapCanvas(values, max, label) {
  const [c, h, w] = imageShape();
  const canvas = el("canvas", {
    width: w,
    height: h,
    class: "pixelated heatmap",
    role: "img",
    "aria-label": label,
  });
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(w, h);
  const flat = values.flat(Infinity);
  for (let p = 0; p < h * w; p++) {
    let v = 0;
    for (let ch = 0; ch < c; ch++) v += flat[ch * h * w + p];
    const [r, g, b] = rampColour(max > 0 ? v / c / max : 0);
    image.data.set([r, g, b, 255], p * 4);
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

function heatLegend(max, what) {
  const bar = el("canvas", { width: 128, height: 1, class: "legend-bar", "aria-hidden": "true" });
  const ctx = bar.getContext("2d");
  for (let x = 0; x < 128; x++) {
    const [r, g, b] = rampColour(x / 127);
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(x, 0, 1, 1);
  }
  return el(
    "div",
    { class: "legend" },
    el("span", { text: "0" }),
    bar,
    el("span", { text: fmt(max) }),
    el("span", { class: "legend-what", text: what }),
  );
}

/** Where `score` lies among the calibration quantiles, in words. */
function quantilePosition(score, quantiles) {
  const qs = Object.entries(quantiles)
    .map(([q, v]) => [Number(q), v])
    .sort((a, b) => a[0] - b[0]);
  if (qs.length === 0) return "";
  if (score < qs[0][1]) return `below the ${percent(qs[0][0])} quantile`;
  for (let i = 0; i < qs.length - 1; i++) {
    if (score <= qs[i + 1][1])
      return `between the ${percent(qs[i][0])} and ${percent(qs[i + 1][0])} quantiles`;
  }
  return `above the ${percent(qs[qs.length - 1][0])} quantile`;
}

/** A strip: the calibration distribution (1%–99.9% whiskers, 25–75% box, median), the threshold
 *  and this score, on a log axis when every value is positive. */
function calibrationStrip(score, threshold, calibration, outlier) {
  const quantiles = calibration?.quantiles ?? {};
  const q = (p) => quantiles[p];
  const values = [score, threshold, ...Object.values(quantiles)].filter(
    (v) => typeof v === "number",
  );
  const positive = values.every((v) => v > 0);
  const f = positive ? Math.log : (v) => v;
  let lo = Math.min(...values.map(f));
  let hi = Math.max(...values.map(f));
  if (hi - lo < 1e-9) {
    lo -= 1;
    hi += 1;
  }
  const pad = (hi - lo) * 0.06;
  const W = 260;
  const x = (v) => (((f(v) - lo + pad) / (hi - lo + 2 * pad)) * W).toFixed(1);
  const words = [`score ${fmt(score)}`];
  const chart = svg("svg", { viewBox: `0 0 ${W} 34`, class: "strip-chart", role: "img" });
  if (q("0.01") !== undefined && q("0.999") !== undefined) {
    chart.append(
      svg("line", { x1: x(q("0.01")), x2: x(q("0.999")), y1: 14, y2: 14, class: "whisker" }),
    );
  }
  if (q("0.25") !== undefined && q("0.75") !== undefined) {
    chart.append(
      svg("rect", {
        x: x(q("0.25")),
        y: 8,
        width: Math.max(1, x(q("0.75")) - x(q("0.25"))),
        height: 12,
        class: "box",
      }),
    );
  }
  if (q("0.5") !== undefined) {
    chart.append(svg("line", { x1: x(q("0.5")), x2: x(q("0.5")), y1: 8, y2: 20, class: "median" }));
    words.push(`calibration median ${fmt(q("0.5"))}`);
  }
  if (typeof threshold === "number") {
    chart.append(
      svg("line", { x1: x(threshold), x2: x(threshold), y1: 2, y2: 26, class: "threshold" }),
    );
    words.push(`threshold ${fmt(threshold)}`);
  }
  const tone = outlier === undefined ? "none" : outlier ? "outlier" : "inlier";
  chart.append(svg("circle", { cx: x(score), cy: 14, r: 5, class: `score ${tone}` }));
  chart.append(svg("text", { x: 2, y: 33, class: "axis" }, positive ? "log scale" : ""));
  chart.setAttribute("aria-label", words.join(", "));
  chart.prepend(svg("title", {}, words.join(", ")));
  return chart;
}

function verdictOf(result, i) {
  if (result.is_outlier === null || result.is_outlier === undefined)
    return ["no threshold", "none"];
  return result.is_outlier[i] ? ["outlier", "bad"] : ["inlier", "good"];
}

function renderAnomaly(rec, pixels, byMethod) {
  const m = state.model;
  const shape = imageShape();
  let max = 0;
  if (pixels?.per_pixel) {
    for (const v of pixels.per_pixel.flat(Infinity)) max = Math.max(max, v);
  }
  const cards = state.anomaly.map((item, i) => {
    const flagged = byMethod.filter((r) => r.is_outlier?.[i]).map((r) => r.method);
    const judged = byMethod.filter((r) => r.is_outlier);
    let headline = "no calibrated threshold";
    let tone = "none";
    if (judged.length) {
      headline = flagged.length
        ? `outlier by ${flagged.join(", ")}`
        : "inlier by every calibrated method";
      tone = flagged.length ? "bad" : "good";
    }
    const views = el("div", { class: "views" });
    const original = el("img", {
      class: "pixelated",
      src: item.url,
      alt: `original: ${item.name}`,
    });
    views.append(el("figure", {}, original, el("figcaption", { text: "original" })));
    if (rec?.images) {
      views.append(
        el(
          "figure",
          {},
          el("img", {
            class: "pixelated",
            src: pngUrl(rec.images[i]),
            alt: `reconstruction of ${item.name}`,
          }),
          el("figcaption", { text: "reconstruction" }),
        ),
      );
    }
    if (pixels?.per_pixel && shape) {
      views.append(
        el(
          "figure",
          {},
          heatmapCanvas(pixels.per_pixel[i], max, `per-pixel error heatmap of ${item.name}`),
          el("figcaption", { text: "error per pixel" }),
        ),
      );
    }
    if (!rec) {
      views.append(
        el("p", {
          class: "hint",
          text: `${m.name} has no encoder: no reconstruction to show, scores only.`,
        }),
      );
    }
    const rows = byMethod.flatMap((result) => {
      const score = result.scores[i];
      const calibration = m.calibration?.[result.method];
      const [word, wordTone] = verdictOf(result, i);
      const where = calibration ? quantilePosition(score, calibration.quantiles) : "not calibrated";
      // inputs this method's likelihood does not describe (gray pixels for a model of binarized
      // digits): the API scores them and says why the score means little; shown under its row
      const warnings = (result.input_warnings ?? []).map((text) =>
        el("tr", { class: "warning" }, el("td", { colspan: "5", text })),
      );
      const row = el(
        "tr",
        {},
        el("th", { scope: "row", text: result.method }),
        el("td", { class: "num", "data-label": "score", text: fmt(score) }),
        el("td", { class: "num", "data-label": "threshold", text: fmt(result.threshold) }),
        el(
          "td",
          { class: "chart-cell" },
          calibrationStrip(score, result.threshold, calibration, result.is_outlier?.[i]),
          el("span", { class: "where", text: where }),
        ),
        el("td", {}, el("span", { class: `badge ${wordTone}`, text: word })),
      );
      return [row, ...warnings];
    });
    const table = el(
      "table",
      { class: "scores", "aria-label": `scores of ${item.name}` },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          el("th", { scope: "col", text: "method" }),
          el("th", { scope: "col", text: "score" }),
          el("th", { scope: "col", text: "threshold" }),
          el("th", { scope: "col", text: "against the calibration set" }),
          el("th", { scope: "col", text: "verdict" }),
        ),
      ),
      el("tbody", {}, ...rows),
    );
    return el(
      "article",
      { class: "anomaly-card", "aria-label": `result for ${item.name}` },
      el(
        "h3",
        {},
        el("span", { class: "name", text: item.name }),
        el("span", { class: `badge ${tone}`, text: headline }),
      ),
      views,
      el("div", { class: "table-scroll" }, table),
    );
  });
  const legend =
    pixels?.per_pixel && shape
      ? heatLegend(max, "reconstruction error (x − x̂)² per pixel, one scale for all")
      : null;
  $("#anomaly-results").replaceChildren(...(legend ? [legend] : []), ...cards);
}

/** A sample of the model (an inlier, usually) and uniform noise (an outlier), as PNG files. */
async function exampleImages() {
  const shape = imageShape();
  if (!shape)
    throw new ApiError(0, "invalid_input", "this model's inputs are not images", "images");
  const [c, h, w] = shape;
  const labels = labelsFrom($("#anomaly-label"), 1);
  const body = { model: state.model.name, n: 1, seed: randomSeed(), labels, output_format: "png" };
  const sampled = await (await api("sample", { json: body })).json();
  const png = Uint8Array.from(atob(sampled.images[0]), (ch) => ch.charCodeAt(0));
  const sampleFile = new File([png], "sample.png", { type: "image/png" });
  const canvas = el("canvas", { width: w, height: h });
  const ctx = canvas.getContext("2d");
  const noise = ctx.createImageData(w, h);
  for (let p = 0; p < w * h; p++) {
    const v = Math.floor(Math.random() * 256);
    noise.data.set(
      c === 1
        ? [v, v, v, 255]
        : [v, Math.floor(Math.random() * 256), Math.floor(Math.random() * 256), 255],
      p * 4,
    );
  }
  ctx.putImageData(noise, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const noiseFile = new File([blob], "noise.png", { type: "image/png" });
  return [sampleFile, noiseFile];
}

// -- tabs ------------------------------------------------------------------------------------

function selectTab(tab) {
  for (const t of $$("[role=tab]")) {
    const selected = t === tab;
    t.setAttribute("aria-selected", String(selected));
    t.tabIndex = selected ? 0 : -1;
    $(`#${t.getAttribute("aria-controls")}`).hidden = !selected;
  }
}

function wireTabs() {
  const tabs = $$("[role=tab]");
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = tabs[(i + step + tabs.length) % tabs.length];
      selectTab(next);
      next.focus();
    });
  });
}

// -- wiring ----------------------------------------------------------------------------------

function wire() {
  const keyInput = $("#api-key");
  keyInput.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    showNotice("");
    loadModels();
  });
  $("#model").addEventListener("change", (event) => selectModel(event.target.value));
  $("#reload-models").addEventListener("click", () => loadModels());
  wireTabs();

  const samples = $("#panel-samples");
  const temperature = $("#sample-temperature");
  temperature.addEventListener("input", () => {
    $("#sample-temperature-value").textContent = Number(temperature.value).toFixed(1);
  });
  $("#sample-random-seed").addEventListener("click", () => {
    $("#sample-seed").value = String(randomSeed());
  });
  $("#sample-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy(samples, () => sample(intValue($("#sample-seed"))));
  });
  $("#sample-again").addEventListener("click", () => busy(samples, sampleAgain));

  const walkPanel = $("#panel-walk");
  $$("#walk-form input[name=source]").forEach((r) => r.addEventListener("change", showWalkSource));
  $("#walk-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy(walkPanel, walk);
  });
  $("#walk-position").addEventListener("input", (event) =>
    showWalkStep(Number(event.target.value)),
  );

  const anomaly = $("#panel-anomaly");
  const score = () => busy(anomaly, scoreImages);
  $("#anomaly-files").addEventListener("change", (event) => {
    setAnomalyImages(event.target.files);
    score();
  });
  const zone = $("#drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    setAnomalyImages(event.dataTransfer.files);
    score();
  });
  $("#anomaly-examples").addEventListener("click", () =>
    busy(anomaly, async () => {
      setAnomalyImages(await exampleImages());
      await scoreImages();
    }),
  );
  $("#anomaly-form").addEventListener("submit", (event) => {
    event.preventDefault();
    score();
  });
  $("#anomaly-clear").addEventListener("click", () => {
    setAnomalyImages([]);
    $("#anomaly-files").value = "";
    $("#anomaly-results").replaceChildren();
    showError(anomaly, null);
  });
}

wire();
showWalkSource();
fillScaleSelect();
loadModels();
