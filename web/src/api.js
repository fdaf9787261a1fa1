// The bridge's public REST API (docs/openapi.json); every call carries the session's token.
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function answer(r) {
  let body = {};
  try {
    body = await r.json();
  } catch {
    // A proxy's HTML error page, or nothing at all: the status says enough.
  }
  if (!r.ok) throw new ApiError(body.error || `request failed (${r.status})`, r.status);
  return body;
}

export async function login(email, password) {
  const r = await fetch("/api/v1/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email, password }),
  });
  return answer(r);
}

export async function api(token, path, options = {}) {
  if (!options.method) {
    const asked = takeEarly(token, path);
    if (asked) return asked;
  }
  const r = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  return answer(r);
}

// A GET asked before the page that wants it is drawn (main.jsx: the first listing, while React
// renders the page and runs its effects): the page's own first call for the same token and path
// takes its answer instead of asking again, if it comes within EARLY_MS. Once: later calls ask.
const EARLY_MS = 3000;
const early = new Map();

export function askEarly(token, path) {
  const asked = api(token, path);
  asked.catch(() => {}); // whoever takes it sees the failure; unclaimed, it is nobody's
  early.set(`${token}\n${path}`, { asked, at: performance.now() });
}

function takeEarly(token, path) {
  const key = `${token}\n${path}`;
  const found = early.get(key);
  early.delete(key);
  return found && performance.now() - found.at < EARLY_MS ? found.asked : null;
}

export const post = (token, path, body) => api(token, path, { method: "POST", body: JSON.stringify(body) });

// Staged attachment upload. XMLHttpRequest rather than fetch: only it reports upload progress.
export function upload(token, account, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const params = new URLSearchParams({ account, filename: file.name });
    xhr.open("POST", `/api/v1/uploads?${params}`);
    xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // See answer(): the status is the message.
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(body.error || `upload failed (${xhr.status})`, xhr.status));
    };
    xhr.onerror = () => reject(new ApiError("upload failed: the bridge cannot be reached", 0));
    xhr.send(file);
  });
}

// The token names a link the browser cannot follow by itself: fetch it and hand over a local copy.
export async function download(token, attachment) {
  const r = await fetch(attachment.url, { headers: { Authorization: `Bearer ${token}` } });
  if (!r.ok) throw new ApiError(`download failed (${r.status})`, r.status);
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = attachment.filename || "attachment";
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
