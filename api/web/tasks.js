// The front page: upload slides (drag and drop or a file picker) with the grid and a model, and
// the task list with live status and progress, errors in words, open and delete.

import { apiJson, uploadFile } from "./api.js";
import { el, formatTime, poll, rememberSlideName, say, shortId, slideName } from "./ui.js";

const BUSY_POLL_MS = 1500;
const IDLE_POLL_MS = 10000;
const LIST_SIZE = 100;
const ACCEPTED = /\.(png|tiff?|jpe?g)$/i;

export function showTasks(root) {
  root.append(document.getElementById("tasks-template").content.cloneNode(true));
  const files = [];
  const stopModels = poll(() => loadModels(root.querySelector("#model")), () => 15000);
  let busy = false;
  const refresh = async () => {
    busy = await renderTasks(root.querySelector("#task-list"), refresh);
  };
  const stopTasks = poll(refresh, () => (busy ? BUSY_POLL_MS : IDLE_POLL_MS));
  setUpFilePicking(root, files);
  root.querySelector("#upload-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    await uploadAll(root, files, refresh);
  });
  return () => {
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

function uploadQuery(root) {
  const rows = root.querySelector("#rows").value.trim();
  const cols = root.querySelector("#cols").value.trim();
  if (Boolean(rows) !== Boolean(cols)) {
    throw new Error("give both rows and columns of the grid, or neither");
  }
  const query = new URLSearchParams();
  if (rows) {
    query.set("rows", rows);
    query.set("cols", cols);
  }
  const model = root.querySelector("#model").value;
  if (model && model !== "default") query.set("model", model);
  return query;
}

async function uploadAll(root, files, refresh) {
  let query;
  try {
    query = uploadQuery(root);
  } catch (error) {
    say(error.message, "error");
    return;
  }
  const list = root.querySelector("#uploads");
  const button = root.querySelector("#upload-button");
  button.disabled = true;
  for (const file of files.splice(0)) {
    const progress = el("progress", { max: 1, value: 0, "aria-label": `Upload of ${file.name}` });
    const note = el("span", { class: "note" }, "uploading…");
    list.prepend(el("li", {}, el("strong", {}, file.name), " ", progress, " ", note));
    try {
      const task = await uploadFile(`/tasks?${query}`, file, (share) => (progress.value = share));
      rememberSlideName(task.id, file.name);
      progress.value = 1;
      note.textContent = `queued as task ${shortId(task.id)}`;
      await refresh();
    } catch (error) {
      note.textContent = error.message;
      note.classList.add("error");
    }
  }
  root.querySelector("#chosen-files").textContent = "";
  root.querySelector("#file-input").value = "";
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

// Draw the list; true while a task is not over (the list then polls faster).
async function renderTasks(tbody, refresh) {
  const page = await apiJson(`/tasks?limit=${LIST_SIZE}`);
  tbody.replaceChildren(...page.data.map((task) => taskRow(task, refresh)));
  document.getElementById("tasks-empty").hidden = page.data.length > 0;
  return page.data.some((task) => task.status === "QUEUED" || task.status === "RUNNING");
}

function taskRow(task, refresh) {
  const name = slideName(task.id) || `task ${shortId(task.id)}`;
  const { rows, cols, model } = task.parameters;
  const size = `${task.image.width} × ${task.image.height} px`;
  return el(
    "tr",
    { dataset: { taskId: task.id, status: task.status } },
    el("td", {}, el("a", { href: `#/tasks/${task.id}` }, name), el("div", { class: "note" }, size)),
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
