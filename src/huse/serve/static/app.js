// huse search page: text, image upload (button, drop or paste) and "more like this".
// All data is put into the page with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form");
const input = $("q");
const fileInput = $("file");
const panel = $("panel");
const status = $("status");
const results = $("results");
const examples = $("examples");
let currentImage = null; // the uploaded File, while searching by image
let lastQuery = null; // repeated when the modality or k changes
let limits = { max_upload_bytes: 8 * 1024 * 1024, max_text_chars: 500 };

function modality() {
  return document.querySelector('input[name="modality"]:checked').value;
}
function k() {
  return parseInt($("k").value, 10);
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function setStatus(text, isError) {
  status.textContent = text;
  status.classList.toggle("error", !!isError);
}

async function loadInfo() {
  try {
    const r = await fetch("/api/info");
    if (!r.ok) return;
    const info = await r.json();
    limits = info.limits;
    input.maxLength = limits.max_text_chars;
    $("catalogue").textContent =
      `${info.items.toLocaleString()} items · ${info.classes} classes · ${info.factory} index`;
    if (info.examples && info.examples.length) {
      examples.append(el("span", "", "Try:"));
      for (const word of info.examples) {
        const b = el("button", "chip", word);
        b.type = "button";
        b.addEventListener("click", () => {
          input.value = word;
          runText();
        });
        examples.append(b);
      }
      examples.hidden = false;
    }
  } catch (_) {
    /* the page still works without the header line */
  }
}

function describe(q) {
  if (q.kind === "text") return `“${q.text}”`;
  if (q.kind === "item") return `items like “${q.label}”`;
  return `image ${q.name}`;
}

async function search(q) {
  lastQuery = q;
  let body;
  const init = { method: "POST" };
  if (q.kind === "image") {
    body = new FormData();
    body.append("image", q.file, q.file.name || "upload");
    body.append("k", String(k()));
    body.append("modality", modality());
  } else {
    const payload = { k: k(), modality: modality() };
    if (q.kind === "text") payload.text = q.text;
    else payload.item = q.item;
    body = JSON.stringify(payload);
    init.headers = { "Content-Type": "application/json" };
  }
  init.body = body;
  document.body.classList.add("loading");
  setStatus("Searching…");
  try {
    const r = await fetch("/api/search", init);
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      /* a non-JSON error page */
    }
    if (!r.ok) {
      const msg = data && data.detail ? data.detail : `${r.status} ${r.statusText}`;
      // Old results under a failed query would read as its answer.
      results.replaceChildren();
      if (q.kind === "image") clearImage();
      setStatus(`Could not search with ${describe(q)}: ${msg}`, true);
      return;
    }
    render(data, q);
  } catch (err) {
    setStatus(`Could not reach the server: ${err}`, true);
  } finally {
    document.body.classList.remove("loading");
  }
}

function render(data, q) {
  results.replaceChildren();
  examples.hidden = true;
  const n = data.results.length;
  const what = { image: "images", text: "texts", both: "images and texts" }[data.query.modality];
  setStatus(`${n} results for ${describe(q)} · matched against ${what} · ${Math.round(data.took_ms)} ms`);
  if (!n) {
    results.append(el("div", "empty", "No results."));
    return;
  }
  for (const r of data.results) results.append(card(r));
}

function card(r) {
  const c = el("article", "card");
  c.dataset.id = r.id;
  const thumb = el("div", "thumb");
  const img = el("img");
  img.src = r.thumbnail;
  img.alt = r.text;
  img.loading = "lazy";
  thumb.append(img);

  const body = el("div", "body");
  const meta = el("div", "meta");
  meta.append(el("span", "rank", `#${r.rank}`), el("span", "score", r.score.toFixed(3)));
  const bar = el("div", "bar");
  const fill = el("span");
  fill.style.width = `${Math.max(0, Math.min(1, r.score)) * 100}%`;
  bar.append(fill);
  meta.append(bar, el("span", "badge", r.modality));

  const path = el("nav", "path");
  path.setAttribute("aria-label", "class path");
  r.class_path.forEach((part, i) => {
    if (i) path.append(el("span", "sep", "›"));
    path.append(el("span", i === r.class_path.length - 1 ? "leaf" : "", part));
  });

  const text = el("p", "text", r.text);
  text.title = r.text;
  const more = el("button", "similar", "More like this");
  more.type = "button";
  more.addEventListener("click", () => {
    clearImage();
    search({ kind: "item", item: r.id, label: r.text.length > 40 ? `${r.text.slice(0, 40)}…` : r.text });
    window.scrollTo({ top: 0, behavior: "smooth" });
  });
  body.append(meta, path, text, more);
  c.append(thumb, body);
  return c;
}

function runText() {
  const text = input.value.trim();
  if (!text) {
    setStatus("Type a query or upload an image.", true);
    return;
  }
  clearImage();
  search({ kind: "text", text });
}

function useImage(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    setStatus(`${file.name || "That file"} is not an image.`, true);
    return;
  }
  if (file.size > limits.max_upload_bytes) {
    const mb = (limits.max_upload_bytes / 1048576).toFixed(0);
    setStatus(`${file.name} is too large (limit ${mb} MB).`, true);
    return;
  }
  currentImage = file;
  const preview = $("query-preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  $("query-name").textContent = file.name || "pasted image";
  $("query-image").hidden = false;
  input.value = "";
  search({ kind: "image", file, name: file.name || "pasted image" });
}

function clearImage() {
  currentImage = null;
  $("query-image").hidden = true;
  fileInput.value = "";
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  runText();
});
fileInput.addEventListener("change", () => useImage(fileInput.files[0]));
$("clear-image").addEventListener("click", clearImage);
for (const r of document.querySelectorAll('input[name="modality"]')) {
  r.addEventListener("change", () => lastQuery && search(lastQuery));
}
$("k").addEventListener("change", () => lastQuery && search(lastQuery));

// Drop an image anywhere on the page, or paste one.
let dragDepth = 0;
document.addEventListener("dragenter", (e) => {
  e.preventDefault();
  dragDepth++;
  panel.classList.add("dragging");
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) panel.classList.remove("dragging");
});
document.addEventListener("dragover", (e) => e.preventDefault());
document.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  panel.classList.remove("dragging");
  if (e.dataTransfer.files.length) useImage(e.dataTransfer.files[0]);
});
document.addEventListener("paste", (e) => {
  const item = [...e.clipboardData.items].find((i) => i.type.startsWith("image/"));
  if (item) useImage(item.getAsFile());
});

loadInfo();
