// A long span has many minutes to a pixel: 35 days are 50,400 minutes on about a thousand columns, and
// a path through all of them takes the browser seconds to paint. Each column keeps its lowest and its
// highest value, in their order: the same shape to the pixel, and no peak or dip is lost (as it would be by
// taking every nth minute). A gap longer than `bridgeS` still breaks the line.
//
// points(minutes, values, column, bridgeS) -> {at: [indices to draw], move: [true where a line starts]};
// column(i) is the pixel column of minute i (column(i) = i keeps every minute).
export function points(minutes, values, column, bridgeS) {
  const at = [], move = [];
  let c = NaN, lo = -1, hi = -1, starts = false, prev = -1;
  const keep = () => {
    if (lo < 0) return;
    const first = Math.min(lo, hi), second = Math.max(lo, hi);
    at.push(first); move.push(starts);
    if (second !== first) { at.push(second); move.push(false); }
  };
  for (let i = 0; i < minutes.length; i++) {
    const v = values[i];
    if (typeof v !== "number") continue;
    const gap = prev < 0 || minutes[i] - minutes[prev] > bridgeS;
    const ci = column(i);
    prev = i;
    if (!gap && ci === c) {
      if (v < values[lo]) lo = i;
      else if (v > values[hi]) hi = i;
      continue;
    }
    keep();
    c = ci; lo = hi = i; starts = gap;
  }
  keep();
  return {at, move};
}
