// Live job page: one WebSocket carries the job's events ({seq, kind, data}).
// On every (re)connect the page says the last seq it has and the server sends
// the rest, so a reload, a sleeping laptop or a server restart loses nothing.
(function () {
  "use strict";
  const root = document.getElementById("job");
  if (!root) return;
  const chartCanvas = document.getElementById("loss-chart");
  const progress = document.getElementById("progress");
  const progressText = document.getElementById("progress-text");
  const logBox = document.getElementById("log");
  const liveState = document.getElementById("live-state");
  const MAX_LOG_LINES = 500;
  const FINISHED = ["succeeded", "failed", "cancelled"];

  let lastSeq = 0;
  let finished = FINISHED.includes(document.getElementById("job-status").dataset.status);
  let retryMs = 500;

  const chart = new Chart(chartCanvas, {
    type: "line",
    data: { datasets: [
      { label: "train loss", data: [], borderColor: "#2563eb", pointRadius: 0, borderWidth: 1.5 },
      { label: "eval loss", data: [], borderColor: "#dc2626", pointRadius: 3, borderWidth: 1.5 },
    ] },
    options: {
      animation: false, parsing: false, maintainAspectRatio: false,
      scales: { x: { type: "linear", title: { display: true, text: "step" } },
                y: { title: { display: true, text: "loss" } } },
    },
  });

  function formatSeconds(s) {
    if (s == null) return "?";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
  }

  function addLog(text) {
    logBox.textContent += text + "\n";
    const lines = logBox.textContent.split("\n");
    if (lines.length > MAX_LOG_LINES) logBox.textContent = lines.slice(-MAX_LOG_LINES).join("\n");
    logBox.scrollTop = logBox.scrollHeight;
  }

  function refreshStatus() {
    htmx.ajax("GET", root.dataset.statusUrl, { target: "#job-status", swap: "outerHTML" });
  }

  const handlers = {
    metrics(d) {
      chart.data.datasets[0].data.push({ x: d.step, y: d.loss });
      chartCanvas.dataset.points = chart.data.datasets[0].data.length;
      progress.max = d.total_steps;
      progress.value = d.step;
      progressText.textContent = `step ${d.step} / ${d.total_steps} · loss ${d.loss.toFixed(4)} · elapsed ` +
        `${formatSeconds(d.elapsed_s)} · ETA ${formatSeconds(d.eta_s)}` +
        (d.tokens_per_s ? ` · ${Math.round(d.tokens_per_s)} tok/s` : "");
    },
    eval(d) {
      chart.data.datasets[1].data.push({ x: d.step, y: d.eval_loss });
      const extra = d.accuracy != null ? ` · accuracy ${d.accuracy.toFixed(3)} · F1 ${d.f1.toFixed(3)}`
        : (d.perplexity != null ? ` · perplexity ${d.perplexity.toFixed(2)}` : "");
      addLog(`eval at step ${d.step}: loss ${d.eval_loss.toFixed(4)}${extra}${d.best ? " (best so far)" : ""}`);
    },
    log(d) { addLog(d.message); },
    checkpoint(d) { addLog(`checkpoint saved at step ${d.step}`); },
    artifact(d) { addLog(`${d.artifact_kind} ready`); },
    status(d) {
      addLog(`status: ${d.status}${d.message ? " – " + d.message : ""}`);
      finished = FINISHED.includes(d.status);
      if (finished) liveState.textContent = `Finished (${d.status})`;
    },
  };

  let pendingChartUpdate = false;
  function handle(event) {
    if (event.seq <= lastSeq) return;
    lastSeq = event.seq;
    (handlers[event.kind] || (() => {}))(event.data);
    if (event.kind === "status" || event.kind === "artifact") refreshStatus();
    if (!pendingChartUpdate) {  // redraw at most once per frame, however many events arrive
      pendingChartUpdate = true;
      requestAnimationFrame(() => { pendingChartUpdate = false; chart.update("none"); });
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + root.dataset.wsPath);
    socket.onopen = () => {
      retryMs = 500;
      liveState.textContent = finished ? "Finished" : "Live";
      socket.send(JSON.stringify({ after: lastSeq }));
    };
    socket.onmessage = (message) => handle(JSON.parse(message.data));
    socket.onclose = (close) => {
      if (close.code === 4401 || close.code === 4404) {
        liveState.textContent = "Not allowed to watch this job (log in again).";
        return;
      }
      liveState.textContent = finished ? "Finished" : "Reconnecting…";
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 10000);
    };
  }
  connect();
})();
