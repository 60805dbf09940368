// A small offline API reference: renders /openapi.json (paths, parameters, bodies, examples, responses).
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function resolve(spec, schema) {
  if (schema && schema.$ref) return spec.components.schemas[schema.$ref.split("/").pop()] || schema;
  return schema || {};
}

function example(spec, media) {
  const schema = resolve(spec, media.schema);
  if (media.example) return media.example;
  if (schema.examples && schema.examples.length) return schema.examples[0];
  if (schema.properties) {
    const out = {};
    for (const [name, prop] of Object.entries(schema.properties)) out[name] = resolve(spec, prop).type || "…";
    return out;
  }
  return null;
}

function renderOperation(spec, path, method, op) {
  const box = el("div", undefined, "op");
  const title = el("h3");
  title.append(el("span", method.toUpperCase(), "method"), el("code", path));
  box.append(title);
  if (op.summary) box.append(el("p", op.summary));
  if (op.description && op.description !== op.summary) box.append(el("p", op.description));
  if (op.parameters && op.parameters.length) {
    const list = el("ul");
    for (const p of op.parameters) {
      list.append(el("li", `${p.name} (${p.in}${p.required ? ", required" : ""}): ${p.description || resolve(spec, p.schema).type || ""}`));
    }
    box.append(el("h4", "Parameters"), list);
  }
  const content = (op.requestBody && op.requestBody.content) || {};
  for (const [type, media] of Object.entries(content)) {
    box.append(el("h4", "Body: " + type));
    const sample = example(spec, media);
    if (sample) box.append(el("pre", JSON.stringify(sample, null, 2)));
  }
  const codes = el("ul");
  for (const [code, response] of Object.entries(op.responses || {})) codes.append(el("li", `${code}: ${response.description}`));
  box.append(el("h4", "Responses"), codes);
  return box;
}

async function main() {
  const root = document.getElementById("docs");
  try {
    const spec = await (await fetch("/openapi.json")).json();
    root.innerHTML = "";
    root.append(el("h2", `${spec.info.title} ${spec.info.version}`), el("p", spec.info.description || ""));
    root.append(el("p", "Errors always have the body {\"error\": {\"code\", \"message\", \"detail\"}}. " +
      "When the server has API keys, send Authorization: Bearer <key> or X-API-Key."));
    for (const [path, ops] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(ops)) root.append(renderOperation(spec, path, method, op));
    }
  } catch (e) {
    root.textContent = "Cannot load /openapi.json: " + e.message;
  }
}

main();
