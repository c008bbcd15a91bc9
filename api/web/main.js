// The page's entry point: a tiny hash router (#/ the tasks, #/tasks/<id> one task) that asks
// before leaving a view with unsaved work, the API key dialog and the shortcuts dialog.

import { apiKey, handleUnauthorized, setApiKey } from "./api.js";
import { showTasks } from "./tasks.js";
import { leaveReasons, say, typingInField } from "./ui.js";
import { showViewer } from "./viewer.js";

const app = document.getElementById("app");
let leave = null;
let routing = Promise.resolve();
let shownHash = null; // the hash of the view on screen

// A view's leave() may have beforeLeave(): save what it can, then say what would still be lost.
async function mayLeave() {
  const reason = await leave?.beforeLeave?.();
  if (!reason || confirm(`${reason}\n\nLeave anyway?`)) return true;
  history.replaceState(null, "", shownHash || "#/"); // stay: the address shows this view again
  return false;
}

async function route() {
  if (shownHash !== null && !(await mayLeave())) return;
  shownHash = location.hash;
  leave?.();
  leave = null;
  app.replaceChildren();
  const match = location.hash.match(/^#\/tasks\/([0-9a-fA-F-]{36})$/);
  document.body.dataset.page = match ? "viewer" : "tasks";
  leave = match ? await showViewer(app, match[1]) : showTasks(app);
}

// Routes run one after the other; an error is shown and the next route still runs.
function go() {
  routing = routing.then(route).catch((error) => say(error.message, "error"));
}

function setUpKeyDialog() {
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  const reason = document.getElementById("key-reason");
  const open = (why = "") => {
    if (dialog.open) return;
    reason.textContent = why;
    input.value = apiKey();
    dialog.showModal();
  };
  document.getElementById("key-button").addEventListener("click", () => open());
  dialog.addEventListener("close", () => {
    if (dialog.returnValue !== "save") return;
    setApiKey(input.value.trim());
    say(input.value.trim() ? "API key saved in this browser" : "API key removed");
    go();
  });
  handleUnauthorized((detail) => open(detail || "The service needs an API key."));
}

function setUpHelp() {
  const dialog = document.getElementById("help-dialog");
  document.addEventListener("click", (event) => {
    if (event.target.closest("[data-open-help]")) dialog.showModal();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "?" && !typingInField(event) && !dialog.open) {
      event.preventDefault();
      dialog.showModal();
    }
  });
}

// Closing the tab, reloading or leaving the site: the browser's own question, when needed.
function setUpLeavePrompt() {
  window.addEventListener("beforeunload", (event) => {
    const reasons = leaveReasons();
    if (!reasons.length) return;
    event.preventDefault();
    event.returnValue = reasons.join(" "); // older browsers want it set; none shows it
  });
}

setUpKeyDialog();
setUpHelp();
setUpLeavePrompt();
window.addEventListener("hashchange", go);
window.addEventListener("amseg:moved", () => (shownHash = location.hash));
go();
