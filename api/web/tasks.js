// The front page: upload slides (drag and drop or a file picker) with the grid and a model, and
// the task list with live status and progress, errors in words, open and delete. Uploads go on
// while the person looks at a task; closing or reloading the page while one is sent asks first.

import { apiJson, uploadFile } from "./api.js";
import { changesText } from "./compare.js";
import { isStrongWarning } from "./results.js";
import { el, formatTime, guardLeaving, poll, rememberSlideName, say, shortId, slideName, taskName } from "./ui.js";

const BUSY_POLL_MS = 1000;
const IDLE_POLL_MS = 10000;
const LIST_SIZE = 100;
const ACCEPTED = /\.(png|tiff?|jpe?g)$/i;
const MAX_SIDE = 10000;

// Every upload of this page's life, so the list is there again when the person comes back.
const uploads = []; // { name, share, state: "sending" | "queued" | "failed", note }
let showUploads = () => {};
guardLeaving(() => {
  const sending = uploads.filter((upload) => upload.state === "sending").length;
  if (!sending) return null;
  return `${sending} slide${sending > 1 ? "s are" : " is"} still being uploaded; leaving the page stops ${sending > 1 ? "them" : "it"}.`;
});

export function showTasks(root) {
  root.append(document.getElementById("tasks-template").content.cloneNode(true));
  const files = [];
  const stopModels = poll(() => loadModels(root.querySelector("#model")), () => 15000);
  const list = { busy: false, pending: new Map() }; // pending: rows shown before the API lists them
  const refresh = async () => {
    list.busy = await renderTasks(root.querySelector("#task-list"), list, refresh);
  };
  const stopTasks = poll(refresh, () => (list.busy ? BUSY_POLL_MS : IDLE_POLL_MS));
  list.poke = stopTasks.soon;
  setUpFilePicking(root, files);
  setUpGridFields(root);
  showUploads = () => renderUploads(root.querySelector("#uploads"));
  showUploads();
  root.querySelector("#upload-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    await uploadAll(root, files, list);
  });
  return () => {
    showUploads = () => {};
    stopModels();
    stopTasks();
  };
}

function setUpFilePicking(root, files) {
  const zone = root.querySelector("#drop-zone");
  const input = root.querySelector("#file-input");
  const chosen = root.querySelector("#chosen-files");
  const take = (list) => {
    const picked = [...list].filter((file) => ACCEPTED.test(file.name));
    const refused = list.length - picked.length;
    files.splice(0, files.length, ...picked);
    chosen.textContent = picked.length
      ? `${picked.length} slide${picked.length > 1 ? "s" : ""}: ${picked.map((f) => f.name).join(", ")}`
      : "No slide chosen.";
    if (refused) say(`${refused} file(s) skipped: only PNG, TIFF and JPEG slides are taken`, "error");
    root.querySelector("#upload-button").disabled = !picked.length;
  };
  input.addEventListener("change", () => take(input.files));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    take(event.dataTransfer.files);
  });
}

// What is wrong with the grid fields, in words that say what to type: { field, message } or null.
// `finished`: the person is done typing (left the field or pressed Upload), so a missing
// partner counts too.
export function gridProblem(rowsText, colsText, finished = true) {
  const fields = [
    ["rows", "Rows", rowsText.trim()],
    ["cols", "Columns", colsText.trim()],
  ];
  for (const [field, label, text] of fields) {
    if (text && !/^\d+$/.test(text)) {
      return { field, message: `${label}: “${text}” is not a whole number. Type the grid's number of ${label.toLowerCase()} in digits, e.g. 30, or leave both fields empty.` };
    }
    if (text && (Number(text) < 1 || Number(text) > MAX_SIDE)) {
      return { field, message: `${label}: type a number from 1 to ${MAX_SIDE.toLocaleString()}.` };
    }
  }
  const [rows, cols] = fields.map(([, , text]) => text);
  if (finished && Boolean(rows) !== Boolean(cols)) {
    const [field, label, other] = rows ? ["cols", "Columns", "Rows"] : ["rows", "Rows", "Columns"];
    return { field, message: `${label}: type the grid's number of ${label.toLowerCase()} too (ids need both), or clear ${other} to only segment.` };
  }
  return null;
}

function setUpGridFields(root) {
  const check = (finished) => showGridProblem(root, finished);
  for (const id of ["#rows", "#cols"]) {
    root.querySelector(id).addEventListener("input", () => check(false));
    root.querySelector(id).addEventListener("change", () => check(true));
  }
}

function showGridProblem(root, finished) {
  const rows = root.querySelector("#rows");
  const cols = root.querySelector("#cols");
  const problem = gridProblem(rows.value, cols.value, finished);
  for (const input of [rows, cols]) input.setAttribute("aria-invalid", String(problem?.field === input.id));
  const message = root.querySelector("#grid-error");
  message.textContent = problem?.message || "";
  message.hidden = !problem;
  return problem;
}

function uploadQuery(root) {
  const rows = root.querySelector("#rows").value.trim();
  const cols = root.querySelector("#cols").value.trim();
  const query = new URLSearchParams();
  if (rows) {
    query.set("rows", rows);
    query.set("cols", cols);
  }
  const model = root.querySelector("#model").value;
  if (model && model !== "default") query.set("model", model);
  return query;
}

async function uploadAll(root, files, list) {
  const problem = showGridProblem(root, true);
  if (problem) {
    root.querySelector(`#${problem.field}`).focus();
    return;
  }
  const query = uploadQuery(root);
  const button = root.querySelector("#upload-button");
  button.disabled = true;
  const batch = files.splice(0).map((file) => ({ file, name: file.name, share: 0, state: "sending", note: "waiting…" }));
  uploads.unshift(...[...batch].reverse()); // newest first
  showUploads();
  root.querySelector("#chosen-files").textContent = "";
  root.querySelector("#file-input").value = "";
  for (const upload of batch) {
    upload.note = "uploading…";
    showUploads();
    try {
      const created = await uploadFile(`/tasks?${query}`, upload.file, (share) => {
        upload.share = share;
        showUploads();
      });
      rememberSlideName(created.id, upload.name);
      Object.assign(upload, { share: 1, state: "queued", note: `queued as task ${shortId(created.id)}` });
      list.pending.set(created.id, provisionalTask(created, upload.name, query));
      list.draw?.(); // in the list at once; the next poll, within a second, brings its state
      list.busy = true;
      list.poke();
    } catch (error) {
      Object.assign(upload, { state: "failed", note: error.message });
    }
    delete upload.file;
    showUploads();
  }
}

// The row of a task the API has just created, until the list from the API has it.
function provisionalTask(created, name, query) {
  const rows = query.get("rows");
  return {
    id: created.id,
    name,
    status: created.status,
    progress: 0,
    stage: null,
    error: null,
    created_at: new Date().toISOString(),
    parameters: { rows: rows ? Number(rows) : null, cols: rows ? Number(query.get("cols")) : null, model: query.get("model") },
    image: null,
  };
}

function renderUploads(ul) {
  if (!ul) return;
  ul.replaceChildren(
    ...uploads.map((upload) =>
      el(
        "li",
        { dataset: { state: upload.state } },
        el("strong", {}, upload.name),
        " ",
        el("progress", { max: 1, value: upload.share, "aria-label": `Upload of ${upload.name}` }),
        " ",
        el("span", { class: upload.state === "failed" ? "error" : "note" }, upload.note),
      ),
    ),
  );
}

async function loadModels(select) {
  const page = await apiJson("/models?limit=200");
  const finished = page.data.filter((model) => model.status === "FINISHED");
  const ids = finished.map((model) => model.id).join();
  if (select.dataset.models === ids) return; // unchanged: leave an open list alone
  select.dataset.models = ids;
  const current = select.value;
  select.replaceChildren(el("option", { value: "default" }, "default (shipped)"));
  for (const model of finished) {
    const source = model.parameters.source_task;
    const from = source ? slideName(source) || `task ${shortId(source)}` : "";
    const label = `fine-tuned ${shortId(model.id)}${from ? ` · ${from}` : ""}`;
    select.append(el("option", { value: model.id }, label));
  }
  select.value = [...select.options].some((o) => o.value === current) ? current : "default";
}

// Draw the list, with the rows just created that the API does not list yet on top; true while
// a task is not over (the list then polls faster).
async function renderTasks(tbody, list, refresh) {
  const page = await apiJson(`/tasks?limit=${LIST_SIZE}`);
  for (const task of page.data) list.pending.delete(task.id);
  list.draw = () => {
    if (!tbody.isConnected) return;
    const tasks = [...list.pending.values(), ...page.data];
    tbody.replaceChildren(...tasks.map((task) => taskRow(task, refresh)));
    document.getElementById("tasks-empty").hidden = tasks.length > 0;
  };
  list.draw();
  return [...list.pending.values(), ...page.data].some((task) => task.status === "QUEUED" || task.status === "RUNNING");
}

function taskRow(task, refresh) {
  const name = taskName(task);
  const { rows, cols, model } = task.parameters;
  const size = task.image ? `${task.image.width} × ${task.image.height} px` : "";
  return el(
    "tr",
    { dataset: { taskId: task.id, status: task.status } },
    el("td", {}, el("a", { href: `#/tasks/${task.id}` }, name), el("div", { class: "note" }, size), resultNotes(task)),
    el("td", {}, statusCell(task)),
    el("td", {}, rows ? `${rows} × ${cols}` : "none"),
    el("td", {}, model && model !== "default" ? shortId(model) : "default"),
    el("td", {}, formatTime(task.created_at)),
    el(
      "td",
      { class: "actions" },
      el("a", { class: "button", href: `#/tasks/${task.id}` }, "Open"),
      el("button", { type: "button", onclick: () => deleteTask(task, name, refresh) }, "Delete"),
    ),
  );
}

// What a finished task's row says of its result: what changed since the task it was re-run
// from, and its warnings (the ones that question the grid first).
function resultNotes(task) {
  const notes = [];
  if (task.source_task) {
    const how = task.kind === "register" ? "numbered again (same mask) from" : "segmented again from";
    notes.push(el("div", { class: "note" }, `${how} `, el("a", { href: `#/tasks/${task.source_task}` }, `task ${shortId(task.source_task)}`)));
  }
  const changes = task.summary?.changes;
  if (changes) notes.push(el("div", { class: "note" }, `vs. earlier: ${changesText(changes)}`));
  const warnings = task.warnings || [];
  const strong = warnings.find(isStrongWarning);
  if (warnings.length) {
    const text = strong || `${warnings.length} warning${warnings.length > 1 ? "s" : ""}`;
    notes.push(el("div", { class: strong ? "task-warning strong" : "task-warning" }, `⚠ ${text}`));
  }
  return notes;
}

export function statusCell(task) {
  const badge = el("span", { class: `badge ${task.status.toLowerCase()}` }, task.status);
  const parts = [badge];
  if (task.status === "RUNNING" || task.status === "QUEUED") {
    const percent = Math.round(task.progress * 100);
    parts.push(
      " ",
      el("progress", { max: 1, value: task.progress, "aria-label": `${percent} %` }),
      el("span", { class: "note" }, ` ${percent} % ${task.stage || ""}`),
    );
  }
  if (task.error) parts.push(el("div", { class: "error" }, task.error));
  return parts;
}

async function deleteTask(task, name, refresh) {
  if (!confirm(`Delete ${name} and all its results?`)) return;
  try {
    await apiJson(`/tasks/${task.id}`, { method: "DELETE" });
    say(`${name} deleted`);
  } catch (error) {
    say(error.message, "error");
  }
  await refresh();
}
