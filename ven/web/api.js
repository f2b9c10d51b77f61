// Requests to the gateway's API: the page's access token, a bound in time, and failures in words.
// Access token: the page opened as /#token=<http.token> once (the fragment never reaches the server or its
// logs), or typed when asked; kept for the tab's session.
export function token() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    // a token pasted with a raw "%" (ab%zz) is not valid percent-encoding: use the text as typed
    // rather than throw, and drop the fragment either way so a bad one cannot stick in the address bar
    let t = m[1];
    try { t = decodeURIComponent(t); } catch (err) { /* keep the raw text */ }
    sessionStorage.setItem("edge-gateway-token", t);
    window.history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("edge-gateway-token") || "";
}
// The gateway answered, with an error: its HTTP status and what it said.
export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}
// GET `path` and read its answer with `read(resp)`, all within `timeoutMs`; fails with an Error saying the
// gateway did not answer in time or could not be reached, or with what `read` threw.
export async function fetchWithin(path, timeoutMs, read, headers = {}) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  try {
    return await read(await fetch(path, {headers, signal: ctl.signal, cache: "no-store"}));
  } catch (err) {
    if (err.name === "AbortError") throw new Error(`no answer within ${timeoutMs / 1000} s`);
    if (err instanceof TypeError) throw new Error("gateway unreachable");
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
// GET `path` with the token (and `headers`) and read its answer with `read(resp)`, all within `timeoutMs`. Fails
// with an HttpError when the gateway answers with an error, else an Error saying it did not answer. A 304 (asked
// with If-None-Match) is no error: `read` takes it.
export async function apiGet(path, timeoutMs, read, headers = {}) {
  headers = Object.assign({}, headers);
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  return fetchWithin(path, timeoutMs, async (resp) => {
    if (!resp.ok && resp.status !== 304) {
      const body = await resp.json().catch(() => ({}));
      throw new HttpError(resp.status, `HTTP ${resp.status} ${body.error || ""}`.trim());
    }
    return read(resp);
  }, headers);
}
