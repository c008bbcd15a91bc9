// The corrections of a task kept on the server as the person draws (`PUT /tasks/{id}/corrections`,
// a labels PNG as a fine-tune takes it, with the boxes and whether it was sent in a tEXt chunk),
// so that Back, a reload or a closed tab lose nothing: saved a second after the last change, when
// the tab is hidden and before the viewer is left; restored when the task is opened again.
// Each save names the draft this page last saw (its ETag): when another tab or window saved
// other corrections meanwhile, the server says so (412) and the person chooses whose to keep.

import { ApiError, apiFetch } from "./api.js";
import { encodeLabels } from "./labelspng.js";
import { DRAFT_KEYWORD, readDraft } from "./labelsread.js";
import { el, formatTime, say, shortId } from "./ui.js";

const SAVE_AFTER_MS = 1000;
const RETRY_AFTER_MS = 5000;
// The toolbar's short word for the draft's state (the panel says it in full).
const CHIPS = {
  saved: "✓ saved",
  sent: "✓ saved, sent",
  unsaved: "● unsaved",
  error: "⚠ not saved",
  conflict: "⚠ changed elsewhere",
};

export class DraftKeeper {
  constructor(taskId, image, editor, show) {
    this.path = `/tasks/${taskId}/corrections`;
    this.image = image; // { width, height }
    this.editor = editor;
    this.show = show; // (line, chip) => void: the draft's state in words, and in a word
    this.savedVersion = editor.version; // what the server holds
    this.sent = null; // { model, at } once the draft went to a fine-tune unchanged
    this.savedAt = null;
    this.error = null;
    this.timer = 0;
    this.saving = null; // the save in flight
    this.etag = null; // the server's draft this page last saw (null: none)
    this.conflict = false; // another tab or window saved other corrections meanwhile
    this.force = false; // the person chose to keep this page's corrections over those
    this.resolving = false; // "Show theirs" is loading them: nothing is saved meanwhile
  }

  // Restore the task's draft, if it has one; says what came back. False when there is none.
  async load() {
    let response;
    try {
      response = await apiFetch(this.path);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        this.etag = null;
        this.render();
        return false;
      }
      throw error;
    }
    this.etag = response.headers.get("ETag");
    const { boxes, meta } = await readDraft(await response.blob(), this.image.width, this.image.height);
    this.restoring = true; // what comes back is what the server has: nothing to save
    try {
      this.editor.restore(boxes);
    } finally {
      this.restoring = false;
    }
    this.savedVersion = this.editor.version;
    this.savedAt = meta.saved_at || null;
    this.sent = meta.sent || null;
    if (boxes.length) {
      const when = this.savedAt ? ` saved ${formatTime(this.savedAt)}` : "";
      say(`Your corrections${when} are back: ${boxes.length} box${boxes.length > 1 ? "es" : ""}`);
    }
    this.render();
    return true;
  }

  get unsaved() {
    return this.editor.version !== this.savedVersion;
  }

  // Called on every change of the corrections: save a moment after the last one.
  changed() {
    if (this.restoring || !this.unsaved) return;
    this.sent = null; // what is drawn now is no longer what was sent
    clearTimeout(this.timer);
    if (this.conflict) return this.render(); // kept here until the person chooses
    this.timer = setTimeout(() => this.flush(), SAVE_AFTER_MS);
    this.render();
  }

  // Save now if anything is unsaved; resolves when the server has it (or the save failed).
  async flush() {
    clearTimeout(this.timer);
    while (this.saving) await this.saving;
    if (!this.unsaved || this.editor.loading || this.conflict || this.resolving) return;
    this.saving = this.save().finally(() => (this.saving = null));
    await this.saving;
  }

  async save() {
    const version = this.editor.version;
    this.render("saving");
    try {
      await this.write();
      this.savedVersion = version;
      this.error = null;
      this.force = false;
    } catch (error) {
      if (error instanceof ApiError && error.status === 412) {
        this.conflict = true;
        this.error = null;
        say("Another tab or window saved other corrections for this task: choose in the panel whose to keep", "error");
      } else {
        this.error = error.message;
        this.timer = setTimeout(() => this.flush(), RETRY_AFTER_MS);
      }
    }
    this.render();
    if (this.unsaved && !this.error && !this.conflict) this.changed(); // drawn on while it saved
  }

  async write() {
    const path = this.path;
    const boxes = this.editor.boxes.filter((box) => !box.loading);
    if (!boxes.length) {
      await apiFetch(path, { method: "DELETE", headers: this.precondition() }).catch((error) => {
        if (!(error instanceof ApiError && error.status === 404)) throw error;
      });
      this.savedAt = null;
      this.etag = null;
      return;
    }
    const savedAt = new Date().toISOString();
    const meta = { boxes: boxes.map((b) => [b.x0, b.y0, b.x1, b.y1]), saved_at: savedAt, sent: this.sent };
    const texts = { [DRAFT_KEYWORD]: JSON.stringify(meta) };
    const body = await encodeLabels(this.image.width, this.image.height, boxes, texts);
    const headers = { "Content-Type": "image/png", ...this.precondition() };
    const response = await apiFetch(path, { method: "PUT", body, headers });
    this.savedAt = savedAt;
    if (path === this.path) this.etag = response.headers.get("ETag"); // not moved meanwhile
  }

  // What the server must still hold for this save to replace it: the draft this page last
  // saw, or none; nothing once the person chose to keep this page's corrections.
  precondition() {
    if (this.force) return {};
    return this.etag ? { "If-Match": this.etag } : { "If-None-Match": "*" };
  }

  // After a conflict: show the corrections saved elsewhere (this page's are dropped)...
  async takeTheirs() {
    this.resolving = true; // no save until theirs are here
    try {
      if (!(await this.load())) {
        this.restoring = true; // theirs went meanwhile (cleared elsewhere): show none either
        try {
          this.editor.restore([]);
        } finally {
          this.restoring = false;
        }
        this.savedVersion = this.editor.version;
      }
      this.conflict = false;
    } catch (error) {
      say(`Their corrections could not be loaded: ${error.message}`, "error");
    } finally {
      this.resolving = false;
    }
    this.render();
  }

  // ...or save this page's over them.
  async keepMine() {
    this.conflict = false;
    this.force = true;
    await this.flush();
  }

  // The viewer now shows another task of the same image (numbered again): the corrections go
  // with it; the earlier task keeps the draft it had.
  async moveTo(taskId) {
    clearTimeout(this.timer);
    while (this.saving) await this.saving; // its answer belongs to the task it was sent to
    this.path = `/tasks/${taskId}/corrections`;
    this.etag = null;
    this.conflict = false;
    if (!this.editor.boxes.length) return;
    this.savedVersion = -1;
    this.changed();
  }

  // The corrections went to a fine-tune: keep them, marked as sent to that model.
  async markSent(modelId) {
    await this.flush();
    this.sent = { model: modelId, at: new Date().toISOString() };
    this.savedVersion = -1; // the mark must reach the server too
    await this.flush();
  }

  // Why leaving now would lose something, or null.
  unsavedReason() {
    if (this.conflict) return "Your corrections are not saved: another tab or window changed this task's draft.";
    if (!this.unsaved && !this.saving) return null;
    const why = this.error ? ` (the last try failed: ${this.error})` : "";
    return `Your corrections are not saved on the server yet${why}.`;
  }

  render(doing = null) {
    const boxes = this.editor.boxes.length;
    let text;
    let kind = "note";
    if (this.conflict) return this.renderConflict();
    if (doing === "saving") text = "Saving your corrections…";
    else if (this.error) [text, kind] = [`Not saved: ${this.error}. Trying again…`, "error"];
    else if (this.unsaved) text = "Changed; saving in a moment…";
    else if (!boxes) text = "";
    else if (this.sent) text = `Saved; sent to fine-tune model ${shortId(this.sent.model)} ${formatTime(this.sent.at)}.`;
    else text = `Saved on the server${this.savedAt ? ` ${formatTime(this.savedAt)}` : ""}; kept if you leave.`;
    const state = this.error ? "error" : this.unsaved || doing === "saving" ? "unsaved" : this.sent ? "sent" : "saved";
    this.show(el("span", { class: kind, dataset: { draft: state } }, text), boxes || state !== "saved" ? CHIPS[state] : "");
  }

  renderConflict() {
    const line = el(
      "span",
      { class: "error", dataset: { draft: "conflict" } },
      "Another tab or window saved other corrections for this task since this page loaded them; yours are not saved. ",
      el("button", { type: "button", class: "link", dataset: { draftChoice: "theirs" }, onclick: () => this.takeTheirs() }, "Show theirs"),
      " (yours are dropped) or ",
      el("button", { type: "button", class: "link", dataset: { draftChoice: "mine" }, onclick: () => this.keepMine() }, "keep yours"),
      " (theirs are replaced).",
    );
    this.show(line, CHIPS.conflict);
  }

  destroy() {
    clearTimeout(this.timer);
  }
}
