// Compare page: each job's train loss (solid, smoothable) and eval loss
// (dashed, dots) on one chart, by step or by tokens seen. The curves come
// in the page as [step, tokens seen, loss] triples.
(function () {
  "use strict";
  const box = document.getElementById("compare");
  if (!box) return;
  const { lineChart, smoothInto, setLogScale, resetZoom, bindControls } = window.StudioCharts;
  const jobs = JSON.parse(document.getElementById("compare-data").textContent);
  const X_TITLES = { step: "step", tokens: "tokens seen" };
  let align = "step";

  const chart = lineChart(document.getElementById("compare-chart"), { datasets: jobs.flatMap((job) => [
    { label: `#${job.id} train`, data: [], borderColor: job.color, borderWidth: 2, order: 1 },
    { label: `#${job.id} eval`, data: [], borderColor: job.color, backgroundColor: job.color, borderDash: [6, 4],
      pointRadius: 3, order: 0 },
  ]) });

  const smoothing = bindControls(box, {
    onSmoothing: () => draw(),
    onLogScale: (on) => setLogScale([chart], on),
    onReset: () => resetZoom([chart]),
  });

  function points(triples) {
    const column = align === "tokens" ? 1 : 0;
    return triples.map((t) => ({ x: t[column], y: t[2] }));
  }

  function draw() {
    const shown = chart.data.datasets;
    jobs.forEach((job, i) => {
      const train = [];
      smoothInto(train, points(job.train), smoothing());
      shown[2 * i].data = train;
      shown[2 * i + 1].data = points(job.eval);
    });
    chart.options.scales.x.title.text = X_TITLES[align];
    chart.update("none");
  }

  box.querySelectorAll("[name=align]").forEach((radio) => radio.addEventListener("change", () => {
    align = radio.value;
    resetZoom([chart]);  // a step range means nothing in tokens
    draw();
  }));

  window.studioCompare = { chart, jobs };
  draw();
})();
