// Live job page: one WebSocket carries the job's events ({seq, kind, data}).
// On every (re)connect the page says the last seq it has and the server sends
// the rest, so a reload, a sleeping laptop or a server restart loses nothing.
// The stored history, and the events while a socket will not open, come
// from /jobs/<id>/events/?after=N instead.
(function () {
  "use strict";
  const root = document.getElementById("job");
  if (!root) return;
  const { lineChart, smoothInto, setLogScale, linkZoom, resetZoom, bindControls } = window.StudioCharts;
  const lossCanvas = document.getElementById("loss-chart");
  const progressBox = root.querySelector("[data-job-progress]");  // the shared component (job_progress.js)
  const { show: showProgress, followStream } = window.StudioJobProgress;
  const logBox = document.getElementById("log");
  const liveState = document.getElementById("live-state");
  const MAX_LOG_LINES = 500;
  const FINISHED = ["succeeded", "failed", "cancelled"];

  let lastSeq = 0;
  let finished = FINISHED.includes(document.getElementById("job-status").dataset.status);

  // Every point is kept here; the charts draw a decimated copy.
  // penalty: a term the method adds to the loss it trains on (AdaLoRA), charted on its own
  const series = { train: [], smooth: [], eval: [], lr: [], grad_norm: [], tokens_per_s: [], memory_mib: [],
    penalty: [], rewards_chosen: [], rewards_rejected: [], reward_margin: [], reward_accuracy: [], kl: [],
    reward_mean: [], completion_length: [], reward_baseline: [], best_score: [] };
  // kl: KTO's estimate of the policy's KL divergence from the reference
  const STEP_METRICS = ["lr", "grad_norm", "tokens_per_s", "memory_mib", "penalty", "rewards_chosen",
                        "rewards_rejected", "reward_margin", "reward_accuracy", "kl", "reward_mean",
                        "completion_length", "reward_baseline"];
  const lossChart = lineChart(lossCanvas, { yTitle: "loss", datasets: [
    // order: lower is drawn on top
    { label: "train loss", data: series.train, borderColor: "rgba(37, 99, 235, 0.3)", borderWidth: 1, order: 2 },
    { label: "train loss (smoothed)", data: series.smooth, borderColor: "#2563eb", borderWidth: 2, order: 1 },
    { label: "eval loss", data: series.eval, borderColor: "#dc2626", backgroundColor: "#dc2626", pointRadius: 3,
      order: 0 },
  ] });
  const metricCharts = [...document.querySelectorAll("[data-metric]")].map((canvas) => lineChart(canvas, {
    legend: false, yTitle: canvas.dataset.label,
    datasets: [{ label: canvas.dataset.label, data: series[canvas.dataset.metric], borderColor: canvas.dataset.color }],
  }));
  // Preference jobs: the implicit rewards of the chosen and rejected replies and their margin.
  const rewardsCanvas = document.getElementById("rewards-chart");
  const rewardsChart = rewardsCanvas && lineChart(rewardsCanvas, { yTitle: "reward", datasets: [
    { label: "reward margin", data: series.reward_margin, borderColor: "#7c3aed", borderWidth: 2 },
    { label: "chosen", data: series.rewards_chosen, borderColor: "#16a34a", borderWidth: 1 },
    { label: "rejected", data: series.rewards_rejected, borderColor: "#dc2626", borderWidth: 1 },
  ] });
  const charts = [lossChart, ...(rewardsChart ? [rewardsChart] : []), ...metricCharts];
  const pauses = [];  // where the run went back to the queue mid-way (charts.js draws them)
  for (const chart of charts) chart.$pauses = pauses;
  linkZoom(charts);

  const smoothing = bindControls(root.querySelector(".chart-controls"), {
    onSmoothing: () => { resmooth(); redraw(); },
    onLogScale: (on) => setLogScale(charts, on),
    onReset: () => resetZoom(charts),
  });
  let nextSmooth;  // the EMA that continues the smoothed curve
  const resmooth = () => { nextSmooth = smoothInto(series.smooth, series.train, smoothing()); };
  resmooth();

  // A resumed run repeats the steps after its last checkpoint: drop ours from there.
  function dropFromStep(step) {
    for (const points of Object.values(series)) {
      while (points.length && points[points.length - 1].x >= step) points.pop();
    }
    resmooth();
  }

  const logLines = [];
  let logChanged = false;
  function addLog(text) {
    logLines.push(text);
    if (logLines.length > MAX_LOG_LINES) logLines.splice(0, logLines.length - MAX_LOG_LINES);
    logChanged = true;
  }

  function refreshStatus() {
    htmx.ajax("GET", root.dataset.statusUrl, { target: "#job-status", swap: "outerHTML" });
  }
  // A job that ends within moments of a click (cancel) races the click's own
  // response: when that older status lands after the stream said the job
  // finished, fetch the status box again.
  document.body.addEventListener("htmx:afterSwap", () => {
    const box = document.getElementById("job-status");
    if (finished && box && !FINISHED.includes(box.dataset.status)) setTimeout(refreshStatus, 300);
  });

  const handlers = {
    metrics(d) {
      const last = series.train[series.train.length - 1];
      if (last && d.step <= last.x) dropFromStep(d.step);
      series.train.push({ x: d.step, y: d.loss });
      series.smooth.push({ x: d.step, y: nextSmooth(d.loss) });
      for (const key of STEP_METRICS) {
        if (d[key] != null) series[key].push({ x: d.step, y: d[key] });
      }
      lossCanvas.dataset.points = series.train.length;
      // GRPO: a few of the step's sampled completions, with their rewards, in the log.
      for (const s of d.samples || []) addLog(`step ${d.step} sample (reward ${s.reward}): ${s.completion}`);
      if (rewardsCanvas) rewardsCanvas.dataset.points = series.reward_margin.length;
    },
    eval(d) {
      series.eval.push({ x: d.step, y: d.eval_loss });
      const extra = d.reward_margin != null
        ? ` · reward accuracy ${d.accuracy.toFixed(3)} · margin ${d.reward_margin.toFixed(3)}`
        : d.f1 != null ? ` · accuracy ${d.accuracy.toFixed(3)} · F1 ${d.f1.toFixed(3)}`
        : (d.perplexity != null ? ` · perplexity ${d.perplexity.toFixed(2)}` : "");
      addLog(`eval at step ${d.step}: loss ${d.eval_loss.toFixed(4)}${extra}${d.best ? " (best so far)" : ""}`);
    },
    // Golden prompts: one row per prompt, one column per step answered.
    samples(d) {
      const table = document.getElementById("golden-table");
      document.getElementById("golden").hidden = false;
      if (!table.rows.length) {
        const head = table.insertRow();
        head.appendChild(document.createElement("th")).textContent = "Prompt";
        for (const s of d.samples) table.insertRow().insertCell().textContent = s.prompt;
      }
      // A resumed run answers again at steps after its checkpoint: those columns are replaced.
      const label = d.step ? `step ${d.step}` : "before training";
      let column = [...table.rows[0].cells].findIndex((cell) => cell.textContent === label);
      if (column < 0) {
        table.rows[0].appendChild(document.createElement("th")).textContent = label;
        column = table.rows[0].cells.length - 1;
      }
      d.samples.forEach((s, i) => {
        const row = table.rows[i + 1];
        (row.cells[column] || row.insertCell()).textContent = s.answer;
      });
    },
    // A merge search's candidate was scored (or failed): its point on the best-so-far chart, its table row
    // (added when the page was drawn before the candidate was queued; its job links come with a reload).
    candidate(d) {
      if (d.best_score != null) series.best_score.push({ x: d.index + 1, y: d.best_score });
      const table = document.getElementById("search-candidates");
      const score = d.score != null ? String(d.score) : `failed: ${d.message}`;
      let row = table && table.querySelector(`tr[data-index="${d.index}"]`);
      if (table && !row) {
        row = table.insertRow();
        row.dataset.index = d.index;
        for (const value of [d.index, d.generation, ...Object.values(d.coefficients)]) {
          row.insertCell().textContent = value;
        }
        row.insertCell().dataset.score = "";
      }
      if (row) row.querySelector("[data-score]").textContent = score;
      addLog(`candidate ${d.index}: ${d.metric} ${score}${d.best_index === d.index ? " (best so far)" : ""}`);
    },
    log(d) { addLog(d.message); },
    checkpoint(d) { addLog(`checkpoint saved at step ${d.step}`); },
    artifact(d) { addLog(`${d.artifact_kind} ready`); },
    status(d) {
      addLog(`status: ${d.status}${d.message ? " – " + d.message : ""}`);
      // Back in the queue after training began: preempted for a more urgent job, or its worker was lost.
      const last = series.train[series.train.length - 1];
      if (d.status === "queued" && last) {
        const why = /preempt/i.test(d.message || "") ? "preempted" : "worker lost";
        pauses.push({ x: last.x, label: `paused: ${why}` });
      }
      finished = FINISHED.includes(d.status);
      if (finished) liveState.textContent = `Finished (${d.status})`;
    },
  };

  // Redraw at most once per animation frame however many events arrive. A
  // catch-up of many thousand events spans many frames: when a redraw costs
  // much, skip frames so that drawing takes at most ~1/4 of the time.
  let redrawPending = false, redrawCostMs = 0, redrawnAt = 0;
  function redraw() {
    if (redrawPending) return;
    redrawPending = true;
    requestAnimationFrame(function draw(now) {
      if (now - redrawnAt < 3 * redrawCostMs) { requestAnimationFrame(draw); return; }
      redrawPending = false;
      const started = performance.now();
      for (const chart of charts) chart.update("none");
      if (logChanged) {
        logChanged = false;
        logBox.textContent = logLines.join("\n") + "\n";
        logBox.scrollTop = logBox.scrollHeight;
      }
      redrawnAt = performance.now();
      redrawCostMs = redrawnAt - started;
    });
  }

  function handle(event) {
    if (event.seq <= lastSeq) return;  // already had it (the socket and the JSON fallback may overlap)
    lastSeq = event.seq;
    showProgress(progressBox, event);  // the bar: training steps and the phases of other kinds alike
    (handlers[event.kind] || (() => {}))(event.data);
    if (event.kind === "status" || event.kind === "artifact") refreshStatus();
    redraw();
  }

  async function catchUpOverHttp() {
    try {
      for (;;) {
        const response = await fetch(`${root.dataset.eventsUrl}?after=${lastSeq}`, { credentials: "same-origin" });
        if (!response.ok) return;
        const { events } = await response.json();
        if (!events.length) return;
        events.forEach(handle);
      }
    } catch (error) {
      // offline too: the next reconnect tries again
    }
  }

  function connect() {
    followStream(root.dataset.wsPath, {
      lastSeq: () => lastSeq,
      onEvent: handle,
      async onState(state) {
        if (state === "refused") {
          liveState.textContent = "Not allowed to watch this job (log in again).";
          return;
        }
        liveState.textContent = finished ? "Finished" : state === "open" ? "Live" : "Reconnecting…";
        if (state === "unopened") await catchUpOverHttp();  // the socket will not open: read the rest as JSON
      },
    });
  }

  // For tests and the curious: every train-loss step the page holds.
  window.studioJob = { charts, pauses, trainSteps: () => series.train.map((p) => p.x),
                       rewardMargins: () => series.reward_margin.map((p) => p.y) };
  // The stored history comes faster as JSON pages (5000 events a request)
  // than as one socket message per event; the socket then sends the rest.
  catchUpOverHttp().then(connect);
})();
