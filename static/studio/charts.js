// Chart helpers shared by the job page and the compare page (Chart.js 4 with
// its decimation plugin and chartjs-plugin-zoom). Points are {x, y} objects
// sorted by x; a chart draws a decimated copy, so 100k points stay fast.
window.StudioCharts = (function () {
  "use strict";

  // Drag a box to zoom in on x, ctrl + wheel zooms, shift + drag pans.
  const ZOOM = {
    zoom: { mode: "x", drag: { enabled: true, backgroundColor: "rgba(37, 99, 235, 0.12)" },
            wheel: { enabled: true, modifierKey: "ctrl" } },
    pan: { enabled: true, mode: "x", modifierKey: "shift" },
  };

  // Whole numbers on x (a zoomed range ends anywhere); small values on y as
  // 2e-4 rather than 0.0002; otherwise Chart.js's own labels.
  const xTick = (value) => Math.round(value).toLocaleString();
  function yTick(value, index, ticks) {
    const own = Chart.Ticks.formatters[this.type === "logarithmic" ? "logarithmic" : "numeric"];
    const label = own.call(this, value, index, ticks);
    const small = value !== 0 && Math.abs(value) < 0.01;
    return label && small ? Number(value.toPrecision(2)).toExponential() : label;
  }

  // Dashed vertical lines where a run paused (preempted, or its worker lost) and later went on: the
  // chart's $pauses, a list of {x, label} the page fills (shared by the charts of one job).
  const pauseLines = {
    id: "pauseLines",
    afterDatasetsDraw(chart) {
      const { ctx, chartArea: area, scales: { x: scale } } = chart;
      let drawn = 0;
      for (const pause of chart.$pauses || []) {
        const x = scale.getPixelForValue(pause.x);
        if (x < area.left || x > area.right) continue;
        ctx.save();
        ctx.strokeStyle = "#d97706";
        ctx.setLineDash([4, 3]);
        ctx.beginPath();
        ctx.moveTo(x, area.top);
        ctx.lineTo(x, area.bottom);
        ctx.stroke();
        if (chart.options.plugins.legend.display) {  // labelled on the main chart only
          ctx.fillStyle = "#92400e";
          ctx.font = "11px sans-serif";
          ctx.fillText(pause.label, x + 3, area.top + 11);
        }
        ctx.restore();
        drawn += 1;
      }
      chart.$pausesDrawn = drawn;  // for tests: the lines in view at the last draw
    },
  };

  function lineChart(canvas, { datasets, xTitle = "step", yTitle = "", legend = true }) {
    return new Chart(canvas, {
      type: "line",
      plugins: [pauseLines],
      data: { datasets: datasets.map((d) => ({ pointRadius: 0, borderWidth: 1.5, ...d })) },
      options: {
        animation: false, parsing: false, normalized: true, maintainAspectRatio: false,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        scales: { x: { type: "linear", title: { display: true, text: xTitle }, ticks: { callback: xTick } },
                  y: { type: "linear", title: { display: !!yTitle, text: yTitle },
                       ticks: { callback: yTick, maxTicksLimit: legend ? 11 : 6 } } },
        plugins: {
          // min-max keeps spikes that an average would hide; it draws at most
          // 4 points per pixel column of the visible range.
          decimation: { enabled: true, algorithm: "min-max" },
          // A series without points (eval loss on a run without eval data) gets no legend entry: the
          // legend names only what is drawn. Decimation keeps the full data in _data.
          legend: { display: legend, labels: { boxHeight: 2, sort: (a, b) => a.datasetIndex - b.datasetIndex,
                                               filter: (item, data) => {
                                                 const d = data.datasets[item.datasetIndex];
                                                 return (d._data || d.data).length > 0;
                                               } } },
          zoom: ZOOM,
        },
      },
    });
  }

  // Exponential moving average, debiased like TensorBoard's so the first
  // points are not pulled towards 0. weight 0 = raw, 0.99 = very smooth.
  function ema(weight) {
    let value = 0, n = 0;
    return (y) => {
      value = value * weight + (1 - weight) * y;
      n += 1;
      return weight ? value / (1 - weight ** n) : y;
    };
  }

  // Fills target with the smoothed source; returns the EMA, to continue it.
  function smoothInto(target, source, weight) {
    const next = ema(weight);
    target.length = 0;
    for (const p of source) target.push({ x: p.x, y: next(p.y) });
    return next;
  }

  function setLogScale(charts, on) {
    for (const chart of charts) {
      chart.options.scales.y.type = on ? "logarithmic" : "linear";
      chart.update("none");
    }
  }

  // Zooming or panning one chart shows the same x range in the others.
  function linkZoom(charts) {
    const follow = ({ chart }) => {
      const { min, max } = chart.scales.x;
      for (const other of charts) if (other !== chart) other.zoomScale("x", { min, max }, "none");
    };
    for (const chart of charts) {
      chart.options.plugins.zoom.zoom.onZoomComplete = follow;
      chart.options.plugins.zoom.pan.onPanComplete = follow;
    }
  }

  function resetZoom(charts) {
    for (const chart of charts) chart.resetZoom("none");
  }

  // The controls above a chart: smoothing slider, log scale, reset zoom.
  function bindControls(box, { onSmoothing, onLogScale, onReset }) {
    const slider = box.querySelector("[name=smoothing]");
    const shown = box.querySelector("[data-smoothing-value]");
    const smoothing = () => Number(slider.value);
    slider.addEventListener("input", () => { shown.textContent = smoothing().toFixed(2); onSmoothing(smoothing()); });
    box.querySelector("[name=log-scale]").addEventListener("change", (e) => onLogScale(e.target.checked));
    box.querySelector("[data-reset-zoom]").addEventListener("click", onReset);
    shown.textContent = smoothing().toFixed(2);
    return smoothing;
  }

  return { lineChart, smoothInto, setLogScale, linkZoom, resetZoom, bindControls };
})();
