// The gateway's demo page: pick a model, send one image, draw the answer over it.
// Plain browser JavaScript, no build step, no outside host: every request goes to this gateway
// (relative URLs, so it also works under a path prefix).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
    "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324"];
  const TOKEN_KEY = "sepvit-demo-token";
  let models = [];
  let image = null; // {blob, name}

  const colour = (index) => PALETTE[index % PALETTE.length];
  const selected = () => models.find((m) => m.name === $("model").value);

  function status(text, error = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", error);
  }

  function authHeaders() {
    const token = $("token").value.trim();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      const err = body.error;
      const message = typeof err === "string" ? err : err && err.message;
      return `${response.status}: ${message || JSON.stringify(body)}`;
    } catch {
      return `${response.status} ${response.statusText}`;
    }
  }

  async function loadModels() {
    status("loading models…");
    let response;
    try {
      response = await fetch("models", { headers: authHeaders() });
    } catch (exc) {
      status(`cannot reach the gateway: ${exc}`, true);
      return;
    }
    if (!response.ok) {
      const hint = response.status === 401 || response.status === 403
        ? " (this gateway has auth on: enter a token)" : "";
      status(`models: ${await errorText(response)}${hint}`, true);
      return;
    }
    const body = await response.json();
    models = (Array.isArray(body) ? body : body.models).filter((m) => m.task);
    const select = $("model");
    const previous = select.value;
    select.replaceChildren(...models.map((m) => {
      const opt = new Option(`${m.name} (${m.task}${m.ready ? "" : `, ${m.state}`})`, m.name);
      opt.disabled = !m.ready;
      return opt;
    }));
    const keep = models.find((m) => m.name === previous && m.ready);
    const first = keep || models.find((m) => m.ready);
    if (first) select.value = first.name;
    showParams();
    const waiting = models.filter((m) => !m.ready).map((m) => m.name);
    status(models.length === 0 ? "this gateway serves no models"
      : waiting.length ? `not ready yet: ${waiting.join(", ")} (reload in a moment)` : "");
  }

  function showParams() {
    const m = selected();
    for (const label of document.querySelectorAll("#params label")) {
      label.hidden = !m || label.dataset.task !== m.task;
    }
    $("model-info").textContent = m
      ? `${m.runtime || ""}${m.input_size ? `, input ${m.input_size.join("×")}` : ""}` : "";
  }

  function query(m) {
    const q = new URLSearchParams({ model: m.name });
    if (m.task === "classify" && $("top-k").value) q.set("top_k", $("top-k").value);
    if (m.task === "detect" && $("threshold").value) q.set("score_threshold", $("threshold").value);
    if (m.task === "segment") q.set("format", $("seg-format").value);
    return q;
  }

  async function showImage(blob) {
    const img = $("image");
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(blob);
    try {
      await img.decode();
      return true;
    } catch {
      return false; // a format the browser cannot show (the gateway may still read it)
    }
  }

  function resetCanvas(width, height) {
    const canvas = $("overlay");
    canvas.width = width;
    canvas.height = height;
    canvas.dataset.drawn = "0";
    return canvas.getContext("2d");
  }

  function item(text, score, index, bar) {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour(index);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = text;
    const value = document.createElement("span");
    value.className = "score";
    value.textContent = score;
    li.append(swatch, label, value);
    if (bar !== undefined) {
      const b = document.createElement("div");
      b.className = "bar";
      b.style.width = `${Math.max(0.5, bar * 100)}%`;
      b.style.background = colour(index);
      li.append(b);
    }
    return li;
  }

  function drawClassify(result) {
    return result.top_k.map((c) => item(c.label, c.score.toFixed(3), c.index, c.score));
  }

  function drawDetect(result, ctx) {
    const w = ctx.canvas.width;
    // a Mask R-CNN's instance masks first (putImageData replaces pixels), the boxes over them
    let maskPixels = 0;
    const withMasks = result.detections.filter((d) => d.mask);
    if (withMasks.length) {
      const pixels = ctx.createImageData(w, ctx.canvas.height);
      for (const d of withMasks) maskPixels += paintRle(pixels, d.mask, colour(d.index), 120);
      ctx.putImageData(pixels, 0, 0);
    }
    ctx.canvas.dataset.masked = String(maskPixels);
    const line = Math.max(2, Math.round(w / 200));
    ctx.font = `${Math.max(12, Math.round(w / 28))}px system-ui, sans-serif`;
    ctx.textBaseline = "bottom";
    for (const d of result.detections) {
      const [x1, y1, x2, y2] = d.box;
      ctx.strokeStyle = colour(d.index);
      ctx.lineWidth = line;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    }
    // labels after all boxes, the best-scoring last so that it stays readable on top
    const byScore = [...result.detections].sort((a, b) => a.score - b.score);
    for (const d of byScore) {
      const [x1, y1] = d.box;
      const text = `${d.label} ${d.score.toFixed(2)}`;
      const th = parseInt(ctx.font, 10) + 4;
      const tw = ctx.measureText(text).width + 8;
      const tx = Math.max(0, Math.min(x1 - line / 2, w - tw)); // the label stays inside
      const ty = y1 - th < 0 ? y1 + th : y1;
      ctx.fillStyle = colour(d.index);
      ctx.fillRect(tx, ty - th, tw, th);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, tx + 4, ty - 2);
    }
    ctx.canvas.dataset.drawn = String(result.detections.length);
    return result.detections.map((d) => item(d.label, d.score.toFixed(3), d.index));
  }

  // COCO compressed RLE (pycocotools' string form): run lengths in column-major order,
  // starting with a background run
  function rleCounts(counts) {
    if (Array.isArray(counts)) return counts;
    const out = [];
    let p = 0;
    while (p < counts.length) {
      let x = 0;
      let k = 0;
      let more = 1;
      while (more) {
        const c = counts.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = c & 0x20;
        p += 1;
        k += 1;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (out.length > 2) x += out[out.length - 2];
      out.push(x);
    }
    return out;
  }

  // the pixels of one RLE mask in ``pixels`` (ImageData), in colour ``hex`` at ``alpha``;
  // returns how many were painted
  function paintRle(pixels, rle, hex, alpha) {
    const { width, height } = pixels;
    const h = rle.size[0];
    const rgba = [...hex.match(/\w\w/g).map((v) => parseInt(v, 16)), alpha];
    let pos = 0;
    let painted = 0;
    rleCounts(rle.counts).forEach((run, i) => {
      if (i % 2 === 1) {
        for (let q = pos; q < pos + run; q += 1) {
          const y = q % h;
          const x = Math.floor(q / h);
          if (x < width && y < height) {
            pixels.data.set(rgba, (y * width + x) * 4);
            painted += 1;
          }
        }
      }
      pos += run;
    });
    return painted;
  }

  function drawSegment(result, ctx) {
    const { width, height } = ctx.canvas;
    const pixels = ctx.createImageData(width, height);
    let drawn = 0;
    for (const s of result.segments) drawn += paintRle(pixels, s.rle, colour(s.index), 150);
    ctx.putImageData(pixels, 0, 0);
    ctx.canvas.dataset.drawn = String(drawn);
    return result.segments.map((s) => item(s.label, `${s.area} px`, s.index));
  }

  async function run() {
    const m = selected();
    if (!image || !m) {
      if (image) status("pick a ready model first", true);
      return;
    }
    const shown = await showImage(image.blob);
    const img = $("image");
    const ctx = resetCanvas(img.naturalWidth || 1, img.naturalHeight || 1);
    $("result").hidden = false;
    $("items").replaceChildren();
    $("result").dataset.state = "running";
    status(`sending ${image.name} to ${m.name}…`);
    const form = new FormData();
    form.append("file", image.blob, image.name);
    const t0 = performance.now();
    let response;
    try {
      response = await fetch(`${m.task}?${query(m)}`,
        { method: "POST", body: form, headers: authHeaders() });
    } catch (exc) {
      status(`request failed: ${exc}`, true);
      $("result").dataset.state = "error";
      return;
    }
    const type = response.headers.get("content-type") || "";
    const payload = type.startsWith("image/") ? await response.blob() : await response.text();
    const ms = performance.now() - t0;
    $("latency").textContent = `${response.status} in ${ms.toFixed(1)} ms (round trip) · `
      + `request ${response.headers.get("x-request-id") || "-"}`;
    if (!response.ok) {
      $("raw").textContent = payload;
      let message = payload;
      try {
        const err = JSON.parse(payload).error;
        message = typeof err === "string" ? err : err.message;
      } catch { /* not JSON */ }
      status(`${response.status}: ${message}`, true);
      $("result").dataset.state = "error";
      return;
    }
    let rows = [];
    if (type.startsWith("image/")) { // segment overlay: the server's blend, drawn over the image
      const overlay = await createImageBitmap(payload);
      ctx.drawImage(overlay, 0, 0, ctx.canvas.width, ctx.canvas.height);
      ctx.canvas.dataset.drawn = String(ctx.canvas.width * ctx.canvas.height);
      $("raw").textContent = `${type}, ${payload.size} bytes`;
    } else {
      const body = JSON.parse(payload);
      $("raw").textContent = JSON.stringify(body, null, 2);
      const result = body.results[0];
      if (result.error) {
        status(`${result.error.code}: ${result.error.message}`, true);
        $("result").dataset.state = "error";
        return;
      }
      if (m.task === "classify") rows = drawClassify(result);
      else if (m.task === "detect") rows = drawDetect(result, ctx);
      else rows = drawSegment(result, ctx);
    }
    $("items").replaceChildren(...rows);
    if (rows.length === 0 && !type.startsWith("image/")) {
      $("items").append(Object.assign(document.createElement("li"), { textContent: "nothing found" }));
    }
    status(shown ? "" : "the browser cannot display this image format; the answer is below");
    $("result").dataset.state = "done";
  }

  function take(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      status(`${file.name || "that"} is not an image (${file.type})`, true);
      return;
    }
    image = { blob: file, name: file.name || "pasted.png" };
    run();
  }

  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("token").addEventListener("change", () => {
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    loadModels();
  });
  $("model").addEventListener("change", () => { showParams(); run(); });
  for (const id of ["top-k", "threshold", "seg-format"]) $(id).addEventListener("change", run);
  $("file").addEventListener("change", (e) => {
    take(e.target.files[0]);
    e.target.value = ""; // choosing the same file again still sends it
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      $("file").click();
    }
  });
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    take(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const file = [...e.clipboardData.items].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (file) take(file.getAsFile());
  });
  loadModels();
})();
