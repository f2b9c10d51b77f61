// The chart's "Download CSV": /api/history.csv for the chart's span. A link cannot send the bearer token
// the API may ask for, so a click fetches the file with it and saves it from a Blob; the link's own href
// (the same file) is for "save link as" on a gateway without a token.
import {apiGet} from "./api.js";
import {$, el} from "./dom.js";
import {hours} from "./state.js";

const DOWNLOAD_TIMEOUT_MS = 60000;  // 35 days are 50,400 rows, a few seconds on a small box
const FALLBACK_NAME = "edge-gateway-history.csv";

function fileName(resp) {
  const m = /filename="([^"]+)"/.exec(resp.headers.get("Content-Disposition") || "");
  return m ? m[1] : FALLBACK_NAME;
}

async function download(path, status) {
  status.textContent = "downloading…";
  try {
    const {blob, name} = await apiGet(path, DOWNLOAD_TIMEOUT_MS,
                                      async (resp) => ({blob: await resp.blob(), name: fileName(resp)}));
    const url = URL.createObjectURL(blob);
    const save = el("a", {href: url, download: name, hidden: ""});
    document.body.append(save);
    save.click();
    save.remove();
    // revoked at once, the browser could lose the file before it has saved it
    setTimeout(() => URL.revokeObjectURL(url), DOWNLOAD_TIMEOUT_MS);
    status.textContent = "";
  } catch (err) {
    status.textContent = `download failed: ${err.message}`;
  }
}

const csvPath = () => `api/history.csv?hours=${hours}`;
// after the span is changed
export function followSpan() { $("download-csv").href = csvPath(); }

export function setupDownload() {
  const link = $("download-csv");
  const status = $("download-status");
  followSpan();
  let busy = false;
  link.addEventListener("click", async (ev) => {
    ev.preventDefault();
    if (busy) return;
    busy = true;
    try {
      await download(csvPath(), status);
    } finally {
      busy = false;
    }
  });
}
