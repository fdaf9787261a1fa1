// The bridge's public REST API (docs/openapi.json); every call carries the session's token.
export async function login(email, password) {
  const r = await fetch("/api/v1/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email, password }),
  });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `login failed (${r.status})`);
  return body;
}

export async function api(token, path, options = {}) {
  const r = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `request failed (${r.status})`);
  return body;
}
