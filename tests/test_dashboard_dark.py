"""The dashboard when the OS or browser prefers dark (a control room, a phone at night): the page follows it
with no setting of its own, and the chart's lines and marks keep 3:1 against the plot (WCAG 1.4.11) and colours
of their own. Its text's contrast in that scheme is test_dashboard_access.py's, run in both schemes."""
from __future__ import annotations

import pytest

from browser import IN_ONE_CHROMIUM, chromium_page, one_chromium  # noqa: F401 - fixture
from test_dashboard import open_dashboard, server  # noqa: F401 - shared fixture
from test_dashboard_ahead import AheadView

pytestmark = [pytest.mark.timeout(90), *IN_ONE_CHROMIUM]


# the chart's lines and marks, the colour each is drawn in and its contrast with the plot's background (the
# card): {what, colour, ratio}; and the page's, the card's and the text's relative luminance
DRAWN = r"""() => {
  const rgb = (c) => c.match(/[\d.]+/g).slice(0, 3).map(Number);
  const lum = (c) => { const f = (v) => (v /= 255) <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
                       return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const card = rgb(getComputedStyle(document.querySelector("#chart").closest(".card")).backgroundColor);
  const marks = [["path[data-series]", "stroke", "data-series"], ["path[data-ahead]", "stroke", "data-ahead"],
                 ["line.threshold", "stroke", "data-threshold"], ["rect.flag-run", "fill", "data-flag"],
                 ["circle.ahead-forecast", "fill", "data-horizon"], ["line.now-line", "stroke", "class"],
                 ["line.axis", "stroke", "class"]];
  const drawn = [];
  for (const [selector, paint, name] of marks) {
    for (const node of document.querySelectorAll(`#chart-svg ${selector}`)) {
      const colour = getComputedStyle(node)[paint];
      drawn.push({what: `${selector} ${node.getAttribute(name)}`, colour, ratio: +ratio(rgb(colour), card).toFixed(2)});
    }
  }
  const luminance = (selector, prop) => lum(rgb(getComputedStyle(document.querySelector(selector))[prop]));
  return {drawn, page: luminance("body", "backgroundColor"), card: lum(card), header: luminance("header", "backgroundColor"),
          ink: luminance("body", "color"), tip: luminance("#tooltip", "backgroundColor")};
}"""


async def test_a_dark_preference_gets_a_dark_page_with_the_chart_still_told_apart(server):
    # a control room or a phone at night: the OS asks for dark, and a white page would glare
    srv = await server(AheadView())
    async with chromium_page(color_scheme="dark") as page:
        await open_dashboard(page, srv.url + "/")
        seen = await page.evaluate(DRAWN)
        assert seen["page"] < 0.03 and seen["card"] < 0.03 and seen["header"] < 0.03 and seen["tip"] < 0.05, seen
        assert seen["ink"] > 0.6, seen
        drawn = {d["what"]: d for d in seen["drawn"]}
        # each series, both thresholds, both flags, the markers ahead, now and the axes: drawn and seen
        for what in ["path[data-series] power_kw", "path[data-series] demand_kw", "path[data-series] forecast_15",
                     "path[data-series] forecast_60",
                     "line.threshold high_threshold_kw", "line.threshold low_threshold_kw", "rect.flag-run high_load",
                     "rect.flag-run low_load", "circle.ahead-forecast 15", "circle.ahead-forecast 60",
                     "line.now-line now-line", "line.axis axis"]:
            assert what in drawn, (what, sorted(drawn))
        assert [d for d in seen["drawn"] if d["ratio"] < 3] == []
        # and told apart from each other: the four series, and high from low, in colours of their own
        colours = [drawn[f"path[data-series] {k}"]["colour"] for k in ("power_kw", "demand_kw", "forecast_15", "forecast_60")]
        assert len(set(colours)) == 4, colours
        assert drawn["line.threshold high_threshold_kw"]["colour"] != drawn["line.threshold low_threshold_kw"]["colour"]
        assert page.errors == []
