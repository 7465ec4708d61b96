// The job progress component (templates/jobs/_progress.html): every element
// with data-job-progress follows its job's event stream over the WebSocket
// (the same stream the job page uses) and shows status, phase and a bar.
// When the job ends it fetches its container again (the closest element with
// data-refresh-url), which then shows the result. Works for swapped-in
// partials too (htmx:load).
(function () {
  "use strict";
  const FINISHED = ["succeeded", "failed", "cancelled"];

  function bind(el) {
    if (el.dataset.bound) return;
    el.dataset.bound = "1";
    const bar = el.querySelector("progress");
    const text = el.querySelector("[data-role=text]");
    const badge = el.querySelector("[data-role=status]");
    let lastSeq = parseInt(el.dataset.after || "0", 10);
    let retryMs = 500;
    let done = FINISHED.includes(el.dataset.status);

    function refresh() {
      const container = el.closest("[data-refresh-url]");
      if (container && document.contains(container)) {
        htmx.ajax("GET", container.dataset.refreshUrl, { target: container, swap: "outerHTML" });
      }
    }

    const handlers = {
      progress(d) {
        bar.max = Math.max(d.total, 1);
        bar.value = d.done;
        text.textContent = d.phase + (d.total > 1 ? ` ${d.done} / ${d.total}${d.unit ? " " + d.unit : ""}` : "");
      },
      metrics(d) {
        bar.max = d.total_steps;
        bar.value = d.step;
        text.textContent = `step ${d.step} / ${d.total_steps} · loss ${d.loss.toFixed(4)}`;
      },
      status(d) {
        el.dataset.status = d.status;
        badge.textContent = d.status;
        badge.className = `badge status-${d.status}`;
        if (d.message) text.textContent = d.message;
        if (FINISHED.includes(d.status)) {
          done = true;
          refresh();
        }
      },
    };

    function connect() {
      if (!document.contains(el) || done) return;
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      const socket = new WebSocket(scheme + location.host + el.dataset.wsPath);
      socket.onopen = () => {
        retryMs = 500;
        socket.send(JSON.stringify({ after: lastSeq }));
      };
      socket.onmessage = (message) => {
        if (!document.contains(el)) { socket.close(); return; }
        const event = JSON.parse(message.data);
        if (event.seq <= lastSeq) return;
        lastSeq = event.seq;
        (handlers[event.kind] || (() => {}))(event.data);
        if (done) socket.close();
      };
      socket.onclose = (close) => {
        if (done || close.code === 4401 || close.code === 4404) return;
        setTimeout(connect, retryMs);  // a restarting server or Redis: catch up from lastSeq
        retryMs = Math.min(retryMs * 2, 10000);
      };
    }
    connect();
  }

  function bindAll(root) {
    (root.querySelectorAll ? root : document).querySelectorAll("[data-job-progress]").forEach(bind);
    if (root.matches && root.matches("[data-job-progress]")) bind(root);
  }
  document.addEventListener("DOMContentLoaded", () => bindAll(document));
  document.addEventListener("htmx:load", (event) => bindAll(event.target));
})();
