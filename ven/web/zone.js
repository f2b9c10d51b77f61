// The zone the page's times are in, chosen beside the span ("Times"): UTC, the building's (forecaster.timezone,
// /api/status "timezone"), and this browser's when it is neither. The building's is the default where it is
// set: the BAS, the tariff's peak windows and the building's schedule are all in its local time. Like the span,
// the choice stays in the address (?tz=).
import {$, el} from "./dom.js";
import {knownZone, sameZone, setZone, zoneName} from "./format.js";

const browser = knownZone(Intl.DateTimeFormat().resolvedOptions().timeZone);
// chosen on the page or by ?tz=; null: the building's default (an ?tz= no browser knows is ignored)
let chosen = knownZone(new URLSearchParams(location.search).get("tz"));
let building = null;
if (chosen) setZone(chosen);

function fill() {
  const select = $("chart-tz");
  const zones = ["UTC"];
  for (const z of [building, browser, zoneName()]) if (z && !zones.some((y) => sameZone(y, z))) zones.push(z);
  const words = (z) => z === "UTC" ? "UTC" : z === building ? `${z} (building)` : z === browser ? `${z} (this browser)` : z;
  select.replaceChildren(...zones.map((z) => el("option", {value: z}, words(z))));
  select.value = zones.find((z) => sameZone(z, zoneName())) || zoneName();
}
// changed(): after a choice, to show every time again in it
export function setupZone(changed) {
  const select = $("chart-tz");
  fill();
  select.addEventListener("change", () => {
    chosen = select.value;
    setZone(chosen);
    // replaced, not pushed, as ?hours= (span.js)
    const url = new URL(location.href);
    url.searchParams.set("tz", chosen);
    window.history.replaceState(window.history.state, "", url);
    changed();
  });
}
// each status answer's zone of the building: a choice, and the zone shown while none was made
export function followBuilding(z) {
  const known = knownZone(z) || "UTC";
  if (known === building) return;
  building = known;
  // ?tz= naming the building's zone by another name (Asia/Calcutta): shown by the building's, as the menu shows it
  if (chosen && sameZone(chosen, building)) chosen = building;
  if (!chosen || chosen === building) setZone(building);
  fill();
}
