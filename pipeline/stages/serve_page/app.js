// The cut-out page: photos go to POST api/remove two at a time; each card shows the photo and its
// cut-out on a checkerboard (or the chosen colour), the progress, the review note, and a download.
// No library and no build step: the page must work offline, served by `make serve` alone.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { limits: null, items: [], running: 0, concurrency: 2, key: sessionStorage.getItem("apiKey") || "" };

// -- the ZIP of all cut-outs --------------------------------------------------------------------------
// Written here by hand (store method, CRC-32): the cut-outs are already in the page, so zipping them
// here sends nothing back to the server (no second upload, no archive in its memory or on its disk),
// and PNG/JPEG/WebP are compressed already, so storing loses nothing. No ZIP library is available
// offline; the format's store case is a few dozen lines.
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function zipStore(files) {
  // files: [{name, bytes: Uint8Array}] -> a Blob holding a ZIP archive (no compression, UTF-8 names).
  const enc = new TextEncoder();
  const now = new Date();
  const time = (now.getHours() << 11) | (now.getMinutes() << 5) | (now.getSeconds() >> 1);
  const date = ((now.getFullYear() - 1980) << 9) | ((now.getMonth() + 1) << 5) | now.getDate();
  const parts = [], central = [];
  let offset = 0;
  for (const f of files) {
    const name = enc.encode(f.name), crc = crc32(f.bytes), size = f.bytes.length;
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);        // version needed: 2.0
    local.setUint16(6, 0x0800, true);    // flags: names in UTF-8
    local.setUint16(8, 0, true);         // method: stored
    local.setUint16(10, time, true);
    local.setUint16(12, date, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, size, true);
    local.setUint32(22, size, true);
    local.setUint16(26, name.length, true);
    parts.push(local, name, f.bytes);
    const entry = new DataView(new ArrayBuffer(46));
    entry.setUint32(0, 0x02014b50, true);
    entry.setUint16(4, 20, true);
    entry.setUint16(6, 20, true);
    entry.setUint16(8, 0x0800, true);
    entry.setUint16(12, time, true);
    entry.setUint16(14, date, true);
    entry.setUint32(16, crc, true);
    entry.setUint32(20, size, true);
    entry.setUint32(24, size, true);
    entry.setUint16(28, name.length, true);
    entry.setUint32(42, offset, true);
    central.push(entry, name);
    offset += 30 + name.length + size;
  }
  if (offset > 0xffffffff || files.length > 0xffff) throw new Error("too much for one ZIP: download fewer at a time");
  const centralSize = central.reduce((n, p) => n + p.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, files.length, true);
  end.setUint16(10, files.length, true);
  end.setUint32(12, centralSize, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}

// -- the background ------------------------------------------------------------------------------------
function background() {
  return $("input[name=bg]:checked").value === "colour" ? $("#colour").value : null;
}

function showBackground() {
  const colour = background();
  for (const fig of document.querySelectorAll("figure.cut")) {
    fig.classList.toggle("checker", !colour);
    fig.style.backgroundColor = colour || "";
  }
}

async function outputBlob(item) {
  // The cut-out as downloaded: the server's PNG with alpha, or that PNG drawn on the chosen colour.
  const colour = background();
  if (!colour) return item.blob;
  const bitmap = await createImageBitmap(item.blob);
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = colour;
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

function outputName(item) {
  const stem = item.file.name.replace(/\.[^.]*$/, "") || "photo";
  return `${stem}_${background() ? "on_" + background().slice(1) : "cutout"}.png`;
}

function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60000);
}

// -- one photo -----------------------------------------------------------------------------------------
function setState(item, what, text) {
  item.el.dataset.state = what;
  $(".state", item.el).textContent = text;
}

function addPhoto(file) {
  const el = $("#card").content.firstElementChild.cloneNode(true);
  const item = { file, el, start: performance.now(), blob: null, attempts: 0 };
  $(".name", el).textContent = file.name;
  $(".photo", el).src = URL.createObjectURL(file);
  $(".download", el).addEventListener("click", async (ev) => {
    ev.preventDefault();
    save(await outputBlob(item), outputName(item));
  });
  $("#results").appendChild(el);
  showBackground();
  const max = state.limits ? state.limits.max_upload_mb * 1048576 : Infinity;
  if (file.size > max) {
    setState(item, "error", `over the ${state.limits.max_upload_mb} MB limit: not sent`);
    return;
  }
  setState(item, "waiting", "waiting");
  state.items.push(item);
  pump();
}

function pump() {
  while (state.running < state.concurrency) {
    const item = state.items.find((i) => i.el.dataset.state === "waiting");
    if (!item) break;
    state.running++;
    setState(item, "sending", "sending");
    send(item).finally(() => {
      state.running--;
      pump();
    });
  }
  const done = document.querySelectorAll(".result[data-state=done]").length;
  $("#zip").disabled = done === 0;
}

function send(item) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    const bar = $("progress", item.el);
    xhr.open("POST", "api/remove?format=png");
    xhr.responseType = "blob";
    if (state.key) xhr.setRequestHeader("X-API-Key", state.key);
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) bar.value = ev.loaded / ev.total;
      setState(item, "sending", `uploading ${Math.round((100 * ev.loaded) / (ev.total || 1))} %`);
    };
    xhr.upload.onload = () => {
      bar.removeAttribute("value"); // indeterminate while the server works
      setState(item, "working", "cutting out");
    };
    xhr.onerror = () => {
      setState(item, "error", "the server did not answer; is make serve still running?");
      resolve();
    };
    xhr.onload = async () => {
      if (xhr.status === 200) {
        await done(item, xhr);
      } else if (xhr.status === 503 || xhr.status === 429) {
        const wait = Math.min(60, parseInt(xhr.getResponseHeader("Retry-After") || "2", 10) || 2);
        setState(item, "busy", `the server is busy: waiting ${wait} s to retry`);
        bar.value = 0;
        setTimeout(() => {
          setState(item, "waiting", "waiting");
          pump();
        }, wait * 1000);
      } else if (xhr.status === 401) {
        $("#keybox").hidden = false;
        setState(item, "auth", "this server needs its API key: enter it above");
        $("#key").focus();
      } else {
        let message = `error ${xhr.status}`;
        try {
          message = JSON.parse(await xhr.response.text()).error || message;
        } catch (e) { /* not JSON: keep the status */ }
        setState(item, "error", message);
      }
      resolve();
    };
    const form = new FormData();
    form.append("file", item.file, item.file.name);
    xhr.send(form);
  });
}

function done(item, xhr) {
  item.blob = xhr.response;
  const img = $(".cutout", item.el);
  return new Promise((resolve) => {
    img.onload = () => {
      const seconds = (performance.now() - item.start) / 1000;
      item.el.dataset.ms = Math.round(seconds * 1000);
      setState(item, "done", `cut out in ${seconds.toFixed(1)} s`);
      const score = parseFloat(xhr.getResponseHeader("X-Review-Score") || "0");
      const why = xhr.getResponseHeader("X-Review-Why") || "";
      const review = $(".review", item.el);
      const look = xhr.getResponseHeader("X-Review-Look") === "1";
      review.classList.toggle("look", look);
      const pixels = Math.round(score).toLocaleString("en");
      review.textContent = look
        ? `Worth a look: about ${pixels} pixels may be wrong${why && why !== "-" ? ` (${why})` : ""}.`
        : `Review: nothing unusual (about ${pixels} pixels may be wrong).`;
      const link = $(".download", item.el);
      link.hidden = false;
      link.textContent = "Download PNG";
      resolve();
    };
    img.onerror = () => {
      setState(item, "error", "the answer is not an image");
      resolve();
    };
    img.src = URL.createObjectURL(item.blob);
  });
}

// -- wiring ----------------------------------------------------------------------------------------------
function choose(files) {
  for (const f of files) addPhoto(f);
}

async function downloadAll() {
  const items = state.items.filter((i) => i.blob);
  const files = [], seen = new Map();
  $("#status").textContent = `zipping ${items.length} cut-out(s)`;
  for (const item of items) {
    let name = outputName(item);
    const n = (seen.get(name) || 0) + 1;
    seen.set(name, n);
    if (n > 1) name = name.replace(/\.png$/, `_${n}.png`);
    files.push({ name, bytes: new Uint8Array(await (await outputBlob(item)).arrayBuffer()) });
  }
  try {
    save(zipStore(files), "cutouts.zip");
    $("#status").textContent = `cutouts.zip: ${files.length} cut-out(s)`;
  } catch (e) {
    $("#status").textContent = e.message;
  }
}

async function start() {
  const drop = $("#drop");
  $("#file").addEventListener("change", (ev) => {
    choose(ev.target.files);
    ev.target.value = ""; // the same photo may be chosen again
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (ev) => { ev.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (ev) => choose(ev.dataTransfer.files));
  document.addEventListener("dragover", (ev) => ev.preventDefault()); // a photo dropped beside the zone
  document.addEventListener("drop", (ev) => { ev.preventDefault(); if (ev.target === document.body) choose(ev.dataTransfer.files); });
  for (const el of document.querySelectorAll("input[name=bg], #colour")) el.addEventListener("input", showBackground);
  $("#colour").addEventListener("click", () => { $("input[name=bg][value=colour]").checked = true; showBackground(); });
  $("#zip").addEventListener("click", downloadAll);
  $("#key").value = state.key;
  $("#key").addEventListener("change", () => {
    state.key = $("#key").value.trim();
    sessionStorage.setItem("apiKey", state.key);
    for (const item of state.items) if (item.el.dataset.state === "auth") setState(item, "waiting", "waiting");
    pump();
  });
  try {
    const health = await (await fetch("api/health")).json();
    state.limits = health;
    $("#model").textContent = `model: ${health.model}`;
    $("#limits").textContent = `JPEG, PNG, WebP, BMP or TIFF, up to ${health.max_upload_mb} MB and ${health.max_megapixels} megapixels. Nothing is kept on the server.`;
    if (health.api_key_required) $("#keybox").hidden = false;
  } catch (e) {
    $("#model").textContent = "the server does not answer";
  }
  document.body.dataset.ready = "1";
}

start();
