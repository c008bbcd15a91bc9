// Corrections for a fine-tune, in full-size image pixels: boxes mark regions as labelled; inside
// them the mask can be painted (brush, polygon), a mark removed with a click, or erased; every
// step (clearing included) can be undone and redone. Each box keeps its corrected mask (0/255
// per pixel); labelspng.js turns the boxes into the labels image.

export const MAX_BOX_SIDE = 2048;
const MIN_BOX_SIDE = 8;
const UNDO_DEPTH = 30;
const MARK = 255;
const MARK_COLOUR = [57, 255, 20];
const BOX_COLOUR = "#7cfc00";

export class CorrectionEditor {
  constructor(viewer, { loadMask, onChange, say }) {
    this.viewer = viewer;
    this.loadMask = loadMask; // async (x0, y0, x1, y1) => Uint8Array of the mask there
    this.onChange = onChange;
    this.say = say;
    this.boxes = [];
    this.undoStack = [];
    this.redoStack = [];
    this.version = 0; // counts changes, so a saved draft knows whether it is still current
    this.tool = "pan";
    this.brushRadius = 6;
    this.opacity = 0.55;
    this.draft = null; // the box being drawn, the polygon's points, or the current stroke
    this.cursor = null;
  }

  setTool(tool) {
    this.tool = tool;
    this.draft = null;
    this.viewer.redraw();
  }

  // Pointer events from the viewer, in image pixels; true when the tool used the event.
  pointer(kind, event, point) {
    this.cursor = kind === "leave" ? null : point;
    if (kind === "move" || kind === "leave") {
      if (this.tool !== "pan") this.viewer.redraw();
      return false;
    }
    const handlers = {
      box: () => this.boxPointer(kind, point),
      brush: () => this.strokePointer(kind, point, MARK),
      erase: () => this.strokePointer(kind, point, 0),
      polygon: () => this.polygonPointer(kind, point),
      remove: () => kind === "down" && (this.removeMarkAt(point), true),
    };
    return handlers[this.tool]?.() ?? false;
  }

  boxPointer(kind, point) {
    if (kind === "down") this.draft = { start: point, end: point };
    else if (kind === "drag" && this.draft) this.draft.end = point;
    else if (kind === "up" && this.draft) {
      const { start, end } = this.draft;
      this.draft = null;
      this.addBox(start.x, start.y, end.x, end.y);
    }
    this.viewer.redraw();
    return kind !== "dblclick";
  }

  strokePointer(kind, point, value) {
    if (kind === "down") {
      if (!this.boxes.some((box) => inside(box, point, this.brushRadius))) {
        this.say("Draw a box first (B): corrections count only inside boxes", "error");
        return true;
      }
      this.draft = { operation: this.beginOperation(), last: point };
      this.paintDisc(point, value);
    } else if (kind === "drag" && this.draft?.operation) {
      this.paintSegment(this.draft.last, point, value);
      this.draft.last = point;
    } else if (kind === "up" && this.draft?.operation) {
      this.endOperation(this.draft.operation);
      this.draft = null;
    }
    return kind !== "dblclick";
  }

  polygonPointer(kind, point) {
    if (kind === "dblclick") {
      this.closePolygon();
      return true;
    }
    if (kind !== "down") return kind === "up";
    this.draft ??= { points: [] };
    const first = this.draft.points[0];
    const nearFirst = first && Math.hypot(point.x - first.x, point.y - first.y) * this.viewer.scale < 8;
    if (nearFirst && this.draft.points.length >= 3) this.closePolygon();
    else this.draft.points.push(point);
    this.viewer.redraw();
    return true;
  }

  async addBox(ax, ay, bx, by) {
    const clampX = (value) => Math.min(Math.max(Math.round(value), 0), this.viewer.width);
    const clampY = (value) => Math.min(Math.max(Math.round(value), 0), this.viewer.height);
    let [x0, x1] = [clampX(Math.min(ax, bx)), clampX(Math.max(ax, bx))];
    let [y0, y1] = [clampY(Math.min(ay, by)), clampY(Math.max(ay, by))];
    if (x1 - x0 < MIN_BOX_SIDE || y1 - y0 < MIN_BOX_SIDE) {
      this.say(`A box needs at least ${MIN_BOX_SIDE} px on each side: drag to draw one`, "error");
      return;
    }
    if (x1 - x0 > MAX_BOX_SIDE || y1 - y0 > MAX_BOX_SIDE) {
      this.say(`Boxes are at most ${MAX_BOX_SIDE} px a side; this one was made smaller`);
      x1 = Math.min(x1, x0 + MAX_BOX_SIDE);
      y1 = Math.min(y1, y0 + MAX_BOX_SIDE);
    }
    const box = { x0, y0, x1, y1, data: new Uint8Array((x1 - x0) * (y1 - y0)), loading: true };
    box.canvas = document.createElement("canvas");
    box.canvas.width = x1 - x0;
    box.canvas.height = y1 - y0;
    this.boxes.push(box);
    this.pushUndo({ box });
    this.changed();
    try {
      box.data.set(await this.loadMask(x0, y0, x1, y1));
    } catch (error) {
      this.say(`Could not read the mask in the box: ${error.message}`, "error");
    }
    box.loading = false;
    this.refresh(box, 0, 0, x1 - x0, y1 - y0);
    this.changed();
  }

  beginOperation() {
    return { snapshots: new Map() };
  }

  // Keep a box's pixels before an operation first changes them, for undo.
  touch(operation, box) {
    if (!operation.snapshots.has(box)) operation.snapshots.set(box, box.data.slice());
  }

  endOperation(operation) {
    if (operation.snapshots.size) this.pushUndo(operation);
    this.changed();
  }

  paintSegment(from, to, value) {
    const steps = Math.max(1, Math.ceil(Math.hypot(to.x - from.x, to.y - from.y) / Math.max(1, this.brushRadius / 2)));
    for (let i = 1; i <= steps; i++) {
      const t = i / steps;
      this.paintDisc({ x: from.x + (to.x - from.x) * t, y: from.y + (to.y - from.y) * t }, value);
    }
  }

  paintDisc(centre, value) {
    const radius = this.brushRadius;
    for (const box of this.boxes) {
      if (box.loading || !inside(box, centre, radius)) continue;
      const width = box.x1 - box.x0;
      const x0 = Math.max(box.x0, Math.floor(centre.x - radius));
      const x1 = Math.min(box.x1, Math.ceil(centre.x + radius));
      const y0 = Math.max(box.y0, Math.floor(centre.y - radius));
      const y1 = Math.min(box.y1, Math.ceil(centre.y + radius));
      this.touch(this.draft.operation, box);
      for (let y = y0; y < y1; y++) {
        for (let x = x0; x < x1; x++) {
          if ((x + 0.5 - centre.x) ** 2 + (y + 0.5 - centre.y) ** 2 <= radius * radius) {
            box.data[(y - box.y0) * width + (x - box.x0)] = value;
          }
        }
      }
      this.refresh(box, x0 - box.x0, y0 - box.y0, x1 - box.x0, y1 - box.y0);
    }
  }

  closePolygon() {
    const points = this.draft?.points;
    this.draft = null;
    if (!points || points.length < 3) {
      this.viewer.redraw();
      return;
    }
    const operation = this.beginOperation();
    for (const box of this.boxes) {
      if (!box.loading && fillPolygon(box, points, () => this.touch(operation, box))) {
        this.refresh(box, 0, 0, box.x1 - box.x0, box.y1 - box.y0);
      }
    }
    if (!operation.snapshots.size) this.say("The polygon is outside every box: draw a box first (B)", "error");
    this.endOperation(operation);
  }

  cancelDraft() {
    this.draft = null;
    this.viewer.redraw();
  }

  // Remove the mark under (or nearest within a few screen pixels of) the point.
  removeMarkAt(point) {
    const box = this.boxes.find((candidate) => inside(candidate, point, 0) && !candidate.loading);
    if (!box) {
      this.say("Click a mark inside a box to remove it (draw a box first with B)", "error");
      return;
    }
    const reach = Math.max(2, Math.round(6 / this.viewer.scale));
    const seed = nearestMarkPixel(box, Math.floor(point.x), Math.floor(point.y), reach);
    if (!seed) {
      this.say("No mark there");
      return;
    }
    const operation = this.beginOperation();
    this.touch(operation, box);
    floodErase(box, seed.x, seed.y);
    this.refresh(box, 0, 0, box.x1 - box.x0, box.y1 - box.y0);
    this.endOperation(operation);
  }

  // A new step; it ends what redo could bring back.
  pushUndo(step) {
    this.undoStack.push(step);
    if (this.undoStack.length > UNDO_DEPTH) this.undoStack.shift();
    this.redoStack = [];
  }

  undo() {
    this.step(this.undoStack, this.redoStack, "Nothing to undo");
  }

  redo() {
    this.step(this.redoStack, this.undoStack, "Nothing to redo");
  }

  // Take a step off one stack, reverse it, and put its reverse on the other.
  step(from, to, nothing) {
    const step = from.pop();
    if (!step) {
      this.say(nothing);
      return;
    }
    to.push(this.reverse(step));
    this.changed();
  }

  // Apply a step backwards and return the step that undoes that.
  reverse(step) {
    if (step.box) {
      const index = this.boxes.indexOf(step.box);
      if (index >= 0) {
        this.boxes.splice(index, 1);
        return { restoreBox: step.box, index };
      }
      return step;
    }
    if (step.restoreBox) {
      this.boxes.splice(Math.min(step.index, this.boxes.length), 0, step.restoreBox);
      return { box: step.restoreBox };
    }
    if (step.boxesBefore) {
      const current = this.boxes;
      this.boxes = step.boxesBefore;
      return { boxesBefore: current };
    }
    const swapped = new Map();
    for (const [box, data] of step.snapshots) {
      swapped.set(box, box.data.slice());
      box.data.set(data);
      this.refresh(box, 0, 0, box.x1 - box.x0, box.y1 - box.y0);
    }
    return { snapshots: swapped };
  }

  // Remove every box, as one step that can be undone.
  clear() {
    this.draft = null;
    if (this.boxes.length) this.pushUndo({ boxesBefore: this.boxes });
    this.boxes = [];
    this.changed();
  }

  // Boxes from a saved draft ([{ x0, y0, x1, y1, data }]); the history starts afresh.
  restore(boxes) {
    this.boxes = boxes.map(({ x0, y0, x1, y1, data }) => {
      const box = { x0, y0, x1, y1, data, loading: false, canvas: document.createElement("canvas") };
      box.canvas.width = x1 - x0;
      box.canvas.height = y1 - y0;
      this.refresh(box, 0, 0, x1 - x0, y1 - y0);
      return box;
    });
    this.undoStack = [];
    this.redoStack = [];
    this.draft = null;
    this.changed();
  }

  get loading() {
    return this.boxes.some((box) => box.loading);
  }

  changed() {
    this.version++;
    this.viewer.redraw();
    this.onChange(this);
  }

  summary() {
    let marked = 0;
    let area = 0;
    for (const box of this.boxes) {
      area += box.data.length;
      for (const value of box.data) if (value === MARK) marked++;
    }
    return { boxes: this.boxes.length, area, marked };
  }

  // Re-colour part of a box's picture (x0..x1, y0..y1 in the box's pixels).
  refresh(box, x0, y0, x1, y1) {
    if (x1 <= x0 || y1 <= y0) return;
    const width = box.x1 - box.x0;
    const picture = box.canvas.getContext("2d");
    const image = picture.createImageData(x1 - x0, y1 - y0);
    const [r, g, b] = MARK_COLOUR;
    let i = 0;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++, i += 4) {
        const on = box.data[y * width + x] === MARK;
        image.data[i] = r;
        image.data[i + 1] = g;
        image.data[i + 2] = b;
        image.data[i + 3] = on ? 255 : 0;
      }
    }
    picture.putImageData(image, x0, y0);
    this.viewer.redraw();
  }

  draw(ctx, viewer) {
    for (const [index, box] of this.boxes.entries()) drawBox(ctx, viewer, box, index, this.opacity);
    if (this.draft?.start) {
      const { start, end } = this.draft;
      drawRect(ctx, viewer, Math.min(start.x, end.x), Math.min(start.y, end.y), Math.max(start.x, end.x), Math.max(start.y, end.y), "#ffffff");
    }
    if (this.draft?.points) drawPolygonDraft(ctx, viewer, this.draft.points, this.cursor);
    if (this.cursor && (this.tool === "brush" || this.tool === "erase")) {
      const at = viewer.imageToScreen(this.cursor.x, this.cursor.y);
      ctx.beginPath();
      ctx.arc(at.x, at.y, Math.max(1, this.brushRadius * viewer.scale), 0, 2 * Math.PI);
      ctx.strokeStyle = this.tool === "erase" ? "#ff6b6b" : BOX_COLOUR;
      ctx.lineWidth = 1.5;
      ctx.stroke();
    }
  }
}

function inside(box, point, margin) {
  return (
    point.x >= box.x0 - margin && point.x < box.x1 + margin &&
    point.y >= box.y0 - margin && point.y < box.y1 + margin
  );
}

// Fill the polygon into the box (even-odd rule, pixel centres); true when a pixel was inside.
function fillPolygon(box, points, beforeFirstChange) {
  const width = box.x1 - box.x0;
  const top = Math.max(box.y0, Math.floor(Math.min(...points.map((p) => p.y))));
  const bottom = Math.min(box.y1, Math.ceil(Math.max(...points.map((p) => p.y))));
  let changed = false;
  for (let y = top; y < bottom; y++) {
    const centre = y + 0.5;
    const crossings = [];
    for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
      const a = points[i];
      const b = points[j];
      if ((a.y > centre) !== (b.y > centre)) {
        crossings.push(a.x + ((centre - a.y) / (b.y - a.y)) * (b.x - a.x));
      }
    }
    crossings.sort((p, q) => p - q);
    for (let k = 0; k + 1 < crossings.length; k += 2) {
      const from = Math.max(box.x0, Math.ceil(crossings[k] - 0.5));
      const to = Math.min(box.x1, Math.ceil(crossings[k + 1] - 0.5));
      if (to <= from) continue;
      if (!changed) beforeFirstChange();
      changed = true;
      box.data.fill(MARK, (y - box.y0) * width + (from - box.x0), (y - box.y0) * width + (to - box.x0));
    }
  }
  return changed;
}

function nearestMarkPixel(box, px, py, reach) {
  const width = box.x1 - box.x0;
  let best = null;
  for (let y = Math.max(box.y0, py - reach); y < Math.min(box.y1, py + reach + 1); y++) {
    for (let x = Math.max(box.x0, px - reach); x < Math.min(box.x1, px + reach + 1); x++) {
      if (box.data[(y - box.y0) * width + (x - box.x0)] !== MARK) continue;
      const distance = Math.hypot(x - px, y - py);
      if (!best || distance < best.distance) best = { x, y, distance };
    }
  }
  return best;
}

// Set the 8-connected mark component through (x, y) to background.
function floodErase(box, x, y) {
  const width = box.x1 - box.x0;
  const height = box.y1 - box.y0;
  const stack = [(y - box.y0) * width + (x - box.x0)];
  box.data[stack[0]] = 0;
  while (stack.length) {
    const index = stack.pop();
    const cx = index % width;
    const cy = (index - cx) / width;
    for (let dy = -1; dy <= 1; dy++) {
      for (let dx = -1; dx <= 1; dx++) {
        const nx = cx + dx;
        const ny = cy + dy;
        if (nx < 0 || ny < 0 || nx >= width || ny >= height) continue;
        const next = ny * width + nx;
        if (box.data[next] === MARK) {
          box.data[next] = 0;
          stack.push(next);
        }
      }
    }
  }
}

function drawBox(ctx, viewer, box, index, opacity) {
  const a = viewer.imageToScreen(box.x0, box.y0);
  const b = viewer.imageToScreen(box.x1, box.y1);
  ctx.save();
  ctx.globalAlpha = opacity;
  ctx.imageSmoothingEnabled = viewer.scale < 2;
  ctx.drawImage(box.canvas, a.x, a.y, b.x - a.x, b.y - a.y);
  ctx.restore();
  drawRect(ctx, viewer, box.x0, box.y0, box.x1, box.y1, BOX_COLOUR);
  ctx.fillStyle = BOX_COLOUR;
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillText(box.loading ? `box ${index + 1} (loading…)` : `box ${index + 1}`, a.x + 3, a.y - 4);
}

function drawRect(ctx, viewer, x0, y0, x1, y1, colour) {
  const a = viewer.imageToScreen(x0, y0);
  const b = viewer.imageToScreen(x1, y1);
  ctx.save();
  ctx.setLineDash([6, 4]);
  ctx.lineWidth = 1.5;
  ctx.strokeStyle = colour;
  ctx.strokeRect(a.x, a.y, b.x - a.x, b.y - a.y);
  ctx.restore();
}

function drawPolygonDraft(ctx, viewer, points, cursor) {
  const screen = [...points, ...(cursor ? [cursor] : [])].map((p) => viewer.imageToScreen(p.x, p.y));
  ctx.save();
  ctx.strokeStyle = BOX_COLOUR;
  ctx.fillStyle = "rgba(124, 252, 0, 0.25)";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  screen.forEach((p, i) => (i ? ctx.lineTo(p.x, p.y) : ctx.moveTo(p.x, p.y)));
  ctx.closePath();
  ctx.fill();
  ctx.stroke();
  for (const p of screen.slice(0, points.length)) ctx.fillRect(p.x - 2, p.y - 2, 4, 4);
  ctx.restore();
}
