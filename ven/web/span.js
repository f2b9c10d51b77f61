// The chart's span, chosen beside it: the choice redraws at once, and stays in the address (?hours=) so a
// reload or a shared link shows the same span.
import {$, el} from "./dom.js";
import {SPANS, hours, setHours, spanLabel} from "./state.js";

export function setupSpan(changed) {
  const select = $("chart-span");
  // an ?hours= of its own (48) is kept, and shown, as one more choice in its place
  const choices = SPANS.map((s) => s.hours);
  if (!choices.includes(hours)) choices.push(hours);
  choices.sort((a, b) => a - b);
  select.replaceChildren(...choices.map((h) => el("option", {value: h}, spanLabel(h))));
  select.value = String(hours);
  select.addEventListener("change", () => {
    setHours(Number(select.value));
    // replaced, not pushed: Back leaves the dashboard rather than stepping through spans; the other
    // parameters and the fragment stay
    const url = new URL(location.href);
    url.searchParams.set("hours", String(hours));
    window.history.replaceState(window.history.state, "", url);
    changed();
  });
}
