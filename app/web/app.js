// The search page: plain DOM, no framework, no CDN. Every call goes to a documented /v1 route.
"use strict";

const $ = (id) => document.getElementById(id);
const ROUTES = {
  collections: "/v1/collections",
  search: "/v1/search",
  searchImage: "/v1/search/image",
  classify: "/v1/classify",
};

function headers(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: "Bearer " + key } : extra;
}

async function call(url, options = {}) {
  const response = await fetch(url, { ...options, headers: headers(options.headers || {}) });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not our error schema */ }
    throw new Error(message);
  }
  return response;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadCollections() {
  try {
    const data = await (await call(ROUTES.collections)).json();
    const select = $("collection");
    select.innerHTML = "";
    for (const c of data.collections) {
      const option = document.createElement("option");
      option.value = c.name;
      option.textContent = `${c.name} (${c.vectors})`;
      select.appendChild(option);
    }
    if (!data.collections.length) status("No collections yet: create one with POST /v1/collections.");
  } catch (e) { status("Cannot list collections: " + e.message, true); }
}

async function imageInto(img, url) {
  // Thumbnails go through fetch so that an API key (a header) can be sent with them.
  try {
    const blob = await (await call(url)).blob();
    img.src = URL.createObjectURL(blob);
  } catch (e) { img.alt = "thumbnail unavailable"; }
}

function showResults(data) {
  const grid = $("results");
  grid.innerHTML = "";
  for (const hit of data.results) {
    const card = document.createElement("div");
    card.className = "card";
    const img = document.createElement("img");
    img.alt = hit.source || "image " + hit.id;
    imageInto(img, hit.thumbnail_url);
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = `#${hit.id}  score ${hit.score.toFixed(3)}`;
    const meta = document.createElement("pre");
    meta.textContent = JSON.stringify(hit.metadata, null, 1).slice(0, 600);
    const similar = document.createElement("button");
    similar.textContent = "similar";
    similar.onclick = () => search({ image_id: hit.id });
    const classify = document.createElement("button");
    classify.textContent = "classify";
    classify.onclick = () => { $("classify-id").value = hit.id; $("classify-target").textContent = `Image #${hit.id}`; };
    card.append(img, score, similar, " ", classify, meta);
    grid.appendChild(card);
  }
  status(`${data.results.length} results in ${data.took_ms.toFixed(1)} ms`);
}

async function search(query) {
  const body = { collection: $("collection").value, k: Number($("k").value) || 24, ...query };
  status("Searching…");
  try {
    const response = await call(ROUTES.search, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    showResults(await response.json());
  } catch (e) { status(e.message, true); }
}

async function searchByFile(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("collection", $("collection").value);
  form.append("k", String(Number($("k").value) || 24));
  status("Searching by image…");
  try { showResults(await (await call(ROUTES.searchImage, { method: "POST", body: form })).json()); }
  catch (e) { status(e.message, true); }
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = reject;
    reader.readAsDataURL(file);
  });
}

async function classify(event) {
  event.preventDefault();
  const labels = $("labels").value.split(/[,\n]/).map((s) => s.trim()).filter(Boolean);
  const body = { labels, language: $("language").value };
  const file = $("classify-file").files[0];
  if (file) body.image_base64 = await readAsDataURL(file);
  else if ($("classify-id").value) { body.image_id = Number($("classify-id").value); body.collection = $("collection").value; }
  else { $("classify-target").textContent = "Choose an image first."; return; }
  const list = $("classify-results");
  list.innerHTML = "";
  try {
    const data = await (await call(ROUTES.classify, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    })).json();
    for (const row of data.labels) {
      const item = document.createElement("li");
      item.textContent = `${row.label}: ${(100 * row.probability).toFixed(1)} %`;
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = (100 * row.probability).toFixed(1) + "%";
      item.appendChild(bar);
      list.appendChild(item);
    }
  } catch (e) { list.textContent = e.message; }
}

function setUpDrop() {
  const drop = $("drop");
  drop.onclick = () => $("drop-file").click();
  $("drop-file").onchange = () => { if ($("drop-file").files[0]) searchByFile($("drop-file").files[0]); };
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) searchByFile(e.dataTransfer.files[0]);
  };
}

window.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = localStorage.getItem("internvl-search-key") || "";
  $("api-key").onchange = () => { localStorage.setItem("internvl-search-key", $("api-key").value.trim()); loadCollections(); };
  $("search-form").onsubmit = (e) => { e.preventDefault(); if ($("query").value.trim()) search({ text: $("query").value }); };
  $("classify-form").onsubmit = classify;
  $("classify-file").onchange = () => { $("classify-id").value = ""; $("classify-target").textContent = "Uploaded image"; };
  setUpDrop();
  loadCollections();
});
