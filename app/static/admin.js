// image-origin upload page. Plain JS, no build step; loaded from this origin only (the page's
// Content-Security-Policy forbids inline script). Everything the server returns is written with
// textContent or setAttribute, never as HTML.
"use strict";

(() => {
  const KEY_STORE = "image-origin.api-key";
  const PAGE_SIZE = 24;
  const SIZES = "(max-width: 640px) 100vw, 640px";
  const $ = (selector, root = document) => root.querySelector(selector);

  let apiKey = sessionStorage.getItem(KEY_STORE) || "";
  let nextCursor = null;
  let reloadTimer = null;
  let loadSeq = 0; // only the latest listing request may write the list

  // --- small helpers ---------------------------------------------------------------------
  function setStatus(text, isError = false) {
    const el = $("#status");
    el.textContent = text;
    el.classList.toggle("error", isError);
  }

  function errorText(status, data) {
    if (data && data.error && data.error.message) {
      return `${data.error.message} (${data.error.code}, HTTP ${status})`;
    }
    return `HTTP ${status}`;
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${apiKey}` };
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    if (response.status !== 204) {
      try {
        data = await response.json();
      } catch (_) {
        data = null;
      }
    }
    return { status: response.status, data };
  }

  function requireKey() {
    if (apiKey) return true;
    setStatus("Paste an API key first.", true);
    $("#api-key").focus();
    return false;
  }

  // "<url> 160w, <url> 320w" -> [{url, width}]
  function parseSrcset(srcset) {
    return (srcset || "")
      .split(",")
      .map((part) => part.trim().split(/\s+/))
      .filter((bits) => bits.length === 2)
      .map(([url, w]) => ({ url, width: parseInt(w, 10) }));
  }

  function escapeAttr(value) {
    return String(value)
      .replace(/&/g, "&amp;")
      .replace(/"/g, "&quot;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;");
  }

  function fallbackEntry(doc) {
    const entries = parseSrcset(doc.srcset.jpeg);
    const fitting = entries.filter((e) => e.width <= 640);
    return (fitting.length ? fitting[fitting.length - 1] : entries[0]) || { url: doc.urls.jpeg };
  }

  function snippetFor(doc) {
    const img = fallbackEntry(doc);
    const alt = escapeAttr(doc.original_filename || "");
    return [
      "<picture>",
      `  <source type="image/avif" srcset="${escapeAttr(doc.srcset.avif)}" sizes="${SIZES}">`,
      `  <source type="image/webp" srcset="${escapeAttr(doc.srcset.webp)}" sizes="${SIZES}">`,
      `  <img src="${escapeAttr(img.url)}" srcset="${escapeAttr(doc.srcset.jpeg)}"`,
      `       sizes="${SIZES}" width="${doc.width}" height="${doc.height}"`,
      `       alt="${alt}" loading="lazy" decoding="async">`,
      "</picture>",
    ].join("\n");
  }

  // --- rendering ---------------------------------------------------------------------------
  function renderPreview(container, doc) {
    container.replaceChildren();
    const img = document.createElement("img");
    img.className = "preview-img";
    img.alt = doc.original_filename || doc.hash;
    img.decoding = "async";
    if (doc.private) {
      // Private content is served only through signed URLs: ask for a short-lived one.
      const first = parseSrcset(doc.srcset.webp)[0];
      const body = { format: "webp", quality: "high", expires_in: 600 };
      if (first) body.width = first.width;
      api("POST", `/v1/images/${encodeURIComponent(doc.id)}/signed-url`, body).then(
        ({ status, data }) => {
          if (status === 200) img.src = data.url;
          else img.alt = `no preview: ${errorText(status, data)}`;
        },
      );
      container.append(img);
      return;
    }
    const picture = document.createElement("picture");
    for (const format of ["avif", "webp"]) {
      const source = document.createElement("source");
      source.type = `image/${format}`;
      source.setAttribute("srcset", doc.srcset[format]);
      source.setAttribute("sizes", "320px");
      picture.append(source);
    }
    img.setAttribute("srcset", doc.srcset.jpeg);
    img.setAttribute("sizes", "320px");
    img.src = fallbackEntry(doc).url;
    picture.append(img);
    container.append(picture);
  }

  function fillCard(card, doc) {
    card.dataset.id = doc.id;
    card.dataset.hash = doc.hash;
    $(".hash", card).textContent = doc.hash;
    $(".ref-id", card).textContent = doc.id;
    $(".dims", card).textContent =
      `${doc.width}×${doc.height} · ${doc.size} bytes · ${doc.mime_type}` +
      (doc.private ? " · private" : "");
    $(".dedup", card).textContent =
      doc.deduplicated === undefined ? "—" : doc.deduplicated ? "yes" : "no";
    $(".refcount", card).textContent = String(doc.ref_count);
    const urls = $(".urls", card);
    urls.replaceChildren();
    for (const [name, url] of Object.entries(doc.urls)) {
      const a = document.createElement("a");
      a.href = url;
      a.textContent = name;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      urls.append(a);
    }
    $(".snippet", card).value = snippetFor(doc);
    const deleted = Boolean(doc.deleted_at);
    card.classList.toggle("deleted", deleted);
    $(".delete", card).hidden = deleted;
    $(".restore", card).hidden = !deleted;
    $(".state", card).textContent = deleted ? "deleted" : "";
  }

  function renderCard(doc) {
    const card = $("#card-template").content.firstElementChild.cloneNode(true);
    fillCard(card, doc);
    renderPreview($(".preview", card), doc);
    $(".copy", card).addEventListener("click", () => copySnippet(card));
    $(".delete", card).addEventListener("click", () => removeImage(card));
    $(".restore", card).addEventListener("click", () => restoreImage(card));
    return card;
  }

  async function copySnippet(card) {
    const area = $(".snippet", card);
    try {
      await navigator.clipboard.writeText(area.value);
    } catch (_) {
      area.select();
      document.execCommand("copy");
    }
    $(".state", card).textContent = "snippet copied";
  }

  // --- actions -------------------------------------------------------------------------------
  async function removeImage(card) {
    const { status, data } = await api("DELETE", `/v1/images/${encodeURIComponent(card.dataset.id)}`);
    if (status !== 204) {
      setStatus(`Delete failed: ${errorText(status, data)}`, true);
      return;
    }
    card.dataset.changedAt = String(performance.now());
    card.classList.add("deleted");
    $(".delete", card).hidden = true;
    $(".restore", card).hidden = false;
    $(".state", card).textContent = "deleted";
    setStatus(`Deleted ${card.dataset.id}; restore it until garbage collection runs.`);
  }

  async function restoreImage(card) {
    const path = `/v1/images/${encodeURIComponent(card.dataset.id)}/restore`;
    const { status, data } = await api("POST", path);
    if (status !== 200) {
      setStatus(`Restore failed: ${errorText(status, data)}`, true);
      return;
    }
    card.dataset.changedAt = String(performance.now());
    fillCard(card, data);
    $(".state", card).textContent = "restored";
    setStatus(`Restored ${card.dataset.id}.`);
  }

  async function loadLibrary(reset) {
    if (!requireKey()) return;
    let path = `/v1/images?limit=${PAGE_SIZE}`;
    if (!reset && nextCursor) path += `&cursor=${encodeURIComponent(nextCursor)}`;
    const seq = ++loadSeq;
    const asked = performance.now();
    const { status, data } = await api("GET", path);
    if (seq !== loadSeq) return;
    if (status !== 200) {
      setStatus(`Listing failed: ${errorText(status, data)}`, true);
      return;
    }
    const list = $("#library");
    if (reset) refreshList(list, data.items, asked);
    else for (const doc of data.items) list.append(renderCard(doc));
    nextCursor = data.next_cursor;
    $("#more").hidden = !nextCursor;
    if (reset) setStatus(`${data.items.length}${nextCursor ? "+" : ""} image(s).`);
  }

  // A reload updates the cards already shown instead of replacing them: a card keeps its
  // element (and its loaded preview), and one deleted here stays, with its Restore button,
  // although the listing (live references only) no longer has it. Otherwise a reload landing
  // just after a delete would take the only way back away from the user. A card deleted or
  // restored after the listing was asked for keeps what the action showed: the listing may
  // predate it.
  function refreshList(list, items, asked) {
    const shown = new Map(Array.from(list.children, (card) => [card.dataset.id, card]));
    const listed = new Set(items.map((doc) => doc.id));
    const cards = items.map((doc) => {
      const card = shown.get(doc.id);
      if (!card) return renderCard(doc);
      if (!changedSince(card, asked)) fillCard(card, doc);
      return card;
    });
    Array.from(list.children).forEach((card, index) => {
      const kept = card.classList.contains("deleted") || changedSince(card, asked);
      if (kept && !listed.has(card.dataset.id)) {
        cards.splice(Math.min(index, cards.length), 0, card);
      }
    });
    const unchanged =
      cards.length === list.children.length && cards.every((card, i) => list.children[i] === card);
    if (!unchanged) list.replaceChildren(...cards);
  }

  function changedSince(card, time) {
    return Number(card.dataset.changedAt || 0) > time;
  }

  function scheduleReload() {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => loadLibrary(true), 200);
  }

  function upload(file) {
    const row = $("#upload-template").content.firstElementChild.cloneNode(true);
    const progress = $("progress", row);
    const percent = $(".percent", row);
    const message = $(".message", row);
    $(".name", row).textContent = file.name;
    $("#uploads").prepend(row);

    const form = new FormData();
    form.append("file", file, file.name);
    form.append("private", $("#private").checked ? "true" : "false");
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/images");
    xhr.setRequestHeader("Authorization", `Bearer ${apiKey}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      const pct = Math.round((event.loaded / event.total) * 100);
      progress.value = pct;
      percent.textContent = `${pct}%`;
    });
    xhr.addEventListener("load", () => {
      const data = xhr.response;
      if (xhr.status === 201 && data) {
        progress.value = 100;
        percent.textContent = "100%";
        message.textContent = data.deduplicated ? "already stored (deduplicated)" : "stored";
        row.classList.add("done");
        $(".result", row).append(renderCard(data));
        scheduleReload();
      } else {
        message.textContent = errorText(xhr.status, data);
        message.classList.add("error");
        row.classList.add("failed");
      }
    });
    xhr.addEventListener("error", () => {
      message.textContent = "network error";
      message.classList.add("error");
      row.classList.add("failed");
    });
    xhr.send(form);
  }

  function uploadAll(files) {
    if (!requireKey()) return;
    for (const file of files) upload(file);
  }

  // --- wiring --------------------------------------------------------------------------------
  function init() {
    const keyInput = $("#api-key");
    keyInput.value = apiKey;
    $("#key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      apiKey = keyInput.value.trim();
      sessionStorage.setItem(KEY_STORE, apiKey);
      loadLibrary(true);
    });
    $("#key-forget").addEventListener("click", () => {
      apiKey = "";
      keyInput.value = "";
      sessionStorage.removeItem(KEY_STORE);
      $("#library").replaceChildren();
      setStatus("Key forgotten.");
    });
    $("#file-input").addEventListener("change", (event) => {
      uploadAll(Array.from(event.target.files));
      event.target.value = "";
    });
    const drop = $("#drop");
    for (const name of ["dragenter", "dragover"]) {
      drop.addEventListener(name, (event) => {
        event.preventDefault();
        drop.classList.add("over");
      });
    }
    for (const name of ["dragleave", "drop"]) {
      drop.addEventListener(name, () => drop.classList.remove("over"));
    }
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      uploadAll(Array.from(event.dataTransfer.files));
    });
    $("#refresh").addEventListener("click", () => loadLibrary(true));
    $("#more").addEventListener("click", () => loadLibrary(false));
    if (apiKey) loadLibrary(true);
  }

  document.addEventListener("DOMContentLoaded", init);
})();
