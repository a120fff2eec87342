// pneumolab page: send the chosen X-ray to /v1/predict and show the result (no build step).
"use strict";

const byId = (id) => document.getElementById(id);
const percent = (p) => `${(100 * p).toFixed(1)}%`;
let heatmapAvailable = false;
let modelReady = Promise.resolve();
let inFlight = null;  // the upload being answered: a newer one cancels it

function setStatus(text, isError = false) {
  byId("status").textContent = text;
  byId("status").classList.toggle("error", isError);
}

async function loadModel() {
  try {
    const response = await fetch("/v1/model");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const info = await response.json();
    heatmapAvailable = info.heatmap_available;
    byId("model").textContent = `model ${info.model} (${info.model_version}), ` +
      `${info.image_size} px, ${info.backend} backend` + classesText(info) +
      (heatmapAvailable ? "" : " — no heat maps (they need one convolutional PyTorch network, torch backend)");
  } catch (error) {
    byId("model").textContent = "model information unavailable";
  }
}

// a three-class run names its classes, and says where this server gives no subtypes
function classesText(info) {
  if (!info.subtype_names) return "";
  const none = info.subtypes_available ? ""
    : ` — no subtypes with the ${info.backend} backend (it gives the probability of pneumonia only)`;
  return `, three classes (${info.subtype_names.join(" / ")})${none}`;
}

async function predict(file, note = "") {
  if (inFlight) inFlight.abort();  // an earlier, slower answer must not replace this one
  const request = new AbortController();
  inFlight = request;
  setStatus(`Analysing ${file.name}…${note}`);
  await modelReady;
  byId("result").hidden = true;
  const body = new FormData();
  body.append("file", file);
  const query = heatmapAvailable ? "heatmap=true" : "preview=true";
  try {
    const response = await fetch(`/v1/predict?${query}`, { method: "POST", body, signal: request.signal });
    // pneumolab answers JSON; uvicorn's own limit (--max-connections) answers plain text
    const json = (response.headers.get("content-type") || "").includes("application/json");
    const result = json ? await response.json() : { detail: await response.text() };
    if (!response.ok) {
      const detail = typeof result.detail === "string" && result.detail ? result.detail : response.statusText;
      setStatus(`Error ${response.status}: ${detail}`, true);
      return;
    }
    show(result);
    setStatus(`${file.name}: done in ${Math.round(result.timing_ms)} ms${note}`);
  } catch (error) {
    if (error.name !== "AbortError") setStatus(`Request failed: ${error}`, true);
  } finally {
    if (inFlight === request) inFlight = null;
  }
}

function show(result) {
  byId("probability").textContent = result.probability == null
    ? "not available (the model's output is not a number)"
    : percent(result.probability);
  byId("label").textContent = result.label;
  byId("label").className = result.label;
  const provenance = document.createElement("small");
  provenance.textContent = ` chosen on ${result.threshold_provenance}`;
  byId("threshold").replaceChildren(percent(result.threshold), provenance);
  showSubtype(result);
  showScope(result);
  byId("image").src = `data:image/png;base64,${result.image_png_base64}`;
  byId("heatmap-figure").hidden = !result.heatmap_png_base64;
  if (result.heatmap_png_base64) {
    byId("heatmap").src = `data:image/png;base64,${result.heatmap_png_base64}`;
    byId("heatmap-caption").textContent = `Grad-CAM — ${result.heatmap_caption}`;
  }
  byId("result").hidden = false;
}

// a three-class run's answer has the subtype fields (a binary run's has none: row hidden)
function showSubtype(result) {
  const threeClass = "p_normal" in result;
  byId("subtype-term").hidden = !threeClass;
  byId("subtype").hidden = !threeClass;
  if (!threeClass) return;
  const call = result.subtype || "none (given only for an in-scope image called PNEUMONIA)";
  byId("subtype").textContent = result.probability == null
    ? "not available (the model's output is not a number)"
    : result.p_normal == null
      ? `not available (the ${result.backend} backend gives the probability of pneumonia only)`
      : `${call} — NORMAL ${percent(result.p_normal)}, BACTERIAL ${percent(result.p_bacterial)}, ` +
        `VIRAL ${percent(result.p_viral)}`;
}

function fillList(id, items) {
  byId(id).replaceChildren(...items.map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
  byId(id).hidden = items.length === 0;
}

function showScope(result) {
  byId("scope").hidden = result.in_scope;
  fillList("scope-reasons", result.reasons);
  fillList("scope-warnings", result.warnings);
  const ood = result.ood_threshold == null
    ? "no OOD model for this run"
    : result.ood_score == null
      ? `OOD score unavailable (threshold ${result.ood_threshold.toFixed(1)})`
      : `OOD score ${result.ood_score.toFixed(1)} (threshold ${result.ood_threshold.toFixed(1)})`;
  byId("in-scope").textContent = `${result.in_scope ? "yes" : "no"} — ${ood}`;
}

// one image per answer, as the API gives: a drop of several says which one was analysed, and
// a drop without a file (a link dragged from a viewer) says so instead of doing nothing
function dropped(files) {
  if (!files.length) {
    setStatus("No file in what was dropped: drop an image file (JPEG, PNG or DICOM) from a folder", true);
    return;
  }
  const note = files.length > 1 ? ` (${files.length} files dropped: only this one is analysed, one image at a time)` : "";
  predict(files[0], note);
}

function setUp() {
  const drop = byId("drop");
  byId("file-input").addEventListener("change", (event) => {
    if (event.target.files.length) predict(event.target.files[0]);
    event.target.value = "";  // choosing the same file again fires a change again
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    dropped(event.dataTransfer.files);
  });
  modelReady = loadModel();
}

document.addEventListener("DOMContentLoaded", setUp);
