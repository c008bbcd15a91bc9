// The labels image a fine-tune learns from, encoded in the browser as an 8-bit gray PNG at the
// slide's full size: 128 (not labelled) everywhere but in the boxes, which hold 255 (mark) and
// 0 (background). Rows stream through the browser's own deflate (CompressionStream), so a
// 20000 x 20000 slide needs memory only for its boxes, never a full-size canvas.

export const NOT_LABELLED = 128;
const ROWS_BYTES = 1 << 20; // raw bytes handed to the compressor at a time
const SIGNATURE = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes, crc = 0xffffffff) {
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return crc;
}

function pngChunk(type, data) {
  const chunk = new Uint8Array(12 + data.length);
  const view = new DataView(chunk.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) chunk[4 + i] = type.charCodeAt(i);
  chunk.set(data, 8);
  const crc = crc32(chunk.subarray(4, 8 + data.length)) ^ 0xffffffff;
  view.setUint32(8 + data.length, crc >>> 0);
  return chunk;
}

// A tEXt chunk: a Latin-1 keyword, a zero byte, the text (JSON here, kept to ASCII).
function textChunk(keyword, text) {
  const ascii = text.replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  const bytes = new TextEncoder().encode(`${keyword}\0${ascii}`);
  return pngChunk("tEXt", bytes);
}

// An 8-bit gray PNG whose rows `fillRow(y, row)` writes (row: Uint8Array of `width` bytes);
// `texts` ({ keyword: text }) go in tEXt chunks before the pixels.
export async function encodeGrayPng(width, height, fillRow, texts = {}) {
  const compressor = new CompressionStream("deflate"); // zlib, as PNG's IDAT wants
  const compressed = new Response(compressor.readable).arrayBuffer();
  const writer = compressor.writable.getWriter();
  const stride = width + 1; // a filter byte (0: none) before each row
  const rowsPerWrite = Math.max(1, Math.floor(ROWS_BYTES / stride));
  for (let y = 0; y < height; y += rowsPerWrite) {
    const count = Math.min(rowsPerWrite, height - y);
    const block = new Uint8Array(count * stride);
    for (let i = 0; i < count; i++) fillRow(y + i, block.subarray(i * stride + 1, (i + 1) * stride));
    await writer.write(block);
  }
  await writer.close();
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header.set([8, 0, 0, 0, 0], 8); // 8 bits, gray, deflate, adaptive filters, no interlace
  const parts = [
    SIGNATURE,
    pngChunk("IHDR", header),
    ...Object.entries(texts).map(([keyword, text]) => textChunk(keyword, text)),
    pngChunk("IDAT", new Uint8Array(await compressed)),
    pngChunk("IEND", new Uint8Array(0)),
  ];
  return new Blob(parts, { type: "image/png" });
}

// boxes: [{ x0, y0, x1, y1, data }] with data the box's 0/255 pixels, row by row.
export function encodeLabels(width, height, boxes, texts = {}) {
  return encodeGrayPng(width, height, (y, row) => {
    row.fill(NOT_LABELLED);
    for (const box of boxes) {
      if (y < box.y0 || y >= box.y1) continue;
      const boxWidth = box.x1 - box.x0;
      const start = (y - box.y0) * boxWidth;
      row.set(box.data.subarray(start, start + boxWidth), box.x0);
    }
  }, texts);
}
