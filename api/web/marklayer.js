// The registered marks over the image: ids on hover (and on the marks when zoomed in), missing
// grid nodes and objects without an id highlighted, from `GET /tasks/{id}/marks`.

const BUCKET = 256; // image pixels per side of a spatial-index cell
const MISSING_COLOUR = "#ff3b30";
const EXTRA_COLOUR = "#ff2dd4";
const HOVER_COLOUR = "#ffffff";
const MIN_ID_SPACING = 28; // CSS pixels between marks before ids are written on them

// Items with a box, found by point or by rectangle without scanning them all.
class SpatialIndex {
  constructor() {
    this.cells = new Map();
  }

  add(item, [x0, y0, x1, y1]) {
    for (let by = Math.floor(y0 / BUCKET); by <= Math.floor((y1 - 1) / BUCKET); by++) {
      for (let bx = Math.floor(x0 / BUCKET); bx <= Math.floor((x1 - 1) / BUCKET); bx++) {
        const key = `${bx},${by}`;
        if (!this.cells.has(key)) this.cells.set(key, []);
        this.cells.get(key).push(item);
      }
    }
  }

  inRect(x0, y0, x1, y1) {
    const found = new Set();
    for (let by = Math.floor(y0 / BUCKET); by <= Math.floor(y1 / BUCKET); by++) {
      for (let bx = Math.floor(x0 / BUCKET); bx <= Math.floor(x1 / BUCKET); bx++) {
        for (const item of this.cells.get(`${bx},${by}`) || []) found.add(item);
      }
    }
    return found;
  }
}

export class MarkLayer {
  constructor(record, qc) {
    this.record = record;
    this.pitch = qc?.pitch_px ? Math.min(...qc.pitch_px) : estimatePitch(record.marks);
    this.showProblems = true;
    this.showIds = false;
    this.hovered = null;
    this.index = new SpatialIndex();
    for (const mark of record.marks) this.index.add({ kind: "mark", ...mark }, mark.bbox);
    const reach = this.pitch * 0.3;
    for (const node of record.missing) {
      if (node.x === null) continue;
      const box = [node.x - reach, node.y - reach, node.x + reach, node.y + reach];
      this.index.add({ kind: "missing", bbox: box, ...node }, box);
    }
    for (const extra of record.extra) this.index.add({ kind: "extra", ...extra }, extra.bbox);
  }

  // What is under an image point: a mark, a missing node or an object without an id.
  itemAt(point) {
    let best = null;
    for (const item of this.index.inRect(point.x, point.y, point.x, point.y)) {
      const [x0, y0, x1, y1] = item.bbox;
      if (point.x < x0 || point.x >= x1 || point.y < y0 || point.y >= y1) continue;
      const distance = Math.hypot(point.x - item.x, point.y - item.y);
      if (!best || distance < best.distance) best = { item, distance };
    }
    return best?.item ?? null;
  }

  draw(ctx, viewer) {
    const topLeft = viewer.screenToImage(0, 0);
    const bottomRight = viewer.screenToImage(viewer.viewWidth, viewer.viewHeight);
    const visible = this.index.inRect(topLeft.x, topLeft.y, bottomRight.x, bottomRight.y);
    ctx.save();
    ctx.lineWidth = 2;
    if (this.showProblems) {
      const items = [...visible];
      drawMissing(ctx, viewer, items.filter((item) => item.kind === "missing"), this.pitch);
      const extra = items.filter((item) => item.kind === "extra").map((item) => item.bbox);
      drawBoxesAround(ctx, viewer, extra, EXTRA_COLOUR, 3);
    }
    if (this.showIds && this.pitch * viewer.scale >= MIN_ID_SPACING) {
      drawIds(ctx, viewer, [...visible].filter((item) => item.kind === "mark"));
    }
    if (this.hovered) drawBoxesAround(ctx, viewer, [this.hovered.bbox], HOVER_COLOUR, 2);
    ctx.restore();
  }
}

export function describe(item) {
  if (item.kind === "mark") {
    return `Mark ${item.id} · row ${item.row}, column ${item.col} · ${item.area} px`;
  }
  if (item.kind === "missing" && item.inside === false) {
    return `Missing mark ${item.id} · row ${item.row}, column ${item.col}: this node lies outside the image (the grid given is larger than the image shows)`;
  }
  if (item.kind === "missing") {
    return `Missing mark ${item.id} · row ${item.row}, column ${item.col}: no mark found at this node`;
  }
  return `Object without an id · about ${item.area} px (not on the grid, or a second object at a node)`;
}

function estimatePitch(marks) {
  if (marks.length < 2) return 50;
  const sizes = marks.map((m) => Math.max(m.bbox[2] - m.bbox[0], m.bbox[3] - m.bbox[1]));
  sizes.sort((a, b) => a - b);
  return sizes[Math.floor(sizes.length / 2)] * 2;
}

// One path for each kind, so thousands of nodes still draw within a frame. Nodes off the image
// (a grid larger than the image shows) are dashed: nothing could be found there.
function drawMissing(ctx, viewer, nodes, pitch) {
  const outside = nodes.filter((node) => node.inside === false);
  drawMissingPath(ctx, viewer, nodes.filter((node) => node.inside !== false), pitch);
  ctx.setLineDash([4, 4]);
  drawMissingPath(ctx, viewer, outside, pitch);
  ctx.setLineDash([]);
}

function drawMissingPath(ctx, viewer, nodes, pitch) {
  if (!nodes.length) return;
  const radius = Math.max(5, pitch * 0.3 * viewer.scale);
  ctx.strokeStyle = MISSING_COLOUR;
  ctx.beginPath();
  for (const node of nodes) {
    const at = viewer.imageToScreen(node.x, node.y);
    ctx.moveTo(at.x + radius, at.y);
    ctx.arc(at.x, at.y, radius, 0, 2 * Math.PI);
    ctx.moveTo(at.x - radius * 0.6, at.y - radius * 0.6);
    ctx.lineTo(at.x + radius * 0.6, at.y + radius * 0.6);
  }
  ctx.stroke();
}

function drawBoxesAround(ctx, viewer, boxes, colour, margin) {
  ctx.strokeStyle = colour;
  ctx.beginPath();
  for (const [x0, y0, x1, y1] of boxes) {
    const a = viewer.imageToScreen(x0, y0);
    const b = viewer.imageToScreen(x1, y1);
    ctx.rect(a.x - margin, a.y - margin, b.x - a.x + 2 * margin, b.y - a.y + 2 * margin);
  }
  ctx.stroke();
}

function drawIds(ctx, viewer, marks) {
  ctx.font = "600 12px system-ui, sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.lineWidth = 3;
  ctx.strokeStyle = "rgba(0, 0, 0, 0.75)";
  ctx.fillStyle = "#ffffff";
  for (const mark of marks) {
    const at = viewer.imageToScreen(mark.x, mark.y);
    ctx.strokeText(String(mark.id), at.x, at.y);
    ctx.fillText(String(mark.id), at.x, at.y);
  }
}
