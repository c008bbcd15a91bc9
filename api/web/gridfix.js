// Fixing the grid of a finished task in seconds: the lattice the ids lie on drawn over the image
// (fitted to the registered marks), rows and columns to edit, a mark to pick and say "this is
// row r, column c", and `POST /tasks/{id}/register` to number the same mask again. The viewer
// then follows the new task in place: the ids change, the image and mask stay on screen.

import { ApiError, apiJson } from "./api.js";
import { gridProblem, statusCell } from "./tasks.js";
import { el, moveAddress, say, shortId } from "./ui.js";
import { renderTask, selectTool, showResults } from "./viewer.js";

const POLL_MS = 1000;
const LATTICE_COLOUR = "rgba(255, 255, 255, 0.6)";
const FADED_COLOUR = "rgba(255, 255, 255, 0.3)";
const PROPOSED_COLOUR = "#ff9f0a";
const MIN_LABEL_PITCH = 22; // CSS pixels a cell needs before its row and column are written

// The affine map of grid places to image pixels, fitted to the marks by least squares:
// (x, y) = origin + col * a + row * b. Null with fewer than three marks or all in one line.
export function fitLattice(marks) {
  if (marks.length < 3) return null;
  const normal = [0, 0, 0, 0, 0, 0, 0, 0, 0];
  const rhsX = [0, 0, 0];
  const rhsY = [0, 0, 0];
  for (const mark of marks) {
    const v = [1, mark.col, mark.row];
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 3; j++) normal[i * 3 + j] += v[i] * v[j];
      rhsX[i] += v[i] * mark.x;
      rhsY[i] += v[i] * mark.y;
    }
  }
  const x = solve3(normal, rhsX);
  const y = solve3(normal, rhsY);
  if (!x || !y) return null;
  return { origin: [x[0], y[0]], a: [x[1], y[1]], b: [x[2], y[2]] };
}

// Cramer's rule for a 3 x 3 system; null when it is singular.
function solve3(m, r) {
  const det = (q) => q[0] * (q[4] * q[8] - q[5] * q[7]) - q[1] * (q[3] * q[8] - q[5] * q[6]) + q[2] * (q[3] * q[7] - q[4] * q[6]);
  const d = det(m);
  if (Math.abs(d) < 1e-9) return null;
  return [0, 1, 2].map((column) => det(m.map((value, index) => (index % 3 === column ? r[Math.floor(index / 3)] : value))) / d);
}

function node(fit, row, col) {
  return { x: fit.origin[0] + col * fit.a[0] + row * fit.b[0], y: fit.origin[1] + col * fit.a[1] + row * fit.b[1] };
}

// The lattice's cells (lines half a pitch around each node) with row and column numbers along
// the top and left edges when the cells are large enough on screen.
function drawLattice(ctx, viewer, fit, rows, cols, colour, dashed) {
  const at = (row, col) => viewer.imageToScreen(node(fit, row, col).x, node(fit, row, col).y);
  ctx.save();
  ctx.strokeStyle = colour;
  ctx.lineWidth = dashed ? 2 : 1;
  if (dashed) ctx.setLineDash([8, 5]);
  ctx.beginPath();
  for (let row = 0; row <= rows; row++) {
    const [p, q] = [at(row - 0.5, -0.5), at(row - 0.5, cols - 0.5)];
    ctx.moveTo(p.x, p.y);
    ctx.lineTo(q.x, q.y);
  }
  for (let col = 0; col <= cols; col++) {
    const [p, q] = [at(-0.5, col - 0.5), at(rows - 0.5, col - 0.5)];
    ctx.moveTo(p.x, p.y);
    ctx.lineTo(q.x, q.y);
  }
  ctx.stroke();
  const pitch = Math.min(Math.hypot(...fit.a), Math.hypot(...fit.b)) * viewer.scale;
  if (pitch >= MIN_LABEL_PITCH) {
    ctx.fillStyle = colour;
    ctx.font = "600 11px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (let col = 0; col < cols; col++) ctx.fillText(String(col), at(-0.85, col).x, at(-0.85, col).y);
    for (let row = 0; row < rows; row++) ctx.fillText(String(row), at(row, -0.85).x, at(row, -0.85).y);
  }
  ctx.restore();
}

export function setUpGridFix(page) {
  const { find } = page;
  const state = { fit: null, anchor: null };
  page.lattice = { draw: (ctx, viewer) => drawGridFix(ctx, viewer, page, state) };
  page.onMarks = (record) => {
    state.fit = fitLattice(record.marks);
    find("#show-lattice").disabled = !state.fit;
  };
  page.showGridFix = () => {
    find("#grid-section").hidden = false;
    find("#grid-rows").value = page.task.parameters.rows ?? "";
    find("#grid-cols").value = page.task.parameters.cols ?? "";
    state.anchor = null;
    find("#anchor-fields").hidden = true;
    checkFields(page, state);
  };
  page.startPicking = () => startPicking(page, state);
  page.stopPicking = () => stopPicking(page);
  find("#pick-mark").addEventListener("click", () => (page.picking ? selectTool(page, "pan") : startPicking(page, state)));
  find("#anchor-clear").addEventListener("click", () => {
    state.anchor = null;
    find("#anchor-fields").hidden = true;
    checkFields(page, state);
  });
  for (const id of ["#grid-rows", "#grid-cols", "#anchor-row", "#anchor-col"]) {
    find(id).addEventListener("input", () => checkFields(page, state, false));
    find(id).addEventListener("change", () => checkFields(page, state));
  }
  find("#show-lattice").addEventListener("input", () => page.viewer.redraw());
  find("#register-again").addEventListener("click", () => registerAgain(page, state));
}

function drawGridFix(ctx, viewer, page, state) {
  const shown = page.find("#show-lattice").checked;
  const fit = state.fit;
  const proposal = proposedGrid(page, state);
  // With a new grid proposed, the present one steps back so the proposal reads first.
  const colour = proposal ? FADED_COLOUR : LATTICE_COLOUR;
  if (fit && shown) drawLattice(ctx, viewer, fit, page.task.parameters.rows, page.task.parameters.cols, colour, false);
  if (fit && proposal && (shown || state.anchor)) {
    const { rows, cols, anchor } = proposal;
    let moved = fit;
    if (anchor && anchor.row !== null) {
      const now = node(fit, anchor.row, anchor.col);
      const shift = [anchor.x - now.x, anchor.y - now.y];
      moved = { ...fit, origin: [fit.origin[0] + shift[0], fit.origin[1] + shift[1]] };
    }
    drawLattice(ctx, viewer, moved, rows, cols, PROPOSED_COLOUR, true);
  }
  if (state.anchor) {
    const at = viewer.imageToScreen(state.anchor.x, state.anchor.y);
    ctx.save();
    ctx.strokeStyle = PROPOSED_COLOUR;
    ctx.lineWidth = 3;
    ctx.beginPath();
    ctx.arc(at.x, at.y, 12, 0, 2 * Math.PI);
    ctx.stroke();
    ctx.restore();
  }
}

// The grid the fields describe, when it differs from the task's or a mark was placed.
function proposedGrid(page, state) {
  const rows = Number(page.find("#grid-rows").value);
  const cols = Number(page.find("#grid-cols").value);
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1) return null;
  const anchor = state.anchor && { ...state.anchor, ...anchorPlace(page) };
  const same = rows === page.task.parameters.rows && cols === page.task.parameters.cols;
  if (same && !anchor) return null;
  return { rows, cols, anchor };
}

function anchorPlace(page) {
  const row = page.find("#anchor-row").value.trim();
  const col = page.find("#anchor-col").value.trim();
  const ok = /^\d+$/.test(row) && /^\d+$/.test(col);
  return ok ? { row: Number(row), col: Number(col) } : { row: null, col: null };
}

function startPicking(page, state) {
  if (page.find("#grid-section").hidden) return;
  selectTool(page, "pan");
  page.picking = (kind, point) => {
    if (kind !== "down") return kind === "up" || kind === "dblclick";
    pickAt(page, state, point);
    selectTool(page, "pan");
    return true;
  };
  page.find("#pick-mark").setAttribute("aria-pressed", "true");
  page.find("#view-canvas").dataset.tool = "pick";
  say("Click a mark whose row and column you know");
}

function stopPicking(page) {
  if (!page.picking) return;
  page.picking = null;
  page.find("#pick-mark").setAttribute("aria-pressed", "false");
}

// The mark under the pointer (its centre and its place now), or the point itself where the
// task has no ids to show: the registration takes the mark nearest to it.
function pickAt(page, state, point) {
  const item = page.marks?.itemAt(point);
  const mark = item?.kind === "mark" ? item : null;
  state.anchor = mark ? { x: mark.x, y: mark.y } : { x: point.x, y: point.y };
  page.find("#anchor-row").value = mark ? mark.row : "";
  page.find("#anchor-col").value = mark ? mark.col : "";
  page.find("#anchor-fields").hidden = false;
  page.find("#anchor-row").focus();
  say(mark ? `Mark ${mark.id} picked: type its true row and column` : "Point picked: type the row and column of the mark there");
  checkFields(page, state, false);
}

// What is wrong with the fields, in words; the button is enabled only when nothing is.
function fieldsProblem(page, state, finished) {
  const rows = page.find("#grid-rows").value;
  const cols = page.find("#grid-cols").value;
  const grid = gridProblem(rows, cols, finished);
  if (grid) return { field: grid.field === "rows" ? "grid-rows" : "grid-cols", message: grid.message };
  if (finished && !rows.trim()) return { field: "grid-rows", message: "Rows and columns: type the grid's size to number the marks." };
  if (!state.anchor) return null;
  for (const [id, label, most] of [["anchor-row", "row", rows], ["anchor-col", "column", cols]]) {
    const text = page.find(`#${id}`).value.trim();
    if (!text && !finished) continue;
    if (!/^\d+$/.test(text)) return { field: id, message: `The picked mark's ${label}: type a whole number from 0 (rows and columns count from 0, as the ids do), or forget the mark.` };
    if (Number(text) >= Number(most)) return { field: id, message: `The picked mark's ${label} is ${text}, but the grid has ${most} ${label === "row" ? "rows" : "columns"} (0 to ${most - 1}).` };
  }
  return null;
}

function checkFields(page, state, finished = true) {
  const problem = fieldsProblem(page, state, finished);
  for (const id of ["grid-rows", "grid-cols", "anchor-row", "anchor-col"]) {
    page.find(`#${id}`).setAttribute("aria-invalid", String(problem?.field === id));
  }
  const message = page.find("#grid-fix-error");
  message.textContent = problem?.message || "";
  message.hidden = !problem;
  page.find("#register-again").disabled = Boolean(fieldsProblem(page, state, true)) || page.registering;
  page.viewer.redraw();
  return problem;
}

async function registerAgain(page, state) {
  if (checkFields(page, state)) return;
  const query = new URLSearchParams({ rows: page.find("#grid-rows").value.trim(), cols: page.find("#grid-cols").value.trim() });
  if (state.anchor) {
    const { row, col } = anchorPlace(page);
    query.set("mark_x", state.anchor.x.toFixed(1));
    query.set("mark_y", state.anchor.y.toFixed(1));
    query.set("mark_row", row);
    query.set("mark_col", col);
  }
  const job = page.find("#register-job");
  page.registering = true;
  page.find("#register-again").disabled = true;
  try {
    const created = await apiJson(`/tasks/${page.taskId}/register?${query}`, { method: "POST" });
    const task = await follow(page, created.id, job);
    if (task?.status === "FINISHED") await moveTo(page, task);
  } catch (error) {
    const missing = error instanceof ApiError && (error.status === 404 || error.status === 405) && !error.problem?.type?.includes("unknown-task");
    job.replaceChildren(el("span", { class: "error" }, missing ? "This service cannot number marks again yet (no POST /tasks/{id}/register)." : error.message));
  } finally {
    page.registering = false;
    checkFields(page, state);
  }
}

// Poll the register task until it is over; its last state, or null when the page was left.
async function follow(page, taskId, job) {
  for (;;) {
    if (page.closed) return null;
    const task = await apiJson(`/tasks/${taskId}`);
    job.replaceChildren(`Numbering again (task ${shortId(taskId)}): `, ...statusCell(task));
    job.dataset.status = task.status;
    if (task.status === "FINISHED" || task.status === "FAILED") return task;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

// Show the new task in this viewer: new ids, same image and mask tiles (the pixels are the
// same), the corrections carried over to it.
async function moveTo(page, task) {
  page.taskId = task.id;
  page.task = task;
  moveAddress(`#/tasks/${task.id}`);
  await page.drafts.moveTo(task.id);
  renderTask(page);
  await showResults(page);
  const { rows, cols } = task.parameters;
  const found = task.summary?.found ?? "?";
  say(`Numbered again on ${rows} × ${cols}: ${found} of ${(rows * cols).toLocaleString()} grid places have a mark; the mask is the same`);
}
