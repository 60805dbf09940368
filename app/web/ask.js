// The "Ask" panel: a question about the collection goes to POST /v1/ask; the page shows the answer, the images it
// was given (the cited ones highlighted) and each cited image large, with the answer's grounding boxes drawn on it.
// It relies on app.js (loaded first) for $, call and imageInto.
"use strict";

const ASK_ROUTE = "/v1/ask";
const VIEW_PX = 360; // longest side of a cited image as drawn (small originals are scaled up, large ones down)
let askSeq = 0; // a reply to an older question must not overwrite a newer one

function askStatus(text, isError = false) {
  $("ask-status").textContent = text;
  $("ask-status").className = isError ? "error" : "";
}

// The answer as text nodes, its markup made readable: <ref>phrase</ref> is highlighted, "Image-N" is bold and
// <box>[[…]]</box> is dropped (the box is drawn on the image instead). Never innerHTML: the answer is model output.
function answerNodes(answer) {
  const nodes = [];
  const markup = /<ref>([\s\S]*?)<\/ref>|<box>[\s\S]*?<\/box>|(Image-\d+)/g;
  let last = 0;
  for (const m of answer.matchAll(markup)) {
    nodes.push(document.createTextNode(answer.slice(last, m.index)));
    if (m[1] !== undefined || m[2] !== undefined) {
      const el = document.createElement(m[1] !== undefined ? "mark" : "strong");
      el.textContent = m[1] !== undefined ? m[1] : m[2];
      nodes.push(el);
    }
    last = m.index + m[0].length;
  }
  nodes.push(document.createTextNode(answer.slice(last)));
  return nodes;
}

// Boxes come in pixels of the original image. They are placed in percent of its natural size, so they stay on the
// object at whatever size the image is drawn (layout, zoom, window resize) with nothing to recompute.
function drawBoxes(frame, img, boxes) {
  const w = img.naturalWidth, h = img.naturalHeight;
  const scale = Math.min(VIEW_PX / w, VIEW_PX / h);
  frame.style.width = Math.round(w * scale) + "px";
  for (const b of boxes) {
    const [x1, y1, x2, y2] = b.box;
    const el = document.createElement("div");
    el.className = "gbox";
    el.style.left = (100 * x1) / w + "%";
    el.style.top = (100 * y1) / h + "%";
    el.style.width = (100 * (x2 - x1)) / w + "%";
    el.style.height = (100 * (y2 - y1)) / h + "%";
    const where = b.box.map((v) => Math.round(v)).join(", ");
    el.setAttribute("role", "img");
    el.setAttribute("aria-label", `${b.ref || "box"} at ${where} (pixels x1, y1, x2, y2)`);
    el.title = el.getAttribute("aria-label");
    if (b.ref) {
      const tag = document.createElement("span");
      tag.textContent = b.ref;
      el.appendChild(tag);
    }
    frame.appendChild(el);
  }
}

// One cited (or boxed) image, drawn from its original so that its natural size is the size the boxes refer to.
function figure(link, label, boxes) {
  const fig = document.createElement("figure");
  fig.className = "cited-view";
  const frame = document.createElement("div");
  frame.className = "frame";
  const img = document.createElement("img");
  img.alt = `${label} (image #${link.image_id})`;
  img.dataset.imageId = link.image_id;
  img.addEventListener("load", () => drawBoxes(frame, img, boxes), { once: true });
  imageInto(img, link.image_url);
  frame.appendChild(img);
  const caption = document.createElement("figcaption");
  const refs = boxes.map((b) => b.ref).filter(Boolean);
  caption.textContent = `${label} · #${link.image_id}` + (refs.length ? ` · ${refs.join(", ")}` : "");
  fig.append(frame, caption);
  return fig;
}

function showImages(data, cited) {
  const strip = $("ask-images");
  strip.innerHTML = "";
  for (const image of data.images) {
    const item = document.createElement("div");
    item.className = "thumb" + (cited.has(image.image_id) ? " cited" : "");
    const img = document.createElement("img");
    img.alt = `${image.label} (image #${image.image_id})` + (cited.has(image.image_id) ? ", cited by the answer" : "");
    imageInto(img, image.thumbnail_url);
    const label = document.createElement("span");
    label.textContent = image.label + (cited.has(image.image_id) ? " · cited" : "");
    item.append(img, label);
    strip.appendChild(item);
  }
}

function showAnswer(data) {
  const answer = $("ask-answer");
  answer.className = data.found ? "" : "not-found";
  answer.replaceChildren(...answerNodes(data.answer));
  const cited = new Set(data.citations.map((c) => c.image_id));
  const links = new Map(data.images.map((p) => [p.image_id, p]));
  const figures = $("ask-figures");
  figures.innerHTML = "";
  // Every cited image, then any other image a box lies on, each once.
  const shown = [...cited, ...data.boxes.map((b) => b.image_id).filter((id) => id !== null && !cited.has(id))];
  for (const id of new Set(shown)) {
    const link = links.get(id) || data.citations.find((c) => c.image_id === id);
    if (!link) continue;
    const boxes = data.boxes.filter((b) => b.image_id === id && b.box);
    figures.appendChild(figure(link, link.label, boxes));
  }
  const notes = [];
  if (!data.found) {
    const scores = data.retrieved.map((r) => r.chat_score).filter((s) => s !== null);
    const best = scores.length ? ` (the best P(yes) was ${Math.max(...scores).toFixed(2)})` : "";
    notes.push(`None of the ${data.retrieved.length} retrieved images was relevant enough${best}.`);
  }
  for (const b of data.boxes.filter((b) => b.image_id === null)) {
    notes.push(`A box for “${b.ref || "?"}” (${b.box_1000.join(", ")} of 1000) names no image.`);
  }
  if (data.ignored_citations.length) notes.push(`Cited but not shown to the model: ${data.ignored_citations.join(", ")}.`);
  $("ask-notes").replaceChildren(...notes.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
  showImages(data, cited);
  $("ask-result").hidden = false;
  const secs = (data.took_ms / 1000).toFixed(1);
  askStatus(data.found ? `${data.citations.length} cited of ${data.images.length} images · ${secs} s · ${data.model}`
    : `Not found · ${secs} s · ${data.model}`);
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) { askStatus("Type a question first.", true); $("question").focus(); return; }
  const body = { question, collection: $("collection").value };
  if ($("ask-threshold").value !== "") body.threshold = Number($("ask-threshold").value);
  const seq = ++askSeq;
  const button = $("ask-form").querySelector("button");
  button.disabled = true;
  $("ask-result").hidden = true;
  askStatus("Asking the chat model… (it reads the retrieved images; this can take a while)");
  try {
    const response = await call(ASK_ROUTE, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await response.json();
    if (seq === askSeq) showAnswer(data);
  } catch (e) {
    if (seq === askSeq) askStatus("Cannot answer: " + e.message, true);
  } finally {
    if (seq === askSeq) button.disabled = false;
  }
}

window.addEventListener("DOMContentLoaded", () => { $("ask-form").onsubmit = ask; });
