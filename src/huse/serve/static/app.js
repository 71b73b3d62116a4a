// huse search page: text, image upload (button, drop or paste) and "more like this",
// a class filter browsed as the tree, and "more results" pages.
// The search lives in the URL (?q=...&m=...&k=...&under=...&page=...), so a search can be
// shared, bookmarked and gone back to; an uploaded image cannot, so its URL keeps the rest.
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
const moreBtn = $("more");
let currentImage = null; // the uploaded File, while searching by image
let lastQuery = null; // repeated when the modality, k or the filter changes
let limits = { max_upload_bytes: 8 * 1024 * 1024, max_text_chars: 500, max_k: 100 };
let filter = null; // the class branch searched in, or null for all
let sep = "<";
let loaded = 0; // results shown for lastQuery
let pages = 0; // pages of results shown
const MAX_RESULTS = 1000; // offset + k the server accepts

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
  if (q.kind === "item") return `items like “${q.label || q.item}”`;
  return `image ${q.name}`;
}

// -- the URL ------------------------------------------------------------------------------
function urlOf(q, page) {
  const p = new URLSearchParams();
  if (q && q.kind === "text") p.set("q", q.text);
  if (q && q.kind === "item") p.set("item", q.item);
  if (modality() !== "image") p.set("m", modality());
  if (k() !== 12) p.set("k", String(k()));
  if (filter) p.set("under", filter);
  if (page > 1) p.set("page", String(page));
  const qs = p.toString();
  return qs ? `?${qs}` : location.pathname;
}

function remember(push) {
  const url = urlOf(lastQuery, pages);
  if (url === location.search || (url === location.pathname && !location.search)) return;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

function setModality(m) {
  const r = document.querySelector(`input[name="modality"][value="${CSS.escape(m)}"]`);
  if (r) r.checked = true;
}

function setK(value) {
  const sel = $("k");
  if (![...sel.options].some((o) => o.value === value)) sel.append(el("option", "", value));
  sel.value = value;
}

// Put the page in the state its URL describes (on load, and on back/forward).
async function restore() {
  const p = new URLSearchParams(location.search);
  setModality(p.get("m") || "image");
  const kk = parseInt(p.get("k") || "12", 10);
  setK(String(Number.isFinite(kk) && kk > 0 ? Math.min(kk, limits.max_k || 100) : 12));
  setFilter(p.get("under"), false);
  const page = Math.max(1, parseInt(p.get("page") || "1", 10) || 1);
  let q = null;
  if (p.get("q")) q = { kind: "text", text: p.get("q") };
  else if (p.get("item")) q = { kind: "item", item: p.get("item") };
  input.value = q && q.kind === "text" ? q.text : "";
  clearImage();
  if (!q) {
    lastQuery = null;
    results.replaceChildren();
    moreBtn.hidden = true;
    setStatus("");
    return;
  }
  await search(q, { push: false, pages: page });
}

// -- searching ------------------------------------------------------------------------------
async function fetchPage(q, offset) {
  if (q.kind === "image") {
    const body = new FormData();
    body.append("image", q.file, q.file.name || "upload");
    body.append("k", String(k()));
    body.append("modality", modality());
    if (filter) body.append("under", filter);
    if (offset) body.append("offset", String(offset));
    return fetch("/api/search", { method: "POST", body });
  }
  const p = new URLSearchParams({ k: String(k()), modality: modality() });
  if (q.kind === "text") p.set("text", q.text);
  else p.set("item", q.item);
  if (filter) p.set("under", filter);
  if (offset) p.set("offset", String(offset));
  return fetch(`/api/search?${p}`);
}

// A new search (or the same one after a change of modality, k or filter): its first
// page, or the first ``opts.pages`` pages when a URL asks for more.
async function search(q, opts = {}) {
  const push = opts.push !== false;
  lastQuery = q;
  loaded = 0;
  pages = 0;
  results.replaceChildren();
  const want = opts.pages || 1;
  for (let i = 0; i < want; i++) {
    if (!(await loadPage(q)) || moreBtn.hidden) break;
  }
  if (lastQuery === q) remember(push);
}

async function loadPage(q) {
  document.body.classList.add("loading");
  setStatus(loaded ? "Loading more…" : "Searching…");
  moreBtn.disabled = true;
  try {
    const r = await fetchPage(q, loaded);
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      /* a non-JSON error page */
    }
    if (lastQuery !== q) return false; // a newer search started meanwhile
    if (!r.ok) {
      const msg = data && data.detail ? data.detail : `${r.status} ${r.statusText}`;
      // Old results under a failed query would read as its answer.
      results.replaceChildren();
      moreBtn.hidden = true;
      if (q.kind === "image") clearImage();
      setStatus(`Could not search with ${describe(q)}: ${msg}`, true);
      return false;
    }
    render(data, q);
    return true;
  } catch (err) {
    setStatus(`Could not reach the server: ${err}`, true);
    return false;
  } finally {
    moreBtn.disabled = false;
    document.body.classList.remove("loading");
  }
}

function render(data, q) {
  examples.hidden = true;
  const got = data.results.length;
  loaded += got;
  pages += 1;
  const what = { image: "images", text: "texts", both: "images and texts" }[data.query.modality];
  const where = filter ? ` in ${filter.split(sep).join(" › ")}` : "";
  setStatus(
    `${loaded} results for ${describe(q)}${where} · matched against ${what} · ${Math.round(data.took_ms)} ms`,
  );
  if (!loaded) {
    results.append(el("div", "empty", "No results."));
  }
  for (const r of data.results) results.append(card(r));
  // A full page may have a next one; a short one was the last.
  moreBtn.hidden = got < k() || loaded + k() > MAX_RESULTS;
}

async function more() {
  if (!lastQuery) return;
  if (await loadPage(lastQuery)) remember(false);
}

// -- the class filter -------------------------------------------------------------------------
function setFilter(path, rerun) {
  filter = path || null;
  $("filter-chip").textContent = filter ? filter.split(sep).join(" › ") : "all classes";
  $("filter-clear").hidden = !filter;
  for (const b of document.querySelectorAll("#tree button.node")) {
    b.classList.toggle("current", b.dataset.path === filter);
  }
  if (rerun && lastQuery) search(lastQuery);
  else if (rerun) remember(true);
}

async function loadTree() {
  try {
    const r = await fetch("/api/classes");
    if (!r.ok) return;
    const data = await r.json();
    sep = data.sep;
    // Nested nodes from the class paths; a node counts the items of its whole branch.
    const root = { children: new Map(), count: 0 };
    for (const [path, n] of Object.entries(data.classes)) {
      let node = root;
      const parts = path.split(sep);
      parts.forEach((part, i) => {
        if (!node.children.has(part)) {
          node.children.set(part, { path: parts.slice(0, i + 1).join(sep), children: new Map(), count: 0 });
        }
        node = node.children.get(part);
        node.count += n;
      });
    }
    const build = (node) => {
      const ul = el("ul");
      for (const [name, child] of [...node.children.entries()].sort()) {
        const li = el("li");
        li.setAttribute("role", "treeitem");
        const b = el("button", "node", name);
        b.type = "button";
        b.dataset.path = child.path;
        b.append(el("span", "count", String(child.count)));
        b.addEventListener("click", () => {
          $("tree-box").open = false;
          setFilter(child.path, true);
        });
        li.append(b);
        if (child.children.size) li.append(build(child));
        ul.append(li);
      }
      return ul;
    };
    $("tree").replaceChildren(...build(root).children);
    setFilter(filter, false);
  } catch (_) {
    /* searching works without the tree */
  }
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
    input.value = "";
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
  r.addEventListener("change", () => (lastQuery ? search(lastQuery) : remember(true)));
}
$("k").addEventListener("change", () => (lastQuery ? search(lastQuery) : remember(true)));
$("filter-clear").addEventListener("click", () => setFilter(null, true));
moreBtn.addEventListener("click", more);
window.addEventListener("popstate", restore);

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

// The limits first (k's bound), then the URL's search; the tree fills in beside it.
loadInfo().then(restore);
loadTree();
