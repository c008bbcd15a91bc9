// Fine-tuning from the viewer: send the corrections (or nothing: the grid then labels the
// slide) to `POST /models`, follow the job, then segment the slide again with the new model
// (`POST /tasks/{id}/rerun?model=`) and offer the new result, which shows what changed. The
// corrections stay (saved, marked as sent) in case the person wants to correct more.

import { apiJson } from "./api.js";
import { changesText } from "./compare.js";
import { finetuneFigures } from "./figures.js";
import { encodeLabels } from "./labelspng.js";
import { el, rememberSlideName, say, shortId } from "./ui.js";

const POLL_MS = 1500;

export function setUpFinetune(page) {
  const { find } = page;
  find("#finetune-labels").addEventListener("click", () => run(page, "labels"));
  find("#finetune-grid").addEventListener("click", () => run(page, "grid"));
}

async function run(page, mode) {
  const { find, editor, task } = page;
  const minutes = find("#minutes");
  if (!minutes.reportValidity()) return;
  setRunning(page, true);
  const job = find("#job");
  job.replaceChildren();
  try {
    const query = new URLSearchParams({ task: page.taskId, minutes: minutes.value });
    const options = { method: "POST" };
    if (mode === "labels") {
      jobLine(job, "labels", "Building the labels image…");
      const { width, height } = task.image;
      options.body = await encodeLabels(width, height, editor.boxes);
      options.headers = { "Content-Type": "image/png" };
    }
    const model = await apiJson(`/models?${query}`, options);
    if (mode === "labels") {
      jobLine(job, "labels", `Labels sent: ${summaryOfBoxes(editor)}. They stay here, marked as sent.`);
      page.drafts.markSent(model.id);
    }
    const trained = await follow(page, `/models/${model.id}`, job, "model", "Fine-tune");
    if (trained?.status !== "FINISHED") return;
    const rerun = await apiJson(`/tasks/${page.taskId}/rerun?model=${model.id}`, { method: "POST" });
    rememberSlideName(rerun.id, `${page.name} · model ${shortId(model.id)}`); // if the API keeps no name
    const segmented = await follow(page, `/tasks/${rerun.id}`, job, "rerun", "Segmenting again with the new model");
    if (segmented?.status === "FINISHED") {
      jobLine(job, "result", "", el("a", { href: `#/tasks/${rerun.id}`, class: "button primary" }, "Open the new result"));
      say("The slide was segmented again with the fine-tuned model");
    }
  } catch (error) {
    jobLine(job, "error", "").append(el("span", { class: "error" }, error.message));
    say(error.message, "error");
  } finally {
    setRunning(page, false);
  }
}

function setRunning(page, running) {
  page.jobRunning = running;
  page.find("#finetune-grid").disabled = running || !page.task.parameters.rows || page.task.status !== "FINISHED";
  page.find("#finetune-labels").disabled = running || !page.editor.boxes.length || page.task.status !== "FINISHED";
}

// A line of the job panel, found again by its name.
function jobLine(job, name, text, ...extra) {
  let line = job.querySelector(`[data-line="${name}"]`);
  if (!line) {
    line = el("div", { class: "job-line", dataset: { line: name } });
    job.append(line);
  }
  line.replaceChildren(text, ...extra);
  line.scrollIntoView({ block: "nearest" });
  return line;
}

// Poll a task or model until it is over, showing its progress; its last state (or null when
// the page was left).
async function follow(page, path, job, name, title) {
  for (;;) {
    if (page.closed) return null;
    const state = await apiJson(path);
    const percent = Math.round(state.progress * 100);
    const line = jobLine(job, name, `${title}: `, el("span", { class: `badge ${state.status.toLowerCase()}` }, state.status));
    line.dataset.status = state.status;
    if (state.status === "FINISHED" || state.status === "FAILED") {
      if (state.error) line.append(el("div", { class: "error" }, state.error));
      const words = state.summary ? finetuneFigures(state.summary) : "";
      if (words) line.append(el("div", { class: "note" }, `${words[0].toUpperCase()}${words.slice(1)}.`));
      if (state.summary?.changes) line.append(el("div", { class: "note" }, `What changed: ${changesText(state.summary.changes)}.`));
      return state;
    }
    line.append(" ", el("progress", { max: 1, value: state.progress, "aria-label": `${title}: ${percent} %` }), ` ${percent} % ${state.stage || ""}`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function summaryOfBoxes(editor) {
  const { boxes, area, marked } = editor.summary();
  return `${boxes} box${boxes > 1 ? "es" : ""}, ${area.toLocaleString()} px, ${marked.toLocaleString()} px of marks`;
}
