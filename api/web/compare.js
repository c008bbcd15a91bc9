// "What changed": a task segmented again (after a fine-tune) is compared by the worker with the
// task it was re-run from (model/compare.py: marks added, removed, grown or shrunk). The viewer
// shows the counts, the changes as a layer, the earlier mask in place of this one (before /
// after), and the fine-tune's own figures in words.

import { apiJson } from "./api.js";
import { finetuneFigures } from "./figures.js";
import { el, shortId, taskName } from "./ui.js";

// "+12 marks, −3, 41 changed (30 grown, 11 shrunk; 6 merged into 3)"
export function changesText(changes) {
  const changed = `${changes.changed} changed`;
  const parts = [];
  if (changes.merged) parts.push(`${changes.merged} merged into ${changes.merged_into}`);
  if (changes.split) parts.push(`${changes.split} split into ${changes.split_into}`);
  const more = parts.length ? `; ${parts.join(", ")}` : "";
  const detail = changes.changed ? ` (${changes.grown} grown, ${changes.shrunk} shrunk${more})` : "";
  return `+${changes.added} marks, −${changes.removed}, ${changed}${detail}`;
}

export function setUpChanges(page) {
  const changes = page.task.summary?.changes;
  const section = page.find("#changes-section");
  page.comparison = changes?.source_task ? { source: changes.source_task, changes } : null;
  section.hidden = !page.comparison;
  if (!page.comparison) return;
  const counts = page.find("#changes-counts");
  counts.textContent = changesText(changes);
  Object.assign(counts.dataset, { added: changes.added, removed: changes.removed, changed: changes.changed });
  page.find("#changes-source").replaceChildren(
    `${changes.before.toLocaleString()} marks before, ${changes.after.toLocaleString()} now; compared with `,
    el("a", { href: `#/tasks/${changes.source_task}`, id: "changes-source-link" }, `task ${shortId(changes.source_task)}`),
    ", the result it was segmented again from.",
  );
  nameSource(page, changes.source_task);
  showFinetuneFigures(page);
}

async function nameSource(page, sourceId) {
  try {
    const source = await apiJson(`/tasks/${sourceId}`);
    const link = page.find("#changes-source-link");
    if (link) link.textContent = taskName(source);
  } catch {
    page.find("#changes-source").append(" (That task has been deleted: the before layer is gone.)");
  }
}

// The model this task ran with, if a fine-tune: its held-out figures in words.
async function showFinetuneFigures(page) {
  const model = page.task.parameters.model;
  const line = page.find("#finetune-figures");
  if (!model || !/^[0-9a-f-]{36}$/i.test(model)) return;
  try {
    const state = await apiJson(`/models/${model}`);
    const words = finetuneFigures(state.summary);
    line.textContent = words ? `Fine-tuned model ${shortId(model)}. ${words[0].toUpperCase()}${words.slice(1)}.` : "";
  } catch {
    line.textContent = `Model ${shortId(model)} (its figures are gone with it).`;
  }
}
