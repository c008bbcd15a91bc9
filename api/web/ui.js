// Small helpers the page's views share: building elements, the status line, names of slides.

const NAMES_STORAGE = "amseg.slideNames";
const MAX_NAMES = 500;

// el("button", { type: "button", onclick }, "Delete")
export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, value);
  }
  element.append(...children.flat().filter((child) => child !== null && child !== undefined));
  return element;
}

let sayTimer = 0;
// The status line (an aria-live region): what just happened, or what went wrong.
export function say(message, kind = "info") {
  const status = document.getElementById("status");
  status.textContent = message;
  status.dataset.kind = kind;
  status.hidden = !message;
  clearTimeout(sayTimer);
  if (message) sayTimer = setTimeout(() => (status.hidden = true), kind === "error" ? 12000 : 5000);
}

export function shortId(id) {
  return id.slice(0, 8);
}

export function formatTime(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
}

// The file names of slides uploaded from this browser (the API keeps no names).
export function slideName(taskId) {
  const names = JSON.parse(localStorage.getItem(NAMES_STORAGE) || "{}");
  return names[taskId] || null;
}

// What to call a task: the name the API keeps (the upload's file name), else the one this
// browser remembers, else its short id.
export function taskName(task) {
  return task.name || slideName(task.id) || `task ${shortId(task.id)}`;
}

// The stem of a task's download file names, as the API names them (api/names.py): "slide7"
// for slide7.tif, the task id for a task without a name.
export function downloadStem(task) {
  const name = task.name || slideName(task.id) || "";
  const stem = name.replace(/\.(png|tiff?|jpe?g)$/i, "").replace(/[\\/:*?"<>|;\x00-\x1f]+/g, "_").trim();
  return stem || task.id;
}

export function rememberSlideName(taskId, name) {
  const names = JSON.parse(localStorage.getItem(NAMES_STORAGE) || "{}");
  names[taskId] = name;
  const ids = Object.keys(names);
  for (const old of ids.slice(0, Math.max(0, ids.length - MAX_NAMES))) delete names[old];
  localStorage.setItem(NAMES_STORAGE, JSON.stringify(names));
}

// Is the keyboard event aimed at a form control (so it is not a shortcut)?
export function typingInField(event) {
  const target = event.target;
  if (!(target instanceof HTMLElement)) return false;
  if (target.isContentEditable) return true;
  if (target.tagName === "TEXTAREA" || target.tagName === "SELECT") return true;
  if (target.tagName !== "INPUT") return false;
  return !["checkbox", "radio", "range", "button", "submit", "file"].includes(target.type);
}

// Run `step` every `interval()` ms until the returned stop() is called; errors are shown once.
// stop.soon() runs it again within `interval()` from now (the interval may have just shrunk).
export function poll(step, interval) {
  let stopped = false;
  let running = false;
  let timer = 0;
  const run = async () => {
    if (stopped) return;
    running = true;
    try {
      await step();
    } catch (error) {
      if (!stopped) say(error.message, "error");
    }
    running = false;
    if (!stopped) timer = setTimeout(run, interval());
  };
  run();
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
  };
  stop.soon = () => {
    if (stopped || running) return;
    clearTimeout(timer);
    timer = setTimeout(run, interval());
  };
  return stop;
}

// What would be lost if the page were closed or reloaded now: each guard returns a reason in
// words, or null. Views and uploads register theirs; main.js asks them before the page goes.
const leaveGuards = new Set();

export function guardLeaving(reason) {
  leaveGuards.add(reason);
  return () => leaveGuards.delete(reason);
}

export function leaveReasons() {
  return [...leaveGuards].map((reason) => reason()).filter(Boolean);
}

// Show another address without leaving the view (the viewer followed a new task in place);
// main.js hears of it, so Back and a cancelled leave land on the right view.
export function moveAddress(hash) {
  history.pushState(null, "", hash);
  window.dispatchEvent(new Event("amseg:moved"));
}
