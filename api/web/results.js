// The viewer's panel of results: the QC facts (or, without a grid, the marks found), the
// warnings with the ones that question the grid itself set apart, and the downloads, named
// after the slide.

import { download } from "./api.js";
import { downloadStem, el, say } from "./ui.js";

// Warnings that say the grid or the result may be wrong as a whole, not just imperfect: shown
// first and marked. The registration words them as questions or as whole rows/columns missing.
const STRONG = [/\?/, /\bno marks?\b/i, /\bare (the )?rows\b/i, /\brows\/cols\b/i, /\bspan only\b/i, /\bonly \d+ of \d+\b/i, /\bambiguous\b/i];

export function isStrongWarning(text) {
  return STRONG.some((pattern) => pattern.test(text));
}

// The warnings as list items, strong ones first; [] when there are none.
export function warningItems(warnings) {
  const strong = warnings.filter(isStrongWarning);
  const other = warnings.filter((warning) => !isStrongWarning(warning));
  return [
    ...strong.map((warning) => el("li", { class: "strong" }, el("span", { "aria-hidden": "true" }, "⚠ "), warning)),
    ...other.map((warning) => el("li", {}, warning)),
  ];
}

export function renderWarnings(page, warnings) {
  const items = warningItems(warnings);
  page.find("#qc-warnings").replaceChildren(...items);
  const strong = warnings.filter(isStrongWarning);
  const banner = page.find("#task-warning");
  banner.hidden = !strong.length;
  const more = strong.length > 1 ? ` (and ${strong.length - 1} more under Quality)` : "";
  banner.replaceChildren(...(strong.length ? [el("strong", {}, "Check the grid: "), strong[0], more] : []));
}

// The counts are qc.json's, the same the task's summary and its warnings give (one meaning
// each: found = marks with an id, missing = grid nodes without one, extra = mark-sized objects
// without an id, small objects = dust). A qc.json from before those keys falls back to the
// marks record, whose extra objects are whatever the mask holds without an id.
export function renderQc(page, qc, record) {
  const share = qc.expected ? Math.round((100 * qc.found) / qc.expected) : 0;
  const missing = qc.missing ?? qc.missing_ids.length;
  const extra = qc.extra ?? record.extra_total;
  // Nodes of the grid given that lie off the image: it is larger than the image shows.
  const offImage = record.missing.filter((node) => node.inside === false).length;
  const facts = [
    ["Marks found", `${qc.found} of ${qc.expected} (${share} %)`],
    ["Missing nodes", `${missing}${offImage ? ` (${offImage} outside the image)` : ""}`],
    ["Extra marks (no id)", `${extra}`],
    ...(qc.small_objects !== undefined ? [["Smaller objects (dust)", `${qc.small_objects}`]] : []),
    ["Pitch", `${qc.pitch_px.map((p) => p.toFixed(1)).join(" × ")} px`],
    ["Rotation", `${qc.angle_deg.toFixed(2)}°`],
    ["Residual", `${qc.residual_rms_px.toFixed(2)} px`],
  ];
  page.find("#qc").replaceChildren(...facts.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
  renderWarnings(page, [...new Set([...(page.task.warnings || []), ...qc.warnings])]);
}

// Without a grid there is no QC, but the number of marks found still says a lot.
export function renderUnregistered(page) {
  const summary = page.task.summary || {};
  const found = summary.found;
  const facts = [el("dt", {}, "Marks found"), el("dd", { dataset: { found: found ?? "" } }, found === undefined ? "—" : found.toLocaleString())];
  if (summary.small_objects !== undefined) {
    facts.push(el("dt", {}, "Smaller objects (dust)"), el("dd", {}, summary.small_objects.toLocaleString()));
  }
  page.find("#qc").replaceChildren(...facts);
  page.find("#qc-note").textContent = "No grid was given, so the marks were not numbered: give rows and columns below to number them.";
  renderWarnings(page, page.task.warnings || []);
}

export function renderDownloads(page) {
  const { task } = page;
  const stem = downloadStem(task);
  const items = [
    ["Mask (PNG, 0/255)", `/masks/${task.id}`, `${stem}_mask.png`],
    ["Overlay (PNG)", task.links.overlay, `${stem}_overlay.png`],
  ];
  if (task.links.labels) {
    items.push(
      ...(task.summary?.expected > 65535
        ? [["Id image (32-bit TIFF)", task.links.labels, `${stem}_labels.tiff`]]
        : [["Id image (16-bit PNG)", task.links.labels, `${stem}_labels.png`],
           ["Id image for napari (TIFF)", task.links.labels_tiff, `${stem}_labels.tiff`]]),
      ["Marks for QuPath (GeoJSON)", task.links.marks_geojson, `${stem}_marks.geojson`],
      ["Mark table (ams.csv)", task.links.ams_csv, `${stem}_ams.csv`],
      ["Marks (JSON)", `/tasks/${task.id}/marks`, `${stem}_marks.json`],
      ["QC (JSON)", task.links.qc, `${stem}_qc.json`],
    );
  }
  if (page.comparison) items.push(["Changes (PNG)", `/tasks/${task.id}/diff.png`, `${stem}_diff.png`]);
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
