// The page of one task: the slide in a zoomable tile viewer with the mask (filled or outlined)
// over it, mark ids on hover, missing and extra marks highlighted, the QC summary, downloads,
// and the correction tools that feed a fine-tune.

import { apiFetch, apiJson, download } from "./api.js";
import { CorrectionEditor } from "./correction.js";
import { setUpFinetune } from "./finetune.js";
import { MarkLayer, describe } from "./marklayer.js";
import { statusCell } from "./tasks.js";
import { TileViewer } from "./tileviewer.js";
import { el, say, shortId, slideName, typingInField } from "./ui.js";

const LAYER_COLOURS = { mask: [0, 220, 255], outline: [255, 230, 0] };
const TERMINAL = ["FINISHED", "FAILED"];
const TOOL_KEYS = { v: "pan", b: "box", d: "brush", p: "polygon", r: "remove", e: "erase" };

export async function showViewer(root, taskId) {
  root.append(document.getElementById("viewer-template").content.cloneNode(true));
  const page = { root, taskId, closed: false, cleanups: [] };
  const find = (selector) => root.querySelector(selector);
  page.find = find;
  try {
    page.task = await apiJson(`/tasks/${taskId}`);
    page.pyramid = await apiJson(`/tasks/${taskId}/pyramid`);
  } catch (error) {
    find("#task-title").textContent = "Task not available";
    find("#task-state").replaceChildren(el("span", { class: "error" }, error.message));
    return () => {};
  }
  page.name = slideName(taskId) || `Task ${shortId(taskId)}`;
  find("#task-title").textContent = page.name;
  page.viewer = createViewer(page);
  page.editor = createEditor(page);
  setUpDisplay(page);
  setUpTools(page);
  setUpKeys(page);
  setUpFinetune(page);
  followTask(page);
  return () => {
    page.closed = true;
    for (const cleanup of page.cleanups) cleanup();
    page.viewer.destroy();
  };
}

function createViewer(page) {
  const { tile_size: tileSize, levels, width, height } = page.pyramid;
  const canvas = page.find("#view-canvas");
  const viewer = new TileViewer(canvas, {
    width,
    height,
    tileSize,
    levels,
    fetchTile: (layer, level, col, row, signal) => loadTile(page.taskId, layer, level, col, row, signal),
  });
  viewer.onError = (error) => say(`Tiles could not be loaded: ${error.message}`, "error");
  const clip = (ctx) => clipOutBoxes(ctx, page);
  viewer.addLayer("image");
  viewer.addLayer("mask", { visible: false, opacity: 0.5, clip });
  viewer.addLayer("outline", { visible: false, opacity: 0.5, clip });
  viewer.overlays.push((ctx) => page.marks?.draw(ctx, viewer));
  viewer.overlays.push((ctx) => page.editor.draw(ctx, viewer));
  viewer.pointerHandler = (kind, event, point, screen) => {
    showHover(page, kind, point, screen);
    return page.editor.pointer(kind, event, point);
  };
  viewer.wantsPan = () => page.editor.tool === "pan" || page.spaceHeld;
  canvas.viewer = viewer; // for scripts driving the page (the browser tests)
  viewer.editor = null; // set by createEditor
  canvas.dataset.ready = "true";
  return viewer;
}

async function loadTile(taskId, layer, level, col, row, signal) {
  const path = `/tasks/${taskId}/tiles/${layer}/${level}/${col}_${row}.png`;
  const blob = await (await apiFetch(path, { signal })).blob();
  if (layer === "image") return createImageBitmap(blob);
  const pixels = await grayPixels(blob);
  const [r, g, b] = LAYER_COLOURS[layer];
  const tinted = new ImageData(pixels.width, pixels.height);
  for (let i = 0, j = 0; j < pixels.data.length; i += 4, j++) {
    tinted.data[i] = r;
    tinted.data[i + 1] = g;
    tinted.data[i + 2] = b;
    tinted.data[i + 3] = pixels.data[j];
  }
  return createImageBitmap(tinted);
}

// The gray values of a PNG tile, as they are in the file.
async function grayPixels(blob) {
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const data = new Uint8Array(canvas.width * canvas.height);
  for (let i = 0; i < data.length; i++) data[i] = rgba[i * 4];
  return { width: canvas.width, height: canvas.height, data };
}

// The full-size mask in a rectangle, read from the level-0 mask tiles.
async function maskRegion(page, x0, y0, x1, y1) {
  const size = page.pyramid.tile_size;
  const width = x1 - x0;
  const region = new Uint8Array(width * (y1 - y0));
  const jobs = [];
  for (let row = Math.floor(y0 / size); row <= Math.floor((y1 - 1) / size); row++) {
    for (let col = Math.floor(x0 / size); col <= Math.floor((x1 - 1) / size); col++) {
      const path = `/tasks/${page.taskId}/tiles/mask/0/${col}_${row}.png`;
      jobs.push(
        apiFetch(path).then(async (response) => {
          const tile = await grayPixels(await response.blob());
          const left = col * size;
          const top = row * size;
          for (let y = Math.max(y0, top); y < Math.min(y1, top + tile.height); y++) {
            for (let x = Math.max(x0, left); x < Math.min(x1, left + tile.width); x++) {
              region[(y - y0) * width + (x - x0)] = tile.data[(y - top) * tile.width + (x - left)] >= 128 ? 255 : 0;
            }
          }
        }),
      );
    }
  }
  await Promise.all(jobs);
  return region;
}

function createEditor(page) {
  const editor = new CorrectionEditor(page.viewer, {
    loadMask: (x0, y0, x1, y1) => {
      if (page.task.status !== "FINISHED") return Promise.resolve(new Uint8Array((x1 - x0) * (y1 - y0)));
      return maskRegion(page, x0, y0, x1, y1);
    },
    onChange: () => renderCorrectionSummary(page),
    say,
  });
  page.viewer.editor = editor;
  renderCorrectionSummary(page, editor);
  return editor;
}

// The server's mask is hidden inside the boxes, where the corrected one is drawn instead.
function clipOutBoxes(ctx, page) {
  const boxes = page.editor?.boxes ?? [];
  if (!boxes.length) return;
  const ratio = window.devicePixelRatio || 1;
  ctx.beginPath();
  ctx.rect(0, 0, ctx.canvas.width, ctx.canvas.height);
  for (const box of boxes) {
    const a = page.viewer.imageToScreen(box.x0, box.y0);
    const b = page.viewer.imageToScreen(box.x1, box.y1);
    ctx.rect(a.x * ratio, a.y * ratio, (b.x - a.x) * ratio, (b.y - a.y) * ratio);
  }
  ctx.clip("evenodd");
}

function renderCorrectionSummary(page, editor = page.editor) {
  const { boxes, area, marked } = editor.summary();
  const text = boxes
    ? `${boxes} box${boxes > 1 ? "es" : ""} labelled (${area.toLocaleString()} px, ${marked.toLocaleString()} px of marks).`
    : "No box yet: draw one (B) around an area to correct, then fix the mask inside it.";
  page.find("#correction-summary").textContent = text;
  page.find("#finetune-labels").disabled = !boxes || page.task.status !== "FINISHED" || page.jobRunning;
}

function setUpDisplay(page) {
  const { find, viewer } = page;
  const overlay = find("#show-overlay");
  const opacity = find("#opacity");
  const apply = () => {
    const style = find('input[name="overlay-style"]:checked').value;
    const alpha = Number(opacity.value) / 100;
    for (const layer of ["mask", "outline"]) {
      viewer.setLayer(layer, { visible: overlay.checked && layer === style, opacity: layer === "outline" ? Math.min(1, alpha * 1.6) : alpha });
    }
    page.editor.opacity = Math.min(1, alpha + 0.15);
    find("#opacity-out").textContent = `${opacity.value} %`;
    viewer.redraw();
  };
  page.applyDisplay = apply;
  for (const input of [overlay, opacity, ...page.root.querySelectorAll('input[name="overlay-style"]')]) {
    input.addEventListener("input", apply);
  }
  find("#show-problems").addEventListener("input", (event) => {
    if (page.marks) page.marks.showProblems = event.target.checked;
    viewer.redraw();
  });
  find("#show-ids").addEventListener("input", (event) => {
    if (page.marks) page.marks.showIds = event.target.checked;
    viewer.redraw();
  });
  find("#zoom-fit").addEventListener("click", () => viewer.fit());
  apply();
}

function setUpTools(page) {
  const { find, editor } = page;
  for (const button of page.root.querySelectorAll("[data-tool]")) {
    button.addEventListener("click", () => selectTool(page, button.dataset.tool));
  }
  find("#undo").addEventListener("click", () => editor.undo());
  find("#clear-corrections").addEventListener("click", () => {
    if (!editor.boxes.length || confirm("Remove every box and correction?")) editor.clear();
  });
  const brush = find("#brush-size");
  const showBrush = () => {
    editor.brushRadius = Number(brush.value);
    find("#brush-size-out").textContent = `${brush.value} px`;
    page.viewer.redraw();
  };
  brush.addEventListener("input", showBrush);
  showBrush();
  selectTool(page, "pan");
}

function selectTool(page, tool) {
  page.editor.setTool(tool);
  for (const button of page.root.querySelectorAll("[data-tool]")) {
    button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
  }
  page.find("#view-canvas").dataset.tool = tool;
}

function setUpKeys(page) {
  const canvas = page.find("#view-canvas");
  const onKey = (event) => {
    if (typingInField(event) || event.altKey || document.querySelector("dialog[open]")) return;
    // Enter and the arrows keep their meaning on buttons, links and sliders.
    const onControl = event.target.closest?.("button, a, input, select") && event.target !== canvas;
    if (onControl && (event.key === "Enter" || event.key.startsWith("Arrow"))) return;
    if (event.key === " ") {
      page.spaceHeld = true; // held: drag pans with any tool
      if (event.target === canvas || event.target === document.body) event.preventDefault();
      return;
    }
    if (handleKey(page, event)) event.preventDefault();
  };
  const onKeyUp = (event) => {
    if (event.key === " ") page.spaceHeld = false;
  };
  document.addEventListener("keydown", onKey);
  document.addEventListener("keyup", onKeyUp);
  page.cleanups.push(() => {
    document.removeEventListener("keydown", onKey);
    document.removeEventListener("keyup", onKeyUp);
  });
}

// One shortcut; true when the key was one.
function handleKey(page, event) {
  const { viewer, editor, find } = page;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  const toggle = (selector) => {
    const box = find(selector);
    if (box.disabled) return;
    box.checked = !box.checked;
    box.dispatchEvent(new Event("input"));
  };
  const step = 0.15 * Math.min(viewer.viewWidth, viewer.viewHeight);
  if ((event.ctrlKey || event.metaKey) && key === "z") return editor.undo(), true;
  if (event.ctrlKey || event.metaKey) return false;
  const actions = {
    z: () => editor.undo(),
    o: () => toggle("#show-overlay"),
    m: () => toggle("#show-problems"),
    i: () => toggle("#show-ids"),
    l: () => {
      const outline = find('input[value="outline"]');
      (outline.checked ? find('input[value="mask"]') : outline).checked = true;
      page.applyDisplay();
    },
    "[": () => nudgeBrush(page, -1),
    "]": () => nudgeBrush(page, 1),
    "+": () => viewer.zoomAt(viewer.viewWidth / 2, viewer.viewHeight / 2, 1.5),
    "=": () => viewer.zoomAt(viewer.viewWidth / 2, viewer.viewHeight / 2, 1.5),
    "-": () => viewer.zoomAt(viewer.viewWidth / 2, viewer.viewHeight / 2, 1 / 1.5),
    0: () => viewer.fit(),
    ArrowLeft: () => viewer.panBy(step, 0),
    ArrowRight: () => viewer.panBy(-step, 0),
    ArrowUp: () => viewer.panBy(0, step),
    ArrowDown: () => viewer.panBy(0, -step),
    Enter: () => editor.closePolygon(),
    Escape: () => (editor.draft ? editor.cancelDraft() : selectTool(page, "pan")),
  };
  if (TOOL_KEYS[key]) return selectTool(page, TOOL_KEYS[key]), true;
  if (!actions[key]) return false;
  actions[key]();
  return true;
}

function nudgeBrush(page, direction) {
  const brush = page.find("#brush-size");
  brush.value = String(Number(brush.value) + direction * Math.max(1, Math.round(Number(brush.value) / 5)));
  brush.dispatchEvent(new Event("input"));
}

function showHover(page, kind, point, screen) {
  const tip = page.find("#hover-tip");
  const item = kind === "leave" || !page.marks ? null : page.marks.itemAt(point);
  if (page.marks && page.marks.hovered !== item) {
    page.marks.hovered = item;
    page.viewer.redraw();
  }
  if (!item) {
    tip.hidden = true;
    return;
  }
  tip.textContent = describe(item);
  tip.hidden = false;
  tip.style.left = `${screen.sx + 14}px`;
  tip.style.top = `${screen.sy + 14}px`;
}

// Poll the task until it is over, then bring in its results.
function followTask(page) {
  const render = () => {
    page.find("#task-state").replaceChildren(...statusCell(page.task));
    const { width, height } = page.task.image;
    const { rows, cols } = page.task.parameters;
    page.find("#task-facts").textContent = `${width} × ${height} px · grid ${rows ? `${rows} × ${cols}` : "none"} · model ${page.task.parameters.model || "default"}`;
  };
  render();
  const tick = async () => {
    if (page.closed) return;
    if (!TERMINAL.includes(page.task.status)) {
      try {
        page.task = await apiJson(`/tasks/${page.taskId}`);
        render();
      } catch (error) {
        say(error.message, "error");
      }
      setTimeout(tick, 1500);
      return;
    }
    if (page.task.status === "FINISHED") await showResults(page);
  };
  tick();
}

async function showResults(page) {
  const { find, task } = page;
  for (const input of page.root.querySelectorAll("#display-section input")) input.disabled = false;
  find("#show-overlay").checked = true;
  page.applyDisplay();
  renderDownloads(page);
  renderCorrectionSummary(page);
  find("#finetune-grid").disabled = !task.parameters.rows;
  if (!task.links.qc) {
    find("#qc").replaceChildren(el("p", {}, "No grid was given, so the marks were not numbered."));
    return;
  }
  try {
    const [qc, record] = await Promise.all([apiJson(task.links.qc), apiJson(`/tasks/${page.taskId}/marks`)]);
    page.marks = new MarkLayer(record, qc);
    page.marks.showProblems = find("#show-problems").checked;
    page.marks.showIds = find("#show-ids").checked;
    renderQc(page, qc, record);
    page.find("#view-canvas").dataset.marks = String(record.marks.length);
    page.viewer.redraw();
  } catch (error) {
    say(`The marks could not be loaded: ${error.message}`, "error");
  }
}

function renderQc(page, qc, record) {
  const share = qc.expected ? Math.round((100 * qc.found) / qc.expected) : 0;
  const facts = [
    ["Marks found", `${qc.found} of ${qc.expected} (${share} %)`],
    ["Missing nodes", `${qc.missing_ids.length}`],
    ["Objects without an id", `${record.extra_total}`],
    ["Pitch", `${qc.pitch_px.map((p) => p.toFixed(1)).join(" × ")} px`],
    ["Rotation", `${qc.angle_deg.toFixed(2)}°`],
    ["Residual", `${qc.residual_rms_px.toFixed(2)} px`],
  ];
  page.find("#qc").replaceChildren(...facts.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
  page.find("#qc-warnings").replaceChildren(...qc.warnings.map((warning) => el("li", {}, warning)));
}

function renderDownloads(page) {
  const { task, taskId } = page;
  const base = (slideName(taskId) || `task_${shortId(taskId)}`).replace(/\.[^.]+$/, "");
  const items = [
    ["Mask (PNG, 0/255)", `/masks/${taskId}`, `${base}_mask.png`],
    ["Overlay (PNG)", task.links.overlay, `${base}_overlay.png`],
  ];
  if (task.links.labels) {
    items.push(
      ["Id image (16-bit PNG)", task.links.labels, `${base}_ids.png`],
      ["Mark table (ams.csv)", task.links.ams_csv, `${base}_ams.csv`],
      ["Marks (JSON)", `/tasks/${taskId}/marks`, `${base}_marks.json`],
      ["QC (JSON)", task.links.qc, `${base}_qc.json`],
    );
  }
  const onClick = (path, filename) => async (event) => {
    event.preventDefault();
    try {
      await download(path, filename);
    } catch (error) {
      say(error.message, "error");
    }
  };
  page.find("#downloads").replaceChildren(
    ...items.map(([label, path, filename]) =>
      el("li", {}, el("a", { href: path, download: filename, onclick: onClick(path, filename) }, label)),
    ),
  );
}
