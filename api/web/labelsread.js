// Reading a labels PNG back (a saved draft of corrections) into boxes, without a full-size
// canvas: the pixels stream through the browser's inflate (DecompressionStream) one row at a
// time, so a 20000² draft needs memory only for its boxes. The page's own drafts name their
// boxes in a tEXt chunk ("amseg"); a labels image made elsewhere gets one box around each
// connected labelled region (a first pass finds them).

import { NOT_LABELLED } from "./labelspng.js";

const MARK = 255;
export const DRAFT_KEYWORD = "amseg";

// The PNG's chunks: its IHDR fields, its tEXt texts by keyword, its IDAT data.
function readChunks(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const texts = {};
  const idat = [];
  let header = null;
  for (let at = 8; at + 12 <= bytes.length; ) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    if (type === "IHDR") {
      header = { width: view.getUint32(at + 8), height: view.getUint32(at + 12), depth: data[8], colour: data[9], interlace: data[12] };
    } else if (type === "tEXt") {
      const zero = data.indexOf(0);
      texts[new TextDecoder("latin1").decode(data.subarray(0, zero))] = new TextDecoder("latin1").decode(data.subarray(zero + 1));
    } else if (type === "IDAT") {
      idat.push(data);
    }
    at += 12 + length;
  }
  if (!header) throw new Error("the draft is not a PNG");
  if (header.depth !== 8 || header.colour !== 0 || header.interlace !== 0) {
    throw new Error("the draft is not an 8-bit gray, non-interlaced PNG");
  }
  return { header, texts, idat };
}

// Call onRow(y, row) for each row of the 8-bit gray image (row reused between calls).
async function eachRow({ header, idat }, onRow) {
  const { width, height } = header;
  const stride = width + 1;
  const reader = new Blob(idat).stream().pipeThrough(new DecompressionStream("deflate")).getReader();
  let previous = new Uint8Array(width);
  let current = new Uint8Array(width);
  const pending = new Uint8Array(stride);
  let filled = 0;
  let y = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    for (let at = 0; at < value.length && y < height; ) {
      const take = Math.min(stride - filled, value.length - at);
      pending.set(value.subarray(at, at + take), filled);
      filled += take;
      at += take;
      if (filled < stride) continue;
      unfilter(pending[0], pending.subarray(1), previous, current);
      onRow(y++, current);
      [previous, current] = [current, previous];
      filled = 0;
    }
  }
  if (y < height) throw new Error(`the draft ends after ${y} of ${height} rows`);
}

// PNG's five row filters, for one byte per pixel.
function unfilter(filter, raw, up, out) {
  for (let x = 0; x < raw.length; x++) {
    const left = x ? out[x - 1] : 0;
    const above = up[x];
    const corner = x ? up[x - 1] : 0;
    let predicted = 0;
    if (filter === 1) predicted = left;
    else if (filter === 2) predicted = above;
    else if (filter === 3) predicted = (left + above) >> 1;
    else if (filter === 4) predicted = paeth(left, above, corner);
    out[x] = (raw[x] + predicted) & 0xff;
  }
}

function paeth(a, b, c) {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

// The bounding boxes of the 8-connected regions of labelled (not 128) pixels, as [x0, y0, x1, y1].
async function labelledRegions(png) {
  const parent = [];
  const bounds = [];
  const root = (i) => (parent[i] === i ? i : (parent[i] = root(parent[i])));
  let above = [];
  await eachRow(png, (y, row) => {
    const runs = [];
    for (let x = 0; x < row.length; x++) {
      if (row[x] === NOT_LABELLED) continue;
      const start = x;
      while (x < row.length && row[x] !== NOT_LABELLED) x++;
      let region = -1;
      for (const run of above) {
        if (run.x1 < start || run.x0 > x) continue; // touching diagonally counts
        const other = root(run.region);
        if (region < 0) region = other;
        else if (other !== region) parent[other] = region;
      }
      if (region < 0) {
        region = parent.length;
        parent.push(region);
        bounds.push([start, y, x, y + 1]);
      }
      runs.push({ x0: start, x1: x, region });
      const b = bounds[region];
      [b[0], b[2], b[3]] = [Math.min(b[0], start), Math.max(b[2], x), y + 1];
    }
    above = runs;
  });
  const merged = new Map();
  for (let i = 0; i < parent.length; i++) {
    const [x0, y0, x1, y1] = bounds[i];
    const m = merged.get(root(i)) ?? [x0, y0, x1, y1];
    merged.set(root(i), [Math.min(m[0], x0), Math.min(m[1], y0), Math.max(m[2], x1), Math.max(m[3], y1)]);
  }
  return [...merged.values()];
}

// A draft's boxes ({ x0, y0, x1, y1, data } with data 0/255) and what the page kept beside
// them ({ boxes, saved_at, sent }), or throws when the PNG is not a usable draft.
export async function readDraft(blob, width, height) {
  const png = readChunks(new Uint8Array(await blob.arrayBuffer()));
  if (png.header.width !== width || png.header.height !== height) {
    throw new Error(`the draft is ${png.header.width} × ${png.header.height} px, the slide ${width} × ${height} px`);
  }
  let meta = {};
  try {
    meta = JSON.parse(png.texts[DRAFT_KEYWORD] || "{}");
  } catch {
    meta = {}; // not ours: find the boxes from the pixels
  }
  const rects = Array.isArray(meta.boxes) ? meta.boxes : await labelledRegions(png);
  const boxes = rects.map(([x0, y0, x1, y1]) => ({ x0, y0, x1, y1, data: new Uint8Array((x1 - x0) * (y1 - y0)) }));
  await eachRow(png, (y, row) => {
    for (const box of boxes) {
      if (y < box.y0 || y >= box.y1) continue;
      const offset = (y - box.y0) * (box.x1 - box.x0);
      for (let x = box.x0; x < box.x1; x++) box.data[offset + x - box.x0] = row[x] === MARK ? MARK : 0;
    }
  });
  return { boxes, meta };
}
