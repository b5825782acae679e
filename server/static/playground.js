// The playground: a form generated from the server's /openapi.json (each endpoint's own request schema), uploads
// through /storage/upload/initiate, a mask painter on the video's first frame for inpainting's mask_image_url, a
// preview of what an edit job conditions the model on (/playground/preview: the mask over the video, the source on
// its grown or reframed canvas), the queue protocol with the status stream and the job's live preview beside its
// progress bar, and the same request as curl / fal-client / @fal-ai/client snippets.
// Plain browser JavaScript, no build step and nothing loaded from other hosts.

const $ = (selector) => document.querySelector(selector);
const KEY_STORAGE = "vace.playground.apiKey";
const MEDIA_FIELDS = ["video_url", "mask_video_url", "mask_image_url", "first_frame_url", "last_frame_url",
                      "ref_image_urls"];
const INPUT_FIELDS = ["prompt", "task", ...MEDIA_FIELDS];  // the Input card, in this order; the rest are Options
const BASE_LABEL = "(base) text / image to video, or task";
const PREVIEW_DELAY_MS = 500;
const WIDE_FIELDS = new Set(["negative_prompt"]);
const STEP_LINE = /^step (\d+)\/(\d+)$/;
const PAINT_UNDO_STEPS = 10;  // each step keeps a copy of the mask layer (8 MB at 1080p)
const WINDOW_LINE = /^window (\d+)\/(\d+)$/;  // a job longer than one pass: its windows, each with its steps

const state = {
  openapi: null,       // the server's /openapi.json
  schema: null,        // the request body schema of the selected endpoint, resolved from it
  endpoints: {},       // app -> [task, ...] ("" = the base endpoint), from the queue routes in /openapi.json
  ready: {},           // app -> /ready's entry
  authRequired: false,
  running: null,       // {app, requestId, abort}
  livePreview: { step: null, url: null },  // the live preview shown: its step and its object URL
  preview: { timer: null, seq: 0 },  // the pending conditioning preview and the number of the latest one asked
  painter: { tool: "brush", last: null, undo: [], video: "" },  // the mask painter's tool, stroke, undo and frame
  window: { i: 1, n: 1 },  // the running job's current window, from its log: the bar covers every window
};

// ---------------------------------------------------------------- schema

function resolveRef(openapi, node) {
  if (node && node.$ref) {
    const path = node.$ref.replace(/^#\//, "").split("/");
    return path.reduce((acc, key) => acc[key], openapi);
  }
  return node;
}

/** A property's effective type: {type, enum, minimum, maximum, items, nullable}. */
function fieldType(openapi, prop) {
  let base = resolveRef(openapi, prop);
  let nullable = false;
  if (base.anyOf) {
    const options = base.anyOf.map((t) => resolveRef(openapi, t));
    nullable = options.some((t) => t.type === "null");
    base = options.find((t) => t.type !== "null") || {};
  }
  return { ...base, nullable };
}

/** app -> its tasks, from the queue routes: ``/queue/{app}`` is the base endpoint (task ""). */
function queueEndpoints(openapi) {
  const endpoints = {};
  for (const [path, ops] of Object.entries(openapi.paths)) {
    const match = path.match(/^\/queue\/([^/{}]+\/[^/{}]+)(?:\/([^/{}]+))?$/);
    if (match && ops.post) (endpoints[match[1]] ||= []).push(match[2] || "");
  }
  return endpoints;
}

function endpointId(app, task) {
  return task ? `${app}/${task}` : app;
}

function bodySchema(openapi, app, task) {
  const op = openapi.paths[`/queue/${endpointId(app, task)}`].post;
  return resolveRef(openapi, op.requestBody.content["application/json"].schema);
}

// ---------------------------------------------------------------- form

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function rangeText(type, def) {
  const parts = [];
  if (type.minimum !== undefined && type.maximum !== undefined) {
    if (type.maximum < 1e15) parts.push(`${type.minimum}–${type.maximum}`);
    else parts.push(`≥ ${type.minimum}`);
  }
  if (def !== undefined && typeof def !== "string") parts.push(`default ${JSON.stringify(def)}`);
  else if (typeof def === "string" && def.length < 40) parts.push(`default ${def}`);
  return parts.join(", ");
}

function labelFor(name, prop, required) {
  return el("label", { for: `f-${name}` }, prop.title || name, required ? " *" : "", el("code", { text: name }));
}

function fieldBox(name, classes, ...children) {
  return el("div", { class: `field ${classes}`, "data-field": name }, ...children,
            el("div", { class: "error", "data-error-for": name }));
}

function buildField(openapi, name, prop, required) {
  const type = fieldType(openapi, prop);
  const def = prop.default;
  const hint = el("div", { class: "hint", text: [prop.description, rangeText(type, def)].filter(Boolean).join(" · ") });
  if (MEDIA_FIELDS.includes(name) || /_urls?$/.test(name)) return buildMediaField(name, prop, type, required, hint);
  if (name === "loras") {
    const input = el("textarea", { id: "f-loras", name, rows: 2,
                                   placeholder: "one LoRA per line: name or URL[:scale[:high|low|both]]" });
    return fieldBox(name, "wide", labelFor(name, prop, required), input, hint);
  }
  let input;
  if (type.enum) {
    input = el("select", { id: `f-${name}`, name });
    if (type.nullable) input.append(el("option", { value: "", text: "(server default)" }));
    for (const option of type.enum) input.append(el("option", { value: option, text: option }));
    input.value = def ?? "";
  } else if (type.type === "boolean") {
    input = el("input", { id: `f-${name}`, name, type: "checkbox" });
    input.checked = Boolean(def);
    return fieldBox(name, "checkbox", el("label", { for: `f-${name}` }, input, prop.title || name,
                                            el("code", { text: name })), hint);
  } else if (type.type === "integer" || type.type === "number") {
    input = el("input", {
      id: `f-${name}`, name, type: "number", inputmode: type.type === "integer" ? "numeric" : "decimal",
      min: type.minimum, max: type.maximum !== undefined && type.maximum < 1e15 ? type.maximum : undefined,
      step: type.type === "integer" ? 1 : "any", placeholder: def === undefined ? "random / unset" : undefined,
    });
    input.value = def ?? "";
  } else if (name === "prompt" || name === "negative_prompt") {
    input = el("textarea", { id: `f-${name}`, name, rows: name === "prompt" ? 3 : 4 });
    input.value = def ?? "";
  } else {
    input = el("input", { id: `f-${name}`, name, type: "text" });
    input.value = def ?? "";
  }
  return fieldBox(name, WIDE_FIELDS.has(name) ? "wide" : "", labelFor(name, prop, required), input, hint);
}

function buildMediaField(name, prop, type, required, hint) {
  const multiple = type.type === "array";
  const accept = name.includes("video") ? "video/*" : "image/*";
  const input = multiple
    ? el("textarea", { id: `f-${name}`, name, rows: 2, placeholder: "one URL per line, or upload" })
    : el("input", { id: `f-${name}`, name, type: "text", placeholder: "an http(s) URL or data: URI, or upload a file" });
  const file = el("input", { type: "file", accept, multiple, "data-upload-for": name });
  const uploadButton = el("label", { class: "upload" }, multiple ? "Upload…" : "Upload", file);
  const status = el("div", { class: "hint upload-status", "data-upload-status": name });
  const previews = el("div", { class: "previews", "data-previews": name });
  file.addEventListener("change", () => uploadFiles(name, [...file.files], input, status, multiple)
    .finally(() => { file.value = ""; }));
  input.addEventListener("change", () => showPreviews(name));
  if (name !== "mask_image_url") {
    return fieldBox(name, "media wide", labelFor(name, prop, required),
                    el("div", { class: "media-row" }, input, uploadButton), hint, status, previews);
  }
  const paint = el("button", { type: "button", class: "secondary", id: "paint-mask", text: "Paint" });
  paint.addEventListener("click", () => openPainter().catch((error) => showError(name, String(error))));
  return fieldBox(name, "media wide", labelFor(name, prop, required),
                  el("div", { class: "media-row" }, input, uploadButton, paint), hint, status, previews,
                  buildPainter(input, status));
}

// ---------------------------------------------------------------- mask painter

/** The painter of ``mask_image_url``: the video's first frame with a mask layer over it, painted with the brush
(white = regenerate, shown red) and the eraser, in the video's own pixels so the mask has its size; Undo, Clear, and
"Use this mask", which uploads it as a black-and-white PNG through the upload API and sets the field to its URL.
Pointer events, so a mouse, a pen and a finger paint alike. */
function buildPainter(input, status) {
  const frame = el("video", { id: "painter-frame", muted: true, playsinline: true, preload: "auto" });
  const layer = el("canvas", { id: "painter-mask", "aria-label": "mask layer: paint what to regenerate" });
  const tool = (name, label) => {
    const button = el("button", { type: "button", class: "secondary small", "data-tool": name, text: label,
                                  "aria-pressed": String(name === state.painter.tool) });
    button.addEventListener("click", () => {
      state.painter.tool = name;
      document.querySelectorAll("[data-tool]").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
    });
    return button;
  };
  const size = el("input", { type: "range", id: "painter-size", min: 2, max: 200, value: 32,
                             "aria-label": "brush size in the video's pixels" });
  const sizeText = el("span", { class: "hint", id: "painter-size-text", text: "32 px" });
  size.addEventListener("input", () => { sizeText.textContent = `${size.value} px`; });
  const action = (id, label, run, primary = false) => {
    const button = el("button", { type: "button", class: primary ? "small" : "secondary small", id, text: label });
    button.addEventListener("click", run);
    return button;
  };
  const undo = action("painter-undo", "Undo", () => {
    const last = state.painter.undo.pop();
    if (last) layer.getContext("2d").putImageData(last, 0, 0);
    paintedShare();
  });
  const clear = action("painter-clear", "Clear", () => {
    remember(layer);
    layer.getContext("2d").clearRect(0, 0, layer.width, layer.height);
    paintedShare();
  });
  const use = action("painter-use", "Use this mask", () => usePaintedMask(layer, input, status), true);
  const point = (event) => {
    const box = layer.getBoundingClientRect();
    return [(event.clientX - box.left) * layer.width / box.width, (event.clientY - box.top) * layer.height / box.height];
  };
  layer.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    layer.setPointerCapture(event.pointerId);
    remember(layer);
    state.painter.last = point(event);
    stroke(layer, state.painter.last, state.painter.last, Number(size.value));
  });
  layer.addEventListener("pointermove", (event) => {
    if (!state.painter.last) return;
    const next = point(event);
    stroke(layer, state.painter.last, next, Number(size.value));
    state.painter.last = next;
  });
  for (const end of ["pointerup", "pointercancel"]) {
    layer.addEventListener(end, () => {
      state.painter.last = null;
      paintedShare();
    });
  }
  return el("div", { id: "painter", class: "painter", hidden: true },
            el("div", { class: "painter-tools" }, tool("brush", "Brush"), tool("eraser", "Eraser"),
               el("label", { class: "hint" }, "size ", size), sizeText, undo, clear, use),
            el("div", { class: "painter-stage" }, frame, layer),
            el("div", { class: "hint", id: "painter-status",
                        text: "Paint what to regenerate on the first frame; the job follows it through the clip." }));
}

/** Keep the mask layer as it is for Undo. */
function remember(layer) {
  const undo = state.painter.undo;
  undo.push(layer.getContext("2d").getImageData(0, 0, layer.width, layer.height));
  if (undo.length > PAINT_UNDO_STEPS) undo.shift();
}

/** One segment of a brush (or eraser) stroke, round at its ends, ``width`` video pixels wide. */
function stroke(layer, [x0, y0], [x1, y1], width) {
  const c = layer.getContext("2d");
  c.globalCompositeOperation = state.painter.tool === "eraser" ? "destination-out" : "source-over";
  c.strokeStyle = c.fillStyle = "rgb(255, 40, 40)";
  c.lineWidth = width;
  c.lineCap = c.lineJoin = "round";
  c.beginPath();
  c.moveTo(x0, y0);
  c.lineTo(x1, y1);
  c.stroke();
  c.beginPath();
  c.arc(x1, y1, width / 2, 0, 2 * Math.PI);
  c.fill();
}

/** The painted pixels as a mask: white where the layer is painted (at least half opaque), black elsewhere. */
function paintedPixels(layer) {
  const painted = layer.getContext("2d").getImageData(0, 0, layer.width, layer.height).data;
  const mask = new ImageData(layer.width, layer.height);
  let count = 0;
  for (let i = 0; i < painted.length; i += 4) {
    const value = painted[i + 3] >= 128 ? 255 : 0;
    count += value ? 1 : 0;
    mask.data[i] = mask.data[i + 1] = mask.data[i + 2] = value;
    mask.data[i + 3] = 255;
  }
  return { mask, share: count / (layer.width * layer.height) };
}

function paintedShare() {
  const layer = $("#painter-mask");
  const { share } = paintedPixels(layer);
  $("#painter-status").textContent = `${(share * 100).toFixed(1)}% of the first frame painted (regenerated, and `
    + "followed through the clip)";
  return share;
}

/** Show the painter on the chosen video's first frame; a video of another size starts a new mask. */
async function openPainter() {
  const [video] = mediaValues("video_url");
  if (!video) throw new Error("choose the video first: the mask is painted on its first frame");
  $("#painter").hidden = false;
  const frame = $("#painter-frame");
  if (state.painter.video !== video) {
    state.painter.video = video;
    const loaded = new Promise((resolve, reject) => {
      frame.addEventListener("loadeddata", resolve, { once: true });
      frame.addEventListener("error", () => reject(new Error("the video does not play in this browser")),
                             { once: true });
    });
    frame.src = video;
    await loaded;
    frame.currentTime = 0;
  }
  const layer = $("#painter-mask");
  if (layer.width !== frame.videoWidth || layer.height !== frame.videoHeight) {
    layer.width = frame.videoWidth;
    layer.height = frame.videoHeight;
    state.painter.undo = [];
  }
  $("#painter").dataset.ready = "1";
}

async function usePaintedMask(layer, input, status) {
  clearError("mask_image_url");
  const { mask, share } = paintedPixels(layer);
  if (share === 0) return showError("mask_image_url", "nothing is painted: paint what to regenerate");
  const png = document.createElement("canvas");
  png.width = layer.width;
  png.height = layer.height;
  png.getContext("2d").putImageData(mask, 0, 0);
  const blob = await new Promise((resolve) => png.toBlob(resolve, "image/png"));
  await uploadFiles("mask_image_url", [new File([blob], "painted-mask.png", { type: "image/png" })], input, status,
                    false);
}

function showPreviews(name) {
  if (name === "video_url" && $("#painter") && !$("#painter").hidden) {
    openPainter().catch((error) => showError("mask_image_url", String(error)));  // the new video's first frame
  }
  const box = document.querySelector(`[data-previews="${name}"]`);
  box.replaceChildren();
  for (const url of mediaValues(name)) {
    if (name.includes("video")) {
      box.append(el("video", { src: url, muted: true, playsinline: true, preload: "metadata" }));
    } else {
      box.append(el("img", { src: url, alt: name }));
    }
  }
}

/** ``name or URL[:scale[:high|low|both]]``, read from the right as ``vace generate --lora`` reads it, so a URL
keeps its colons. */
function loraOf(line) {
  const lora = { path: line };
  let parts = line.split(":");
  if (["high", "low", "both"].includes(parts[parts.length - 1])) {
    lora.transformer = parts.pop();
  }
  const scale = parts.length > 1 ? Number(parts[parts.length - 1]) : NaN;
  if (Number.isFinite(scale) && parts[parts.length - 1].trim() !== "") {
    lora.scale = scale;
    parts.pop();
  }
  lora.path = parts.join(":");
  return lora;
}

function mediaValues(name) {
  const value = $(`#f-${name}`).value.trim();
  if (!value) return [];
  return $(`#f-${name}`).tagName === "TEXTAREA" ? value.split(/\s*\n\s*/).filter(Boolean) : [value];
}

/** What the user set in the form (fields whose value is not their default), to carry over to another endpoint's
form: a field both endpoints have keeps it. */
function changedValues() {
  const values = {};
  if (!state.schema) return values;
  for (const [name, prop] of Object.entries(state.schema.properties)) {
    const input = $(`#f-${name}`);
    if (!input) continue;
    const value = input.type === "checkbox" ? input.checked : input.value;
    const def = input.type === "checkbox" ? Boolean(prop.default) : String(prop.default ?? "");
    if (value !== def) values[name] = value;
  }
  return values;
}

function buildForm(openapi, carried = {}) {
  const schema = state.schema;
  const required = new Set(schema.required || []);
  const inputs = $("#input-fields");
  const options = $("#option-fields");
  inputs.replaceChildren();
  options.replaceChildren();
  for (const [name, prop] of Object.entries(schema.properties)) {
    const field = buildField(openapi, name, prop, required.has(name));
    (INPUT_FIELDS.includes(name) ? inputs : options).append(field);
  }
  // Keep the input section in reading order: prompt first, the task, then the video, its mask, the images.
  for (const name of INPUT_FIELDS) {
    const field = inputs.querySelector(`[data-field="${name}"]`);
    if (field) inputs.append(field);
  }
  for (const [name, value] of Object.entries(carried)) {
    const input = $(`#f-${name}`);
    if (!input) continue;
    if (input.type === "checkbox") input.checked = value;
    else input.value = value;
    if (MEDIA_FIELDS.includes(name)) showPreviews(name);
  }
  $("#preview").hidden = !("video_url" in schema.properties);
  clearPreview();
}

function resetForm() {
  for (const [name, prop] of Object.entries(state.schema.properties)) {
    if (INPUT_FIELDS.includes(name)) continue;
    const input = $(`#f-${name}`);
    if (input.type === "checkbox") input.checked = Boolean(prop.default);
    else input.value = prop.default ?? "";
  }
  clearErrors();
  updateSnippets();
}

/** The request body: required fields and every field whose value differs from its default. */
function requestBody() {
  const body = {};
  const required = new Set(state.schema.required || []);
  for (const [name, prop] of Object.entries(state.schema.properties)) {
    const input = $(`#f-${name}`);
    const type = fieldType(state.openapi, prop);
    let value;
    if (name === "loras") {
      const lines = mediaValues(name);
      if (!lines.length) continue;
      value = lines.map(loraOf);
    } else if (type.type === "array") {
      const values = mediaValues(name);
      if (!values.length) continue;
      value = values;
    } else if (input.type === "checkbox") {
      value = input.checked;
    } else {
      const text = input.value;
      if (text.trim() === "") {
        if (required.has(name)) body[name] = text;  // let the server say it is required
        continue;
      }
      if (type.type === "integer" || type.type === "number") {
        value = Number(text);
        // Seeds up to 2^63 do not fit a JS number: send the digits as a string, which the schema coerces.
        if (type.type === "integer" && !Number.isSafeInteger(value)) value = text.trim();
      } else {
        value = MEDIA_FIELDS.includes(name) ? text.trim() : text;
      }
    }
    if (!required.has(name) && prop.default !== undefined && value === prop.default) continue;
    body[name] = value;
  }
  return body;
}

// ---------------------------------------------------------------- HTTP

function headers(extra = {}) {
  const key = $("#api-key").value.trim();
  return key ? { ...extra, Authorization: `Key ${key}` } : extra;
}

/** Same-origin path of a URL the server handed out (its public URL can differ from this page's origin). */
function localPath(url) {
  const parsed = new URL(url, location.href);
  return parsed.pathname + parsed.search;
}

async function readError(response) {
  try {
    const body = await response.json();
    return body.detail ?? body;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

/** Upload ``files`` (File objects: chosen, or the painted mask) and put their URLs into ``input``. */
async function uploadFiles(name, files, input, status, multiple) {
  if (!files.length) return;
  clearError(name);
  clearError("api_key");
  const urls = [];
  try {
    for (const [i, file] of files.entries()) {
      status.textContent = `uploading ${file.name} (${(file.size / 1e6).toFixed(1)} MB${files.length > 1 ? `, ${i + 1}/${files.length}` : ""})…`;
      const initiate = await fetch("/storage/upload/initiate", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ content_type: file.type || "application/octet-stream", file_name: file.name }),
      });
      if (!initiate.ok) throw { status: initiate.status, detail: await readError(initiate) };
      const { upload_url, file_url } = await initiate.json();
      const put = await fetch(localPath(upload_url), {
        method: "PUT", headers: { "Content-Type": file.type || "application/octet-stream" }, body: file,
      });
      if (!put.ok) throw { status: put.status, detail: await readError(put) };
      urls.push(file_url);
    }
  } catch (error) {
    status.textContent = "";
    const message = typeof error.detail === "string" ? error.detail : JSON.stringify(error.detail ?? String(error));
    showError(error.status === 401 ? "api_key" : name, `upload failed: ${message}`);
    return;
  }
  input.value = multiple ? [...mediaValues(name), ...urls].join("\n") : urls[0];
  status.textContent = `uploaded ${files.map((f) => f.name).join(", ")}`;
  showPreviews(name);
  updateSnippets();
  schedulePreview();
}

/** Server-sent events over fetch (EventSource cannot send the Authorization header). */
async function* statusEvents(path, signal) {
  const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!response.ok) throw { status: response.status, detail: await readError(response) };
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
      if (data.length) yield JSON.parse(data.join("\n"));
    }
  }
}

// ---------------------------------------------------------------- errors

function clearError(name) {
  const box = document.querySelector(`[data-error-for="${name}"]`);
  if (box) box.textContent = "";
  document.querySelector(`[data-field="${name}"]`)?.classList.remove("invalid");
}

function clearErrors() {
  document.querySelectorAll("[data-error-for]").forEach((box) => { box.textContent = ""; });
  document.querySelectorAll(".field.invalid").forEach((f) => f.classList.remove("invalid"));
}

function showError(name, message) {
  const box = document.querySelector(`[data-error-for="${name}"]`) || $("#form-error");
  box.textContent = box.textContent ? `${box.textContent}\n${message}` : message;
  const field = document.querySelector(`[data-field="${name}"]`);
  if (field) {
    field.classList.add("invalid");
    if (field.closest("details")) field.closest("details").open = true;
  }
  (field || box).scrollIntoView({ block: "center", behavior: "smooth" });
}

/** A fal error body next to its fields: 422 ``detail`` items carry ``loc: ["body", field, index?]``. */
function showFalError(status, detail) {
  if (status === 401) return showError("api_key", typeof detail === "string" ? detail : JSON.stringify(detail));
  if (!Array.isArray(detail)) {
    return showError("body", typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  for (const item of detail) {
    const loc = (item.loc || []).filter((part) => part !== "body");
    const field = typeof loc[0] === "string" && state.schema.properties[loc[0]] ? loc[0] : "body";
    const where = loc.length > 1 ? `[${loc.slice(1).join("][")}] ` : field === "body" && loc.length ? `${loc.join(".")}: ` : "";
    showError(field, `${where}${item.msg}${item.type ? ` (${item.type})` : ""}`);
  }
}

// ---------------------------------------------------------------- running a job

function setProgress(percent, text) {
  $("#progress").value = percent;
  if (text !== undefined) $("#progress-text").textContent = text;
}

function addLogs(lines, replace) {
  const log = $("#log");
  if (replace) {
    log.replaceChildren();
    state.window = { i: 1, n: 1 };
  }
  for (const line of lines) {
    const time = line.timestamp ? new Date(line.timestamp).toLocaleTimeString() : "";
    log.append(el("div", { class: line.level, text: `${time} ${line.level.padEnd(7)} ${line.message}` }));
    const win = line.message.match(WINDOW_LINE);
    if (win) state.window = { i: Number(win[1]), n: Number(win[2]) };
    const step = line.message.match(STEP_LINE);
    if (step) {
      const [i, m] = [Number(step[1]), Number(step[2])];
      const { i: w, n } = state.window;
      setProgress(Math.round((100 * ((w - 1) * m + i)) / (n * m)),
                  n > 1 ? `window ${w}/${n}, denoising step ${i}/${m}` : `denoising step ${i}/${m}`);
    } else if (line.message.startsWith("encoding")) {
      $("#progress-text").textContent = line.message;
    } else if ($("#progress").value === 0) {
      $("#progress-text").textContent = line.message;
    }
  }
  log.scrollTop = log.scrollHeight;
}

function showVideo(prefix, url) {
  const video = $(`#${prefix}-video`);
  if (video.getAttribute("src") !== url) video.src = url;
  $(`#${prefix}-download`).href = url;
  $(`#${prefix}-figure`).hidden = false;
  $("#results").hidden = false;
}

function showControl(url, task) {
  $("#control-task").textContent = task;
  showVideo("control", url);
}

/** The job's live preview (an animated WebP of what it is denoising), fetched with the key as the result is, shown
 * beside the progress bar; a new step replaces it. */
async function showLivePreview(url, step) {
  if (step === state.livePreview.step) return;
  state.livePreview.step = step;
  const response = await fetch(localPath(url), { headers: headers() });
  if (!response.ok || step !== state.livePreview.step) return;  // gone with the job's end, or a newer one came
  const objectUrl = URL.createObjectURL(await response.blob());
  if (state.livePreview.url) URL.revokeObjectURL(state.livePreview.url);
  state.livePreview.url = objectUrl;
  const image = $("#live-preview-image");
  image.src = objectUrl;
  image.dataset.step = String(step);
  $("#live-preview-caption").textContent = `preview after step ${step}`;
  $("#live-preview").hidden = false;
}

function hideLivePreview() {
  if (state.livePreview.url) URL.revokeObjectURL(state.livePreview.url);
  state.livePreview = { step: null, url: null };
  $("#live-preview").hidden = true;
}

function showOutput(output) {
  showVideo("result", output.video.url);
  const v = output.video;
  const meta = [v.width && `${v.width}x${v.height}`, v.num_frames && `${v.num_frames} frames`,
                v.fps && `${v.fps} fps`, v.duration && `${v.duration.toFixed(2)} s`,
                v.file_size && `${(v.file_size / 1e6).toFixed(2)} MB`].filter(Boolean);
  $("#result-meta").textContent = meta.join(" · ");
  $("#result-seed").textContent = String(output.seed);
  if (output.mask_video) showVideo("mask", output.mask_video.url);
  $("#zip-link").hidden = !output.frames_zip;
  if (output.frames_zip) $("#zip-download").href = output.frames_zip.url;
  $("#result-json").textContent = JSON.stringify(output, null, 2);
}

function resetRun() {
  $("#results").hidden = true;
  $("#control-figure").hidden = true;
  $("#mask-figure").hidden = true;
  for (const id of ["#control-video", "#mask-video", "#result-video"]) {
    $(id).removeAttribute("src");
    $(id).load();
  }
  $("#log").replaceChildren();
  setProgress(0, "");
  hideLivePreview();
}

async function submit(event) {
  event.preventDefault();
  if (state.running) return;
  clearErrors();
  const app = $("#app").value;
  const task = $("#task").value;
  const body = requestBody();
  updateSnippets();
  $("#submit").disabled = true;
  try {
    const response = await fetch(`/queue/${endpointId(app, task)}`, {
      method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
    });
    if (!response.ok) {
      showFalError(response.status, await readError(response));
      $("#submit").disabled = false;
      return;
    }
    const queued = await response.json();
    resetRun();
    await follow(app, task, queued.request_id);
  } catch (error) {
    showError("body", error.detail ? JSON.stringify(error.detail) : String(error));
  } finally {
    state.running = null;
    $("#submit").disabled = false;
    $("#cancel").hidden = true;
  }
}

/** Follow a queued request over the status stream (reconnecting if it drops) until it completes. */
async function follow(app, task, requestId) {
  const abort = new AbortController();
  state.running = { app, requestId, abort };
  $("#cancel").hidden = false;
  $("#run-state").replaceChildren("request ", el("code", { text: requestId }), " · ",
                                  el("a", { href: `/queue/${app}/requests/${requestId}/status?logs=1`, target: "_blank",
                                            text: "status" }));
  const base = `/queue/${app}/requests/${requestId}`;
  let last = null;
  for (let attempt = 0; attempt < 20 && last?.status !== "COMPLETED"; attempt++) {
    let first = true;
    try {
      for await (const status of statusEvents(`${base}/status/stream?logs=1`, abort.signal)) {
        last = status;
        addLogs(status.logs || [], first);  // a new stream starts with every line so far
        first = false;
        if (status.status === "IN_QUEUE") {
          $("#progress-text").textContent = `in queue, position ${status.queue_position ?? "?"}`;
        }
        if (status.control_video_url) showControl(status.control_video_url, task || $("#f-task")?.value);
        if (status.preview_url) showLivePreview(status.preview_url, status.preview_step).catch(() => {});  // skipped
      }
    } catch (error) {
      if (abort.signal.aborted) return;
      if (error.status) return showFalError(error.status, error.detail);
    }
    if (last?.status !== "COMPLETED") await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  if (last?.status !== "COMPLETED") return showError("body", "lost the status stream; see the status link above");
  const result = await fetch(base, { headers: headers() });
  const output = await (result.ok ? result.json() : readError(result));
  if (!result.ok) {
    setProgress($("#progress").value, `failed: ${last.error || `${result.status} ${result.statusText}`}`);
    return showFalError(result.status, output);
  }
  setProgress(100, `done in ${last.metrics?.inference_time?.toFixed(1) ?? "?"} s`);
  showOutput(output);
}

async function cancel() {
  const running = state.running;
  if (!running) return;
  await fetch(`/queue/${running.app}/requests/${running.requestId}/cancel`, { method: "PUT", headers: headers() });
}

// ---------------------------------------------------------------- snippets

function pyLiteral(value, indent = "") {
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    const inner = indent + "    ";
    return `[\n${value.map((v) => inner + pyLiteral(v, inner)).join(",\n")},\n${indent}]`;
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return "{}";
    const inner = indent + "    ";
    return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pyLiteral(v, inner)}`).join(",\n")},\n${indent}}`;
  }
  return JSON.stringify(value);
}

function jsLiteral(value, indent = "") {
  return JSON.stringify(value, null, 2).replace(/\n/g, `\n${indent}`);
}

function updateSnippets() {
  if (!state.schema) return;
  const endpoint = endpointId($("#app").value, $("#task").value);
  const body = requestBody();
  const base = location.origin;
  const json = JSON.stringify(body, null, 2).replace(/'/g, "'\\''");
  const auth = state.authRequired;
  $("#snippet-curl").textContent = [
    `curl -s -X POST ${base}/queue/${endpoint} \\`,
    `  -H 'Content-Type: application/json' \\`,
    ...(auth ? [`  -H "Authorization: Key $FAL_KEY" \\`] : []),
    `  -d '${json}'`,
    `# -> {"request_id": ..., "status_url": ..., "response_url": ...}; then:`,
    `#   curl -s${auth ? ' -H "Authorization: Key $FAL_KEY"' : ""} "<status_url>?logs=1"   (202 while running, 200 when done)`,
    `#   curl -s${auth ? ' -H "Authorization: Key $FAL_KEY"' : ""} <response_url>          (the output JSON)`,
    `# or wait for the output in one call: POST ${base}/${endpoint} with the same body`,
  ].join("\n");
  const https = location.protocol === "https:";
  $("#snippet-python").textContent = [
    `# pip install fal-client; server.falclient comes with vace-server (pip install .)`,
    ...(auth ? [`# export FAL_KEY=<one of the server's API keys>`] : []),
    `import fal_client`,
    `from server.falclient import use_server`,
    ``,
    https ? `use_server("${base}", ca_file="<data-dir>/tls/cert.pem")  # the certificate vace serve --tls made`
          : `use_server("${base}")`,
    ``,
    `result = fal_client.subscribe(`,
    `    "${endpoint}",`,
    `    arguments=${pyLiteral(body, "    ")},`,
    `    with_logs=True,`,
    `    on_queue_update=lambda update: print(update),`,
    `)`,
    `print(result["video"]["url"], result["seed"])`,
  ].join("\n");
  $("#snippet-js").textContent = [
    `// npm install @fal-ai/client${https ? "; run with NODE_EXTRA_CA_CERTS=<data-dir>/tls/cert.pem" : ""}`,
    `import { fal } from "@fal-ai/client";`,
    ``,
    `const base = "${base}";`,
    `fal.config({`,
    `  credentials: process.env.FAL_KEY,${auth ? "" : "  // any value: this server has no API keys"}`,
    `  requestMiddleware: async (request) => ({`,
    `    ...request,`,
    `    url: request.url`,
    `      .replace("https://queue.fal.run", \`\${base}/queue\`)`,
    `      .replace("https://rest.fal.ai", base)`,
    `      .replace("https://fal.run", base),`,
    `  }),`,
    `});`,
    ``,
    `const result = await fal.subscribe("${endpoint}", {`,
    `  input: ${jsLiteral(body, "  ")},`,
    `  logs: true,`,
    `  onQueueUpdate: (update) => console.log(update.status, update.logs?.at(-1)?.message ?? ""),`,
    `});`,
    `console.log(result.data.video.url, result.data.seed);`,
  ].join("\n");
}

function selectTab(name) {
  document.querySelectorAll("[role=tab]").forEach((tab) => tab.setAttribute("aria-selected", String(tab.dataset.tab === name)));
  for (const tab of ["curl", "python", "js"]) $(`#snippet-${tab}`).hidden = tab !== name;
}

async function copySnippet() {
  const tab = document.querySelector("[role=tab][aria-selected=true]").dataset.tab;
  const text = $(`#snippet-${tab}`).textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {  // no clipboard API outside secure contexts (plain http to another host): select for Ctrl-C instead
    const range = document.createRange();
    range.selectNodeContents($(`#snippet-${tab}`));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    document.execCommand("copy");
  }
  $("#copy").textContent = "Copied";
  setTimeout(() => { $("#copy").textContent = "Copy"; }, 1200);
}

// ---------------------------------------------------------------- start

function fillEndpoints() {
  const appSelect = $("#app");
  for (const app of Object.keys(state.endpoints)) {
    const ready = state.ready[app];
    const label = ready && !ready.weights_present ? `${app} (weights not installed)` : app;
    appSelect.append(el("option", { value: app, text: label }));
  }
  const firstReady = Object.keys(state.endpoints).find((app) => state.ready[app]?.weights_present);
  if (firstReady) appSelect.value = firstReady;
  fillTasks();
}

function fillTasks() {
  const app = $("#app").value;
  const taskSelect = $("#task");
  const previous = taskSelect.value;
  const tasks = state.endpoints[app];
  taskSelect.replaceChildren(...tasks.map((t) => el("option", { value: t, text: t || BASE_LABEL })));
  // The task kept across apps; at first pose, the page's long-standing start.
  taskSelect.value = tasks.includes(previous) && state.schema ? previous : tasks.includes("pose") ? "pose" : tasks[0];
  const ready = state.ready[app];
  $("#endpoint-hint").textContent = ready
    ? `model ${ready.model}: weights ${ready.weights_present ? "installed" : "NOT installed (requests are refused)"}${ready.loaded ? ", loaded" : ""}`
    : "";
  selectEndpoint();
}

/** Build the selected endpoint's form from its own schema, keeping what the user changed where the field exists. */
function selectEndpoint() {
  const carried = changedValues();
  state.schema = bodySchema(state.openapi, $("#app").value, $("#task").value);
  buildForm(state.openapi, carried);
  clearErrors();
  updateSnippets();
  schedulePreview();
}

// ---------------------------------------------------------------- conditioning preview

function clearPreview() {
  $("#preview-canvas").hidden = true;
  $("#preview-caption").textContent = "";
  $("#preview-notes").replaceChildren();
}

/** Ask for a preview shortly after the last change (uploads and typing come in bursts), when there is a video. */
function schedulePreview() {
  clearTimeout(state.preview.timer);
  if ($("#preview").hidden || !mediaValues("video_url").length) return clearPreview();
  state.preview.timer = setTimeout(runPreview, PREVIEW_DELAY_MS);
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("preview image did not load"));
    image.src = src;
  });
}

/** The frame with what the job generates (mask value 128 and up, as the server binarises) blended halfway to red,
so it shows on dark and bright picture alike; kept pixels stay as they are. Both images are data: URIs from the
server, so their pixels can be read. */
async function drawPreview(answer) {
  const canvas = $("#preview-canvas");
  const [frame, mask] = await Promise.all([loadImage(answer.frame), loadImage(answer.mask)]);
  canvas.width = answer.width;
  canvas.height = answer.height;
  const c = canvas.getContext("2d", { willReadFrequently: true });
  c.drawImage(mask, 0, 0);
  const generated = c.getImageData(0, 0, canvas.width, canvas.height).data;
  c.drawImage(frame, 0, 0);
  const image = c.getImageData(0, 0, canvas.width, canvas.height);
  const pixels = image.data;
  for (let i = 0; i < pixels.length; i += 4) {
    if (generated[i] < 128) continue;
    pixels[i] = (pixels[i] + 255) >> 1;
    pixels[i + 1] = (pixels[i + 1] + 40) >> 1;
    pixels[i + 2] = (pixels[i + 2] + 40) >> 1;
  }
  c.putImageData(image, 0, 0);
  canvas.hidden = false;
}

async function runPreview() {
  const seq = ++state.preview.seq;
  const endpoint = endpointId($("#app").value, $("#task").value);
  $("#preview-caption").textContent = "previewing…";
  let answer;
  try {
    const response = await fetch(`/playground/preview?endpoint=${encodeURIComponent(endpoint)}`, {
      method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(requestBody()),
    });
    answer = await (response.ok ? response.json() : readError(response));
    if (seq !== state.preview.seq) return;  // a newer preview was asked for meanwhile
    clearErrors();
    if (!response.ok) {
      clearPreview();
      return showFalError(response.status, answer);
    }
  } catch (error) {
    if (seq === state.preview.seq) $("#preview-caption").textContent = `no preview: ${error}`;
    return;
  }
  const fps = Math.round(answer.output_fps * 100) / 100;
  const parts = [`output ${answer.width}x${answer.height}`, `${answer.output_frames} frames at ${fps} fps`];
  if (answer.generated_share !== undefined) {
    parts.push(`${Math.round(answer.generated_share * 100)}% of frame ${answer.frame_index} generated (red)`);
  }
  if (answer.frame) await drawPreview(answer);
  else $("#preview-canvas").hidden = true;
  if (seq !== state.preview.seq) return;
  $("#preview-caption").textContent = parts.join(" · ");  // last: the caption says the canvas is drawn
  $("#preview-notes").replaceChildren(...answer.notes.map((note) => el("li", { text: note })));
}

async function start() {
  const [openapi, ready, config] = await Promise.all([
    fetch("/openapi.json").then((r) => r.json()),
    fetch("/ready").then((r) => r.json()).catch(() => ({})),
    fetch("/playground/config").then((r) => r.json()),
  ]);
  state.openapi = openapi;
  state.endpoints = queueEndpoints(openapi);
  state.ready = ready.endpoints || {};
  state.authRequired = config.auth_required;
  $("#api-key-field").hidden = !state.authRequired;
  $("#api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  $("#api-key").addEventListener("change", () => {
    localStorage.setItem(KEY_STORAGE, $("#api-key").value.trim());
    clearError("api_key");
  });
  fillEndpoints();
  $("#app").addEventListener("change", fillTasks);
  $("#task").addEventListener("change", selectEndpoint);
  $("#request-form").addEventListener("input", updateSnippets);
  $("#request-form").addEventListener("change", (event) => {
    updateSnippets();
    if (event.target.closest("#input-fields, #option-fields")) schedulePreview();
  });
  $("#preview-button").addEventListener("click", runPreview);
  $("#request-form").addEventListener("submit", submit);
  $("#reset").addEventListener("click", resetForm);
  $("#cancel").addEventListener("click", cancel);
  $("#copy").addEventListener("click", copySnippet);
  $("#reuse-seed").addEventListener("click", () => {
    $("#f-seed").value = $("#result-seed").textContent;
    updateSnippets();
  });
  document.querySelectorAll("[role=tab]").forEach((tab) => tab.addEventListener("click", () => selectTab(tab.dataset.tab)));
  updateSnippets();
  $("#submit").disabled = false;
  document.body.dataset.ready = "1";
}

start().catch((error) => {
  $("#form-error").textContent = `could not start the playground: ${error}`;
});
