// A small canvas viewer for the API's image pyramids: pan and zoom over tiles of several layers
// (image, mask, ...), with hooks that draw on top and receive pointer events in image pixels.
//
// Level 0 is the full-size image, level k is 2^k times smaller. The viewer draws the level whose
// pixels are just finer than the screen's and, where a tile of it is still loading, that part of
// the finest coarser tile it has (the coarsest level is always loaded), so panning and zooming
// never show holes; tiles load a few at a time, coarsest first, then nearest the centre.
//
// A tile that fails for a passing reason (the network, a 5xx, a 409 while the task runs) is
// asked for again later, each time twice as late; one the API refuses for good (another 4xx,
// e.g. the task FAILED and its image cannot be read) stops its whole layer, said once.

const MAX_CACHED_TILES = 600;
const MAX_IN_FLIGHT = 6;
const RETRY_FAILED_MS = 2000;
const RETRY_MAX_MS = 60000;
const PASSING = new Set([0, 408, 409, 425, 429]); // statuses worth asking again (0: no answer)

export class TileViewer {
  constructor(canvas, { width, height, tileSize, levels, fetchTile }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.width = width;
    this.height = height;
    this.tileSize = tileSize;
    this.levels = levels;
    this.maxLevel = levels.length - 1;
    this.fetchTile = fetchTile; // (layer, level, col, row, signal) => Promise<image>
    this.layers = new Map(); // name -> { visible, opacity, clip? }
    this.overlays = []; // (ctx, viewer) => void, in CSS pixels, after the tiles
    this.cache = new Map(); // "layer/level/col_row" -> { image, used }
    this.pending = new Map(); // key -> AbortController
    this.failed = new Map(); // key -> { at, tries }: when to ask again
    this.stopped = new Map(); // layer -> the error that stopped it
    this.queue = [];
    this.scale = 1; // CSS pixels per image pixel
    this.cx = width / 2; // image point at the canvas centre
    this.cy = height / 2;
    this.frame = 0;
    this.tilesDrawn = 0;
    this.onError = () => {}; // (error, layer, final): final when the layer was stopped
    this.onViewChange = () => {};
    this.pointerHandler = null; // (kind, event, point) => true when it used the event
    this.wantsPan = () => true;
    this.installPointer();
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(canvas);
    this.resize();
    this.fit();
  }

  destroy() {
    this.resizeObserver.disconnect();
    for (const controller of this.pending.values()) controller.abort();
    for (const entry of this.cache.values()) entry.image.close?.();
    this.cache.clear();
    if (this.frame) cancelAnimationFrame(this.frame);
  }

  addLayer(name, options = {}) {
    this.layers.set(name, { visible: true, opacity: 1, ...options });
    this.redraw();
  }

  setLayer(name, changes) {
    Object.assign(this.layers.get(name), changes);
    this.redraw();
  }

  get viewWidth() {
    return this.canvas.clientWidth;
  }

  get viewHeight() {
    return this.canvas.clientHeight;
  }

  resize() {
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = Math.max(1, Math.round(this.viewWidth * ratio));
    this.canvas.height = Math.max(1, Math.round(this.viewHeight * ratio));
    this.redraw();
  }

  fit() {
    const scale = Math.min(this.viewWidth / this.width, this.viewHeight / this.height);
    this.scale = (scale > 0 ? scale : 1) * 0.96;
    this.cx = this.width / 2;
    this.cy = this.height / 2;
    this.viewChanged();
  }

  // Centre on an image point, at least at `scale` CSS pixels per image pixel.
  centreOn(x, y, scale = this.scale) {
    this.cx = x;
    this.cy = y;
    this.scale = this.clampScale(scale);
    this.viewChanged();
  }

  clampScale(scale) {
    const fitted = Math.min(this.viewWidth / this.width, this.viewHeight / this.height) || 1;
    return Math.min(Math.max(scale, fitted / 4), 32);
  }

  zoomAt(sx, sy, factor) {
    const point = this.screenToImage(sx, sy);
    this.scale = this.clampScale(this.scale * factor);
    this.cx = point.x - (sx - this.viewWidth / 2) / this.scale;
    this.cy = point.y - (sy - this.viewHeight / 2) / this.scale;
    this.viewChanged();
  }

  panBy(dx, dy) {
    this.cx -= dx / this.scale;
    this.cy -= dy / this.scale;
    this.viewChanged();
  }

  viewChanged() {
    this.onViewChange(this);
    this.redraw();
  }

  screenToImage(sx, sy) {
    return {
      x: (sx - this.viewWidth / 2) / this.scale + this.cx,
      y: (sy - this.viewHeight / 2) / this.scale + this.cy,
    };
  }

  imageToScreen(x, y) {
    return {
      x: (x - this.cx) * this.scale + this.viewWidth / 2,
      y: (y - this.cy) * this.scale + this.viewHeight / 2,
    };
  }

  // The level whose pixels are just finer than the screen's.
  currentLevel() {
    const devicePerImage = this.scale * (window.devicePixelRatio || 1);
    const level = Math.floor(Math.log2(1 / devicePerImage));
    return Math.min(Math.max(level, 0), this.maxLevel);
  }

  redraw() {
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.draw();
      });
    }
  }

  draw() {
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    const level = this.currentLevel();
    ctx.imageSmoothingEnabled = this.scale * (window.devicePixelRatio || 1) < 2;
    const wanted = [];
    this.tilesDrawn = 0;
    for (const [name, layer] of this.layers) {
      if (!layer.visible || layer.opacity <= 0 || this.stopped.has(name)) continue;
      ctx.save();
      ctx.globalAlpha = layer.opacity;
      layer.clip?.(ctx, this);
      this.drawLevel(name, level, wanted);
      wanted.push([name, this.maxLevel, 0, 0]);
      ctx.restore();
    }
    const ratio = window.devicePixelRatio || 1;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    for (const overlay of this.overlays) overlay(ctx, this);
    this.schedule(wanted);
  }

  visibleTiles(level) {
    const span = this.tileSize * 2 ** level;
    const { cols, rows } = this.levels[level];
    const topLeft = this.screenToImage(0, 0);
    const bottomRight = this.screenToImage(this.viewWidth, this.viewHeight);
    const clamp = (value, most) => Math.min(Math.max(value, 0), most);
    return {
      col0: clamp(Math.floor(topLeft.x / span), cols - 1),
      col1: clamp(Math.floor(bottomRight.x / span), cols - 1),
      row0: clamp(Math.floor(topLeft.y / span), rows - 1),
      row1: clamp(Math.floor(bottomRight.y / span), rows - 1),
    };
  }

  // Draw one level's visible tiles; where one is not loaded yet, the part of the finest coarser
  // tile that is (each spot drawn once: overlay layers are translucent). Lists the missing.
  drawLevel(layer, level, wanted) {
    const { col0, col1, row0, row1 } = this.visibleTiles(level);
    const now = performance.now();
    for (let row = row0; row <= row1; row++) {
      for (let col = col0; col <= col1; col++) {
        const entry = this.cache.get(tileKey(layer, level, col, row));
        if (entry) {
          entry.used = now;
          this.drawTile(entry.image, level, col, row);
          this.tilesDrawn++;
        } else {
          wanted.push([layer, level, col, row]);
          this.drawFromCoarser(layer, level, col, row, now);
        }
      }
    }
  }

  drawFromCoarser(layer, level, col, row, now) {
    const span = this.tileSize * 2 ** level;
    const x0 = col * span;
    const y0 = row * span;
    const x1 = Math.min(x0 + span, this.levels[level].width * 2 ** level);
    const y1 = Math.min(y0 + span, this.levels[level].height * 2 ** level);
    for (let coarser = level + 1; coarser <= this.maxLevel; coarser++) {
      const factor = 2 ** coarser;
      const ancestorSpan = this.tileSize * factor;
      const ancestorCol = Math.floor(x0 / ancestorSpan);
      const ancestorRow = Math.floor(y0 / ancestorSpan);
      const entry = this.cache.get(tileKey(layer, coarser, ancestorCol, ancestorRow));
      if (!entry) continue;
      entry.used = now;
      const sx = (x0 - ancestorCol * ancestorSpan) / factor;
      const sy = (y0 - ancestorRow * ancestorSpan) / factor;
      const sw = Math.min((x1 - x0) / factor, entry.image.width - sx);
      const sh = Math.min((y1 - y0) / factor, entry.image.height - sy);
      if (sw <= 0 || sh <= 0) return;
      const [dx0, dy0, dx1, dy1] = this.deviceRect(x0, y0, x0 + sw * factor, y0 + sh * factor);
      this.ctx.drawImage(entry.image, sx, sy, sw, sh, dx0, dy0, dx1 - dx0, dy1 - dy0);
      return;
    }
  }

  // An image rectangle on the canvas, in whole device pixels (so neighbouring tiles meet
  // without seams).
  deviceRect(x0, y0, x1, y1) {
    const ratio = window.devicePixelRatio || 1;
    const a = this.imageToScreen(x0, y0);
    const b = this.imageToScreen(x1, y1);
    return [a.x, a.y, b.x, b.y].map((value) => Math.round(value * ratio));
  }

  drawTile(image, level, col, row) {
    const factor = 2 ** level;
    const left = col * this.tileSize * factor;
    const top = row * this.tileSize * factor;
    const [x0, y0, x1, y1] = this.deviceRect(left, top, left + image.width * factor, top + image.height * factor);
    this.ctx.drawImage(image, x0, y0, x1 - x0, y1 - y0);
  }

  schedule(wanted) {
    const keys = new Set(wanted.map(([layer, level, col, row]) => tileKey(layer, level, col, row)));
    for (const [key, controller] of this.pending) {
      if (!keys.has(key)) {
        controller.abort();
        this.pending.delete(key);
      }
    }
    const now = performance.now();
    const centre = this.screenToImage(this.viewWidth / 2, this.viewHeight / 2);
    const distance = ([, level, col, row]) => {
      const span = this.tileSize * 2 ** level;
      return Math.hypot((col + 0.5) * span - centre.x, (row + 0.5) * span - centre.y) / span;
    };
    const queued = new Set();
    this.queue = wanted
      .filter(([layer, level, col, row]) => {
        const key = tileKey(layer, level, col, row);
        if (this.cache.has(key) || this.pending.has(key) || queued.has(key)) return false;
        queued.add(key);
        return !this.stopped.has(layer) && !(now < (this.failed.get(key)?.at ?? -Infinity));
      })
      .sort((a, b) => b[1] - a[1] || distance(a) - distance(b));
    this.pump();
  }

  pump() {
    while (this.pending.size < MAX_IN_FLIGHT && this.queue.length) {
      const [layer, level, col, row] = this.queue.shift();
      this.load(layer, level, col, row);
    }
  }

  async load(layer, level, col, row) {
    const key = tileKey(layer, level, col, row);
    const controller = new AbortController();
    this.pending.set(key, controller);
    try {
      const image = await this.fetchTile(layer, level, col, row, controller.signal);
      this.cache.set(key, { image, used: performance.now() });
      this.failed.delete(key);
      this.evict();
      this.redraw();
    } catch (error) {
      if (error.name !== "AbortError") this.failedTile(key, layer, error);
    } finally {
      if (this.pending.get(key) === controller) this.pending.delete(key);
      this.pump();
    }
  }

  failedTile(key, layer, error) {
    const refused = error.status !== undefined && !PASSING.has(error.status) && error.status < 500;
    if (error.permanent || refused) {
      if (!this.stopped.has(layer)) {
        this.stopped.set(layer, error);
        this.onError(error, layer, true);
      }
      return;
    }
    const tries = (this.failed.get(key)?.tries ?? 0) + 1;
    const wait = Math.min(RETRY_FAILED_MS * 2 ** (tries - 1), RETRY_MAX_MS);
    this.failed.set(key, { at: performance.now() + wait, tries });
    if (tries === 1) this.onError(error, layer, false);
    setTimeout(() => this.redraw(), wait);
  }

  // Stop asking for a layer's tiles (e.g. the task FAILED: there is nothing more to load).
  stopLayer(layer, error) {
    if (!this.stopped.has(layer)) this.stopped.set(layer, error);
    for (const [key, controller] of this.pending) {
      if (key.startsWith(`${layer}/`)) controller.abort();
    }
    this.redraw();
  }

  evict() {
    if (this.cache.size <= MAX_CACHED_TILES) return;
    const oldest = [...this.cache.entries()].sort((a, b) => a[1].used - b[1].used);
    for (const [key, entry] of oldest.slice(0, this.cache.size - MAX_CACHED_TILES * 0.9)) {
      entry.image.close?.();
      this.cache.delete(key);
    }
  }

  // Drop a layer's tiles (its pixels changed on the server); it may be asked for again.
  forgetLayer(name) {
    this.stopped.delete(name);
    for (const key of this.failed.keys()) if (key.startsWith(`${name}/`)) this.failed.delete(key);
    for (const [key, entry] of this.cache) {
      if (key.startsWith(`${name}/`)) {
        entry.image.close?.();
        this.cache.delete(key);
      }
    }
    this.redraw();
  }

  installPointer() {
    const canvas = this.canvas;
    let drag = null;
    const local = (event) => {
      const box = canvas.getBoundingClientRect();
      return { sx: event.clientX - box.left, sy: event.clientY - box.top };
    };
    const handle = (kind, event) => {
      const { sx, sy } = local(event);
      return this.pointerHandler?.(kind, event, this.screenToImage(sx, sy), { sx, sy });
    };
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      const { sx, sy } = local(event);
      const step = event.deltaMode === 1 ? event.deltaY * 16 : event.deltaY;
      this.zoomAt(sx, sy, Math.exp(-step * 0.0015));
    }, { passive: false });
    canvas.addEventListener("contextmenu", (event) => event.preventDefault());
    canvas.addEventListener("pointerdown", (event) => {
      canvas.focus({ preventScroll: true });
      const panButton = event.button === 1 || event.button === 2;
      if (!panButton && event.button === 0 && !this.wantsPan(event) && handle("down", event)) {
        canvas.setPointerCapture(event.pointerId);
        drag = { tool: true };
        return;
      }
      if (event.button <= 2) {
        canvas.setPointerCapture(event.pointerId);
        drag = { tool: false, ...local(event) };
        canvas.classList.add("panning");
      }
    });
    canvas.addEventListener("pointermove", (event) => {
      if (drag && !drag.tool) {
        const { sx, sy } = local(event);
        this.panBy(sx - drag.sx, sy - drag.sy);
        drag.sx = sx;
        drag.sy = sy;
        return;
      }
      handle(drag ? "drag" : "move", event);
    });
    const end = (event) => {
      if (drag?.tool) handle("up", event);
      drag = null;
      canvas.classList.remove("panning");
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("pointerleave", (event) => {
      if (!drag) handle("leave", event);
    });
    canvas.addEventListener("dblclick", (event) => {
      if (handle("dblclick", event)) return;
      const { sx, sy } = local(event);
      this.zoomAt(sx, sy, 2);
    });
  }
}

function tileKey(layer, level, col, row) {
  return `${layer}/${level}/${col}_${row}`;
}
