// Talking to the amseg API from the page: the API key, JSON and problem+json errors, uploads
// with progress, and downloads that carry the key.

const KEY_STORAGE = "amseg.apiKey";

export class ApiError extends Error {
  constructor(status, detail, problem = null) {
    super(detail);
    this.status = status;
    this.problem = problem;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

// Called when the API answers 401; the page shows the key dialog.
let onUnauthorized = () => {};
export function handleUnauthorized(callback) {
  onUnauthorized = callback;
}

function headersWithKey(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, "X-API-Key": key } : headers;
}

// The words to show for a failed response: the problem's detail, else the status text.
async function errorFrom(response) {
  let problem = null;
  try {
    problem = await response.json();
  } catch {
    // not JSON: keep the status text
  }
  const detail = problem?.detail || problem?.title || `${response.status} ${response.statusText}`;
  if (response.status === 401) onUnauthorized(detail);
  return new ApiError(response.status, detail, problem);
}

export async function apiFetch(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: headersWithKey(options.headers) });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `the service cannot be reached (${error.message})`);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function apiJson(path, options = {}) {
  const response = await apiFetch(path, options);
  return response.status === 204 ? null : response.json();
}

// POST a file with upload progress (fetch has none); resolves with the JSON answer.
export function uploadFile(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", path);
    for (const [name, value] of Object.entries(headersWithKey())) {
      request.setRequestHeader(name, value);
    }
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    request.onerror = () => reject(new ApiError(0, "the upload failed: the service cannot be reached"));
    request.onload = () => {
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch {
        // keep null
      }
      if (request.status >= 200 && request.status < 300) return resolve(body);
      if (request.status === 401) onUnauthorized(body?.detail);
      const detail = body?.detail || `${request.status} ${request.statusText}`;
      reject(new ApiError(request.status, detail, body));
    };
    const form = new FormData();
    form.append("file", file, file.name);
    request.send(form);
  });
}

// Save a result to disk. Without a key a plain link streams it; with one, fetch it first.
export async function download(path, filename) {
  const link = document.createElement("a");
  link.download = filename;
  let objectUrl = null;
  if (apiKey()) {
    const blob = await (await apiFetch(path)).blob();
    objectUrl = URL.createObjectURL(blob);
    link.href = objectUrl;
  } else {
    link.href = path;
  }
  document.body.append(link);
  link.click();
  link.remove();
  if (objectUrl) setTimeout(() => URL.revokeObjectURL(objectUrl), 60_000);
}
