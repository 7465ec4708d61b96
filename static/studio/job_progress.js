// The job progress component (templates/jobs/_progress.html), one for every
// kind of job: status, a bar and what the job is doing, drawn from the job's
// events. An element with data-job-progress follows its job's event stream
// over the WebSocket by itself and, when the job ends, fetches its container
// again (the closest element with data-refresh-url), which then shows the
// result. The job page, which reads the stream for its charts already, marks
// its component data-passive and hands it each event (StudioJobProgress.show).
(function () {
  "use strict";
  const FINISHED = ["succeeded", "failed", "cancelled"];

  function formatSeconds(s) {
    if (s == null) return "?";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
  }

  function formatBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : Math.round(n)) + " " + units[i];
  }

  // "3 / 8 rows", or for a download "1.2 MiB / 6.1 MiB".
  function amounts(d) {
    if (d.unit === "bytes") return `${formatBytes(d.done)} / ${formatBytes(d.total)}`;
    return `${d.done} / ${d.total}` + (d.unit ? " " + d.unit : "");
  }

  function rate(d) {
    const perSecond = d.done / d.elapsed_s;
    return d.unit === "bytes" ? `${formatBytes(perSecond)}/s` : `${Math.round(perSecond)} ${d.unit || "items"}/s`;
  }

  // What each kind of event shows: [value, max, text]; null leaves the bar as it is.
  const VIEWS = {
    progress: (d) => [d.done, Math.max(d.total, 1), d.phase + (d.total > 1 ? `: ${amounts(d)}` : "") +
      (d.elapsed_s && d.done ? ` · ${rate(d)}` : "") +
      (d.eta_s != null ? ` · ETA ${formatSeconds(d.eta_s)}` : "")],
    metrics: (d) => [d.step, d.total_steps, `step ${d.step} / ${d.total_steps} · loss ${d.loss.toFixed(4)} · ` +
      `elapsed ${formatSeconds(d.elapsed_s)} · ETA ${formatSeconds(d.eta_s)}` +
      (d.tokens_per_s ? ` · ${Math.round(d.tokens_per_s)} tok/s` : "")],
  };

  // Draw one event ({kind, data}) on a component; true when the job has ended.
  function show(el, event) {
    const view = VIEWS[event.kind];
    if (view) {
      const [value, max, text] = view(event.data);
      const bar = el.querySelector("progress");
      bar.max = max;
      bar.value = value;
      el.querySelector("[data-role=text]").textContent = text;
    }
    if (event.kind !== "status") return false;
    const status = event.data.status;
    const badge = el.querySelector("[data-role=status]");  // none on the job page: its status box says it
    el.dataset.status = status;
    if (badge) {
      badge.textContent = status;
      badge.className = `badge status-${status}`;
    }
    return FINISHED.includes(status);
  }

  // A job's event stream (studio/live/consumers.py), kept open: it (re)connects
  // with back-off, says the last seq the page has, and hands on each newer
  // event (a catch-up arrives as lists, a live event alone). onState hears
  // "open", "refused" (4401/4404: nothing more to try) or "lost"/"unopened"
  // (it may return a promise, awaited before the next try).
  function followStream(wsPath, { lastSeq, onEvent, onState = () => {} }) {
    let retryMs = 500, stopped = false;
    function connect() {
      if (stopped) return;
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      const socket = new WebSocket(scheme + location.host + wsPath);
      let opened = false;
      socket.onopen = () => {
        opened = true;
        retryMs = 500;
        onState("open");
        socket.send(JSON.stringify({ after: lastSeq() }));
      };
      socket.onmessage = (message) => {
        for (const event of [].concat(JSON.parse(message.data))) {
          if (stopped) break;
          if (event.seq > lastSeq()) onEvent(event);
        }
        if (stopped) socket.close();
      };
      socket.onclose = async (close) => {
        if (stopped) return;
        if (close.code === 4401 || close.code === 4404) { onState("refused"); return; }
        await onState(opened ? "lost" : "unopened");
        setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, 10000);
      };
    }
    connect();
    return { stop() { stopped = true; } };
  }

  function follow(el) {
    if (el.dataset.bound || el.hasAttribute("data-passive")) return;
    el.dataset.bound = "1";
    let lastSeq = parseInt(el.dataset.after || "0", 10);
    if (FINISHED.includes(el.dataset.status)) return;

    function refresh() {
      const container = el.closest("[data-refresh-url]");
      if (container && document.contains(container)) {
        htmx.ajax("GET", container.dataset.refreshUrl, { target: container, swap: "outerHTML" });
      }
    }

    const stream = followStream(el.dataset.wsPath, {
      lastSeq: () => lastSeq,
      onEvent(event) {
        if (!document.contains(el)) { stream.stop(); return; }  // swapped away: nobody watches
        lastSeq = event.seq;
        if (show(el, event)) {
          stream.stop();
          refresh();
        }
      },
    });
  }

  function followAll(root) {
    if (root.matches && root.matches("[data-job-progress]")) follow(root);
    if (root.querySelectorAll) root.querySelectorAll("[data-job-progress]").forEach(follow);
  }
  window.StudioJobProgress = { show, formatSeconds, followStream };
  document.addEventListener("DOMContentLoaded", () => followAll(document));
  document.addEventListener("htmx:load", (event) => followAll(event.target));
})();
