// Dashboards: plotly charts from the usage report the server embedded in the page.
"use strict";

(function () {
  const el = document.getElementById("report-data");
  if (!el || !window.Plotly) return;
  const data = JSON.parse(el.textContent);
  const bucket = data.bucket;  // "hour" or "day"
  const phone = () => window.innerWidth < 700;
  const config = { responsive: true, displaylogo: false,
    modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"] };
  // Amber (#d08c1a) means "estimated" and nothing else: it is not a series colour. Traffic of
  // the admin key, which belongs to no team, is grey.
  const ESTIMATED = "#d08c1a", ADMIN = "(admin key)";
  const palette = ["#1f7a4a", "#3b82c4", "#8e5bb8", "#c2453d", "#2a9d8f", "#7a8b2f", "#b5548f", "#4b5d8a"];

  const hourly = bucket === "hour";
  const span = hourly ? 3600e3 : 86400e3;
  const width = span * 0.85;
  const iso = (ms) => new Date(ms).toISOString().replace("Z", "");
  // The whole window up to the end of the current bucket, so a quiet period shows as quiet
  // rather than as one wide bar.
  const t0 = Date.parse(data.start), t1 = Math.ceil(Date.parse(data.end) / span) * span;
  const timeAxis = {
    type: "date", gridcolor: "#eef2ef", range: [iso(t0), iso(t1)],
    tickformat: hourly ? "%H:%M\n%b %d" : "%b %d",
  };

  function moneyAxis(values) {
    // Per-request dollars are tiny: plain decimals, never plotly's SI "µ" on a currency.
    const top = Math.max(1e-9, ...values.map((v) => Math.abs(v || 0)));
    const digits = Math.min(9, Math.max(2, Math.ceil(-Math.log10(top)) + 2));
    return { title: { text: "USD" }, tickprefix: "$", tickformat: "." + digits + "~f", rangemode: "tozero", gridcolor: "#eef2ef", automargin: true };
  }

  function layout(extra) {
    return Object.assign({
      height: 300, margin: { l: 56, r: 12, t: 8, b: phone() ? 90 : 56 },
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      font: { family: "system-ui, sans-serif", size: 12, color: "#1d2a22" },
      legend: { orientation: "h", y: -0.25 }, barmode: "stack",
      xaxis: timeAxis,
      yaxis: { gridcolor: "#eef2ef", rangemode: "tozero" },
    }, extra || {});
  }

  function when(row) {
    // A bucket's bar sits in the middle of its hour or day.
    const v = row[bucket];
    return iso(Date.parse(hourly ? v : v + "T00:00:00Z") + span / 2);
  }

  function label(row, split) {
    const v = row[split];
    if (v !== null && v !== undefined) return v;
    return split === "team" ? ADMIN : "(not served)";
  }

  function series(rows, split, value) {
    const groups = new Map();
    rows.forEach((r) => {
      const k = label(r, split);
      if (!groups.has(k)) groups.set(k, { x: [], y: [] });
      const g = groups.get(k);
      g.x.push(when(r)); g.y.push(value(r));
    });
    let i = 0;
    return [...groups.entries()].map(([name, g]) => ({
      type: "bar", name, x: g.x, y: g.y, width,
      marker: { color: name === ADMIN ? "#9aa59e" : palette[i++ % palette.length] },
    }));
  }

  function draw(id, traces, extra) {
    const node = document.getElementById(id);
    if (node) Plotly.react(node, traces, layout(extra), config);
  }

  function overTime() {
    const split = document.getElementById("split").value;
    const rows = split === "team" ? data.by_team : data.by_member;
    const shown = { showlegend: true };  // even for one team: say whose bars these are
    draw("chart-energy", series(rows, split, (r) => r.energy_wh || 0), Object.assign({ yaxis: { title: { text: "Wh" }, rangemode: "tozero", gridcolor: "#eef2ef", automargin: true } }, shown));
    draw("chart-carbon", series(rows, split, (r) => r.gco2e || 0), Object.assign({ yaxis: { title: { text: "gCO2e" }, rangemode: "tozero", gridcolor: "#eef2ef", automargin: true } }, shown));
    draw("chart-cost", series(rows, split, (r) => r.cost_usd || 0), Object.assign({ yaxis: moneyAxis(rows.map((r) => r.cost_usd)) }, shown));
  }

  const members = data.members.filter((r) => r.member !== null);
  draw("chart-jpt", [{
    type: "bar", x: members.map((r) => r.member), y: members.map((r) => r.j_per_output_token),
    marker: { color: members.map((r) => (r.estimated_energy_share || 0) > 0.5 ? ESTIMATED : "#1f7a4a") },
    text: members.map((r) => (r.estimated_energy_share || 0) > 0.5 ? "estimated" : "measured"),
    textposition: "auto", hovertemplate: "%{x}: %{y:.3g} J/token (%{text})<extra></extra>",
  }], { barmode: "group", xaxis: { type: "category" }, yaxis: { title: { text: "J / output token" }, rangemode: "tozero", gridcolor: "#eef2ef", automargin: true } });

  const t = data.over_time;
  const x = t.map(when);
  const half = width / 2;
  draw("chart-saved-cost", [
    { type: "bar", name: "routed (auto)", x, y: t.map((r) => r.counterfactual_cost_usd - r.cost_saved_usd), width: half, offset: -half, marker: { color: "#1f7a4a" } },
    { type: "bar", name: "always the reference member", x, y: t.map((r) => r.counterfactual_cost_usd), width: half, offset: 0, marker: { color: "#b9c7bd" } },
  ], { barmode: "overlay", yaxis: moneyAxis(t.map((r) => r.counterfactual_cost_usd)) });
  draw("chart-saved-energy", [
    { type: "bar", name: "routed (auto)", x, y: t.map((r) => (r.counterfactual_energy_j - r.energy_saved_j) / 3600), width: half, offset: -half, marker: { color: "#1f7a4a" } },
    { type: "bar", name: "always the reference member", x, y: t.map((r) => r.counterfactual_energy_j / 3600), width: half, offset: 0, marker: { color: "#b9c7bd" } },
  ], { barmode: "overlay", yaxis: { title: { text: "Wh (estimated)" }, rangemode: "tozero", gridcolor: "#eef2ef", automargin: true } });

  const withEnergy = members.filter((r) => r.energy_j);
  draw("chart-share", [
    { type: "bar", orientation: "h", name: "measured", y: withEnergy.map((r) => r.member), x: withEnergy.map((r) => 100 * (r.measured_energy_share || 0)), marker: { color: "#1f7a4a" } },
    { type: "bar", orientation: "h", name: "estimated", y: withEnergy.map((r) => r.member), x: withEnergy.map((r) => 100 * (r.estimated_energy_share || 0)), marker: { color: ESTIMATED } },
  ], { xaxis: { title: { text: "% of the member's energy" }, range: [0, 101], dtick: 25, ticksuffix: "%", gridcolor: "#eef2ef" }, yaxis: { type: "category", automargin: true }, margin: { l: 90, r: 24, t: 8, b: phone() ? 90 : 56 } });

  overTime();
  document.getElementById("split").addEventListener("change", overTime);
})();
