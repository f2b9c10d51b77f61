// What the chart draws and in which colours: the series, the load flags and the event levels, named once for
// the drawing, the legend, the readout and the words.
import {hist} from "./state.js";

export const SERIES = [
  {key: "power_kw", label: "Power (1 min)", short: "Power", color: "var(--power)", width: 1.2},
  {key: "demand_kw", label: "Demand (15 min)", short: "Demand", color: "var(--demand)", width: 2.4},
  {key: "forecast_15", label: "Forecast 15 min ahead", color: "var(--f15)", width: 1.8, dash: "6 4"},
  {key: "forecast_60", label: "Forecast 60 min ahead", color: "var(--f60)", width: 1.8, dash: "2 4"},
];
export const FLAGS = [
  {key: "high_load", label: "high load", color: "var(--high)"},
  {key: "low_load", label: "low load", color: "var(--low)"},
];
// 0: an event without a level (its shading only says when)
export const LEVEL_COLORS = {0: "var(--l0)", 1: "var(--l1)", 2: "var(--l2)", 3: "var(--l3)"};
const horizons = () => (hist && hist.horizons_minutes) || [15, 60];
// the forecast series are named by the gateway's horizons
export function nameSeries() {
  const hz = horizons();
  SERIES[2].label = `Forecast ${hz[0]} min ahead`; SERIES[2].short = `Forecast ${hz[0]} min`;
  SERIES[3].label = `Forecast ${hz[1]} min ahead`; SERIES[3].short = `Forecast ${hz[1]} min`;
}
// the forecast series of a horizon, to name and colour what lies ahead like the line it will join
export const forecastSeries = (horizon) => SERIES[horizons().indexOf(horizon) === 1 ? 3 : 2];
