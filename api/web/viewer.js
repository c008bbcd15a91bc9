// The page of one task: the slide in a zoomable tile viewer with the mask (filled or outlined)
// over it, mark ids on hover, missing and extra marks highlighted, the QC summary, downloads,
// what changed since the task it was re-run from, the grid to number the marks again, and the
// correction tools that feed a fine-tune (kept on the server as a draft while drawn).

import { ApiError, apiFetch, apiJson } from "./api.js";
import { setUpChanges } from "./compare.js";
import { CorrectionEditor } from "./correction.js";
import { DraftKeeper } from "./drafts.js";
import { setUpFinetune } from "./finetune.js";
import { setUpGridFix } from "./gridfix.js";
import { MarkLayer, describe } from "./marklayer.js";
import { renderDownloads, renderQc, renderUnregistered, renderWarnings } from "./results.js";
import { statusCell } from "./tasks.js";
import { TileViewer } from "./tileviewer.js";
import { el, guardLeaving, say, shortId, taskName, typingInField } from "./ui.js";

const LAYER_COLOURS = { mask: [0, 220, 255], outline: [255, 230, 0] };
// The changes layer's pixel codes (model/compare.py) and their colours.
const CHANGE_COLOURS = new Map([
  [50, [255, 149, 0]], // shrunk: pixels a changed mark lost
  [100, [255, 230, 0]], // grown: pixels a changed mark gained
  [150, [255, 59, 48]], // removed mark
  [200, [52, 199, 89]], // added mark
]);
const TERMINAL = ["FINISHED", "FAILED"];
const TOOL_KEYS = { v: "pan", b: "box", d: "brush", p: "polygon", r: "remove", e: "erase" };
const TASK_POLL_MS = 1000;

export async function showViewer(root, taskId) {
  root.append(document.getElementById("viewer-template").content.cloneNode(true));
  const page = { root, taskId, closed: false, cleanups: [] };
  page.find = (selector) => root.querySelector(selector);
  try {
    page.task = await apiJson(`/tasks/${taskId}`);
    if (page.task.status === "FAILED") return showFailed(page);
    page.pyramid = await apiJson(`/tasks/${taskId}/pyramid`);
  } catch (error) {
    page.find("#task-title").textContent = "Task not available";
    page.find("#task-state").replaceChildren(el("span", { class: "error" }, error.message));
    return () => {};
  }
  page.pixelsId = taskId; // whose image and mask tiles are shown (kept when the ids change)
  page.viewer = createViewer(page);
  page.editor = createEditor(page);
  page.drafts = new DraftKeeper(taskId, page.task.image, page.editor, (line, chip) => {
    page.find("#draft-state").replaceChildren(line);
    page.find("#draft-chip").textContent = chip;
    page.find("#draft-chip").dataset.state = line.dataset.draft;
  });
  setUpDisplay(page);
  setUpTools(page);
  setUpKeys(page);
  setUpFinetune(page);
  setUpGridFix(page);
  renderTask(page);
  await restoreDraft(page);
  followTask(page);
  followTiles(page);
  return leaveViewer(page);
}

// The workers make the tiles: a QUEUED task's image when one starts on it, a task finished
// before workers made tiles all of them now (the pyramid's first request asked for them).
// Until they are there the stage says so, and the pyramid is asked again each second; a layer
// that appears is loaded at once.
function followTiles(page) {
  const note = el("p", { class: "stage-note", id: "tiles-note", role: "status" });
  page.find(".stage").append(note);
  const canvas = page.find("#view-canvas");
  const known = new Set(page.pyramid.layers);
  const tick = async () => {
    if (page.closed || page.task.status === "FAILED") {
      note.hidden = true;
      return;
    }
    const { state, layers, error } = page.pyramid;
    canvas.dataset.tiles = state;
    const text = tilesNote(state, layers, error);
    note.hidden = !text;
    note.textContent = text;
    if (state === "ready" || state === "failed" || (state === "pending" && layers.includes("image"))) return;
    await new Promise((resolve) => setTimeout(resolve, TASK_POLL_MS));
    if (page.closed) return;
    try {
      page.pyramid = await apiJson(`/tasks/${page.pixelsId}/pyramid`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) return;
    }
    for (const layer of page.pyramid.layers) {
      if (known.has(layer)) continue;
      known.add(layer);
      page.viewer.forgetLayer(layer); // asked for at once, not at its next retry
    }
    tick();
  };
  tick();
}

function tilesNote(state, layers, error) {
  if (state === "failed") return `The slide's tiles could not be made: ${error}`;
  if (state === "building") return "Making this slide's tiles: it was segmented before workers made them. A few seconds (longer while other slides run)…";
  if (state === "pending" && !layers.includes("image")) return "The slide appears as soon as a worker starts on this task.";
  return "";
}

// The viewer's leave(): saves the draft first; says what would still be lost.
function leaveViewer(page) {
  const reason = () => page.drafts.unsavedReason() || jobReason(page);
  const unguard = guardLeaving(reason);
  const onHidden = () => document.visibilityState === "hidden" && page.drafts.flush();
  document.addEventListener("visibilitychange", onHidden);
  const leave = () => {
    page.closed = true;
    unguard();
    document.removeEventListener("visibilitychange", onHidden);
    for (const cleanup of page.cleanups) cleanup();
    page.drafts.destroy();
    page.viewer.destroy();
  };
  leave.beforeLeave = async () => {
    await page.drafts.flush();
    return reason();
  };
  return leave;
}

function jobReason(page) {
  if (!page.jobRunning) return null;
  return "A fine-tune is running; this page segments the slide again when it ends. If you leave, the model is kept (the upload form offers it) but the slide is not segmented again.";
}

async function restoreDraft(page) {
  try {
    await page.drafts.load();
  } catch (error) {
    say(`Your saved corrections could not be restored: ${error.message}`, "error");
  }
}

function createViewer(page) {
  const { tile_size: tileSize, levels, width, height } = page.pyramid;
  const canvas = page.find("#view-canvas");
  const viewer = new TileViewer(canvas, {
    width,
    height,
    tileSize,
    levels,
    fetchTile: (layer, level, col, row, signal) => loadTile(page, layer, level, col, row, signal),
  });
  viewer.onError = (error, layer, final) => tileError(page, error, layer, final);
  const clip = (ctx) => clipOutBoxes(ctx, page);
  viewer.addLayer("image");
  for (const layer of ["mask", "outline", "before-mask", "before-outline"]) {
    viewer.addLayer(layer, { visible: false, opacity: 0.5, clip });
  }
  viewer.addLayer("diff", { visible: false, opacity: 0.85 });
  viewer.overlays.push((ctx) => page.lattice?.draw(ctx, viewer));
  viewer.overlays.push((ctx) => page.marks?.draw(ctx, viewer));
  viewer.overlays.push((ctx) => page.editor.draw(ctx, viewer));
  viewer.pointerHandler = (kind, event, point, screen) => {
    showHover(page, kind, point, screen);
    if (page.picking) return page.picking(kind, point);
    return page.editor.pointer(kind, event, point);
  };
  viewer.wantsPan = () => (page.editor.tool === "pan" && !page.picking) || page.spaceHeld;
  canvas.viewer = viewer; // for scripts driving the page (the browser tests)
  canvas.dataset.ready = "true";
  return viewer;
}

// A FAILED task explains itself once, in its state; tiles are not asked for again.
function tileError(page, error, layer, final) {
  if (page.task.status === "FAILED") {
    page.viewer.stopLayer(layer, error);
    page.find("#view-canvas").dataset.stopped = "true";
    return;
  }
  if (layer.startsWith("before-") && final) {
    say(`The earlier result cannot be shown: ${error.message}`, "error");
    return;
  }
  // Tiles a worker is still making: the stage says so (followTiles), they are asked again.
  if (!final && NOT_READY.test(error.problem?.type ?? "")) return;
  say(`Tiles could not be loaded${final ? "" : " (trying again)"}: ${error.message}`, "error");
}

// Where a layer's tiles come from: the changes are this task's, "before-" layers the task it
// was re-run from, the image and mask those of the task whose pixels are shown.
function tilePath(page, layer, level, col, row) {
  const tile = `${level}/${col}_${row}.png`;
  if (layer === "diff") return `/tasks/${page.taskId}/tiles/diff/${tile}`;
  if (layer.startsWith("before-")) return `/tasks/${page.comparison.source}/tiles/${layer.slice(7)}/${tile}`;
  return `/tasks/${page.pixelsId}/tiles/${layer}/${tile}`;
}

// Problems that no retry will change (the viewer stops the layer): a 409 of these kinds.
const FINAL_KINDS = /(task-failed|image-unreadable)$/;
// A 409 for tiles a worker has not made yet: asked again later, said once on the stage.
const NOT_READY = /tiles-not-ready$/;

async function loadTile(page, layer, level, col, row, signal) {
  let response;
  try {
    response = await apiFetch(tilePath(page, layer, level, col, row), { signal });
  } catch (error) {
    if (FINAL_KINDS.test(error.problem?.type ?? "")) error.permanent = true;
    throw error;
  }
  const blob = await response.blob();
  if (layer === "image") return createImageBitmap(blob);
  const pixels = await grayPixels(blob);
  const tinted = new ImageData(pixels.width, pixels.height);
  if (layer === "diff") {
    for (let i = 0, j = 0; j < pixels.data.length; i += 4, j++) {
      const colour = CHANGE_COLOURS.get(pixels.data[j]);
      if (!colour) continue;
      tinted.data.set(colour, i);
      tinted.data[i + 3] = 255;
    }
    return createImageBitmap(tinted);
  }
  const [r, g, b] = LAYER_COLOURS[layer.replace("before-", "")];
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
      const path = `/tasks/${page.pixelsId}/tiles/mask/0/${col}_${row}.png`;
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
    onChange: () => {
      renderCorrectionSummary(page, editor);
      page.drafts?.changed();
    },
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

export function renderCorrectionSummary(page, editor = page.editor) {
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
    const before = Boolean(page.comparison) && find('input[name="before-after"]:checked').value === "before";
    const shown = before ? `before-${style}` : style;
    const alpha = Number(opacity.value) / 100;
    for (const layer of ["mask", "outline", "before-mask", "before-outline"]) {
      const strength = layer.endsWith("outline") ? Math.min(1, alpha * 1.6) : alpha;
      viewer.setLayer(layer, { visible: overlay.checked && layer === shown, opacity: strength });
    }
    viewer.setLayer("diff", { visible: Boolean(page.comparison) && find("#show-changes").checked });
    page.editor.opacity = Math.min(1, alpha + 0.15);
    find("#opacity-out").textContent = `${opacity.value} %`;
    find("#view-canvas").dataset.mask = shown;
    viewer.redraw();
  };
  page.applyDisplay = apply;
  const inputs = [overlay, opacity, find("#show-changes"), ...page.root.querySelectorAll('input[name="overlay-style"], input[name="before-after"]')];
  for (const input of inputs) input.addEventListener("input", apply);
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
  find("#redo").addEventListener("click", () => editor.redo());
  find("#clear-corrections").addEventListener("click", () => {
    if (!editor.boxes.length) return;
    editor.clear();
    say("Every box was removed; Undo (Z) brings them back");
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

export function selectTool(page, tool) {
  page.stopPicking?.();
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

// Undo and redo as desktop tools have them: Ctrl+Z, Ctrl+Shift+Z, Ctrl+Y (Cmd on a Mac).
function historyKey(page, event, key) {
  const command = event.ctrlKey || event.metaKey;
  if ((command && key === "z" && event.shiftKey) || (command && key === "y") || (!command && key === "z" && event.shiftKey)) {
    page.editor.redo();
    return true;
  }
  if (key === "z") {
    page.editor.undo();
    return true;
  }
  return false;
}

// One shortcut; true when the key was one.
function handleKey(page, event) {
  const { viewer, editor, find } = page;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (historyKey(page, event, key)) return true;
  if (event.ctrlKey || event.metaKey) return false;
  const toggle = (selector) => {
    const box = find(selector);
    if (box.disabled || box.closest("[hidden]")) return;
    box.checked = !box.checked;
    box.dispatchEvent(new Event("input"));
  };
  const step = 0.15 * Math.min(viewer.viewWidth, viewer.viewHeight);
  const actions = {
    o: () => toggle("#show-overlay"),
    m: () => toggle("#show-problems"),
    i: () => toggle("#show-ids"),
    g: () => toggle("#show-lattice"),
    c: () => toggle("#show-changes"),
    t: () => {
      if (!page.comparison) return;
      const before = find('input[name="before-after"][value="before"]');
      (before.checked ? find('input[name="before-after"][value="after"]') : before).checked = true;
      page.applyDisplay();
    },
    k: () => page.startPicking?.(),
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

// The title, state and facts of the task on screen.
export function renderTask(page) {
  const { task } = page;
  page.name = taskName(task);
  page.find("#task-title").textContent = page.name;
  page.find("#task-state").replaceChildren(...statusCell(task));
  const { width, height } = task.image;
  const { rows, cols, model } = task.parameters;
  const grid = rows ? `${rows} × ${cols}` : "none";
  const modelName = model && model !== "default" ? `fine-tuned ${shortId(model)}` : "default";
  page.find("#task-facts").textContent = `${width} × ${height} px · grid ${grid} · model ${modelName}`;
  page.find("#view-canvas").dataset.task = task.id;
  page.find("#view-canvas").dataset.status = task.status;
}

// Poll the task until it is over, then bring in its results (or its error, once).
function followTask(page) {
  const tick = async () => {
    if (page.closed) return;
    if (!TERMINAL.includes(page.task.status)) {
      try {
        page.task = await apiJson(`/tasks/${page.taskId}`);
        renderTask(page);
      } catch (error) {
        if (error instanceof ApiError && error.status === 404) return say(error.message, "error");
        say(error.message, "error");
      }
      setTimeout(tick, TASK_POLL_MS);
      return;
    }
    if (page.task.status === "FINISHED") await showResults(page);
    else showFailure(page);
  };
  tick();
}

// A task that FAILED has nothing to show but its error: said once, nothing asked for again.
function showFailed(page) {
  page.root.querySelector(".viewer").classList.add("failed");
  const canvas = page.find("#view-canvas");
  canvas.dataset.status = "FAILED";
  canvas.dataset.failed = "true";
  page.find("#task-title").textContent = taskName(page.task);
  page.find("#task-state").replaceChildren(...statusCell(page.task));
  const { rows, cols } = page.task.parameters;
  page.find("#task-facts").textContent = `${page.task.image.width} × ${page.task.image.height} px · grid ${rows ? `${rows} × ${cols}` : "none"}`;
  for (const control of page.root.querySelectorAll(".toolbar button, .toolbar input")) control.disabled = true;
  for (const id of ["#display-section", "#correct-section"]) page.find(id).hidden = true;
  page.find(".stage").append(el("p", { class: "stage-note" }, "This task FAILED, so there is nothing to show. Its error is on the right; upload the slide again once it is fixed."));
  showFailure(page);
  return () => {};
}

function showFailure(page) {
  for (const layer of page.viewer?.layers.keys() ?? []) page.viewer.stopLayer(layer);
  page.find("#qc").replaceChildren(el("p", { class: "note" }, "This task FAILED, so it has no results; its error is above."));
  page.find("#downloads").replaceChildren(el("li", { class: "note" }, "Nothing to download: the task FAILED."));
  page.find("#view-canvas").dataset.failed = "true";
}

export async function showResults(page) {
  const { find, task } = page;
  for (const input of page.root.querySelectorAll("#display-section input")) input.disabled = false;
  find("#show-overlay").checked = true;
  setUpChanges(page);
  page.applyDisplay();
  renderDownloads(page);
  renderCorrectionSummary(page);
  find("#finetune-grid").disabled = !task.parameters.rows || page.jobRunning;
  page.showGridFix?.();
  if (!task.links.qc) {
    page.marks = null;
    renderUnregistered(page);
    page.viewer.redraw();
    return;
  }
  await loadMarks(page);
}

async function loadMarks(page) {
  const { find, task } = page;
  try {
    const [qc, record] = await Promise.all([apiJson(task.links.qc), apiJson(`/tasks/${task.id}/marks`)]);
    page.marks = new MarkLayer(record, qc);
    page.marks.showProblems = find("#show-problems").checked;
    page.marks.showIds = find("#show-ids").checked;
    page.qc = qc;
    find("#qc-note").textContent = "";
    renderQc(page, qc, record);
    page.onMarks?.(record, qc);
    find("#view-canvas").dataset.marks = String(record.marks.length);
    page.viewer.redraw();
  } catch (error) {
    // A task finished before workers wrote its mark table: one is making it now.
    if (NOT_READY.test(error.problem?.type ?? "") && !page.closed) {
      setTimeout(() => page.task === task && !page.closed && loadMarks(page), TASK_POLL_MS);
      return;
    }
    renderWarnings(page, task.warnings || []);
    say(`The marks could not be loaded: ${error.message}`, "error");
  }
}
