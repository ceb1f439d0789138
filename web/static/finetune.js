// A fine-tuning job's loss curve: training loss per optimizer step, validation loss where it
// was evaluated, and the base model's validation loss as a reference line.
"use strict";

(function () {
  const el = document.getElementById("curve-data");
  const target = document.getElementById("chart-loss");
  if (!el || !target || !window.Plotly) return;
  const data = JSON.parse(el.textContent);
  const traces = [];
  if (data.train.length) {
    traces.push({ x: data.train.map((p) => p[0]), y: data.train.map((p) => p[1]),
      name: "training loss", mode: "lines", line: { color: "#1f7a4a" } });
  }
  if (data.valid.length) {
    traces.push({ x: data.valid.map((p) => p[0]), y: data.valid.map((p) => p[1]),
      name: "validation loss", mode: "lines+markers", line: { color: "#3b82c4" } });
  }
  const shapes = [];
  if (data.base_valid_loss !== null && data.base_valid_loss !== undefined) {
    shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: data.base_valid_loss,
      y1: data.base_valid_loss, line: { color: "#5d6b62", dash: "dot" } });  // amber is "estimated" only
  }
  Plotly.newPlot(target, traces, {
    height: 320, margin: { l: 56, r: 12, t: 8, b: 48 },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "system-ui, sans-serif", size: 12, color: "#1d2a22" },
    xaxis: { title: { text: "optimizer step" }, gridcolor: "#eef2ef" },
    yaxis: { title: { text: "loss (nats/token)" }, gridcolor: "#eef2ef", rangemode: "tozero" },
    legend: { orientation: "h", y: -0.25 }, shapes: shapes,
  }, { responsive: true, displaylogo: false });
})();
