"""The dashboard's chart over its long spans, in headless Chromium: the size of /api/history, the time the
page's drawChart takes and the time to the next painted frame, and the page's long tasks while it refreshes.

    python bench/dashboard_draw.py [--hours 24 168 840] [--runs 5] [--watch 12]

The view is the tests' SampleView (tests/test_http_api.py) stretched to each span: every minute has a power
reading, a demand and both forecasts, so this is the most a span can hold. For each span: the JSON answer's
bytes, drawChart's own time (performance.now() around it, in the page) and until two animation frames later
(layout and paint), each the median and max of `--runs`; then the page opened with ?refresh=1 for `--watch`
seconds: its long tasks (main thread busy over 50 ms, what an operator feels as a stutter) and the
/api/history requests it made. Needs Chromium (tests/browser.py). Prints a table; nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _common as C  # noqa: E402

DRAW = """async (runs) => {
  const {drawChart} = await import("/chart.js");
  const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const out = [];
  for (let k = 0; k < runs; k++) {
    await frame();
    const t0 = performance.now();
    drawChart();
    const t1 = performance.now();
    await frame();
    out.push([t1 - t0, performance.now() - t0]);
  }
  return out;
}"""
LONG_TASKS = """() => {
  window.longTasks = [];
  new PerformanceObserver((l) => { for (const e of l.getEntries()) window.longTasks.push(e.duration); })
    .observe({type: "longtask", buffered: true});
}"""


class CountingView:
    def __init__(self, view):
        self.view, self.asked = view, []

    def status(self):
        return self.view.status()

    def health(self):
        return self.view.health()

    def history(self, hours):
        self.asked.append(hours)
        return self.view.history(hours)


async def one_span(hours: int, runs: int, watch: float) -> list:
    import aiohttp

    from browser import chromium_page
    from test_http_api import SampleView
    from ven.http_api import HttpServer
    from ven.metrics import Metrics

    view = CountingView(SampleView(hours=hours))
    srv = HttpServer(view, Metrics(), f"127.0.0.1:{C.free_tcp_port()}", "")
    await srv.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{srv.url}/api/history?hours={hours}") as resp:
                size = len(await resp.read())
        async with chromium_page() as page:
            await page.goto(f"{srv.url}/?hours={hours}", wait_until="load", timeout=30000)
            await page.wait_for_function("window.dashboard && window.dashboard.ready", timeout=30000)
            times = await page.evaluate(DRAW, runs)
            drawn = await page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('svg path[data-series]')]
                                             .map((p) => [p.dataset.series, Number(p.dataset.drawn || p.dataset.points)]))""")
        async with chromium_page() as page:
            await page.add_init_script(f"({LONG_TASKS})()")
            view.asked.clear()
            await page.goto(f"{srv.url}/?hours={hours}&refresh=1", wait_until="load", timeout=30000)
            await asyncio.sleep(watch)
            long_tasks = await page.evaluate("window.longTasks")
            draws = await page.evaluate("window.dashboard.draws")
    finally:
        await srv.stop()
    own = [t[0] for t in times]
    painted = [t[1] for t in times]
    return [hours, f"{size / 1e6:.2f}", f"{statistics.median(own):.1f} / {max(own):.1f}",
            f"{statistics.median(painted):.1f} / {max(painted):.1f}", drawn.get("power_kw"), draws,
            len(view.asked), len(long_tasks), f"{max(long_tasks, default=0):.0f}"]


async def main(args) -> None:
    rows = [await one_span(h, args.runs, args.watch) for h in args.hours]
    print(f"load average {os.getloadavg()[0]:.2f} (2-core machines shared: times are noisy)")
    print(C.table(["hours", "answer MB", "drawChart ms (median / max)", "to paint ms (median / max)",
                   "power vertices", f"draws in {args.watch:g} s", "history requests", "long tasks",
                   "longest ms"], rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hours", type=int, nargs="+", default=[24, 168, 840])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--watch", type=float, default=12.0)
    asyncio.run(main(p.parse_args()))
