// Playground: send a chat request over /ws/playground/ and draw the reply
// pieces as the worker streams them, one column per model.
(function () {
  "use strict";
  const form = document.getElementById("playground");
  if (!form) return;
  const state = document.getElementById("playground-state");
  const errors = document.getElementById("playground-errors");
  const sendButton = document.getElementById("send");
  let socket, current = null, retryMs = 500;

  function column(side) { return document.querySelector(`.answer[data-side="${side}"]`); }

  function showErrors(message) {
    errors.textContent = message;
    errors.hidden = !message;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + form.dataset.wsPath);
    socket.onopen = () => { retryMs = 500; state.textContent = "Ready"; sendButton.disabled = false; };
    socket.onclose = (close) => {
      sendButton.disabled = true;
      if (close.code === 4401) { state.textContent = "Log in again to chat."; return; }
      state.textContent = "Reconnecting…";
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 10000);
    };
    socket.onmessage = (message) => handle(JSON.parse(message.data));
  }

  function handle(m) {
    if (m.type === "error" && m.errors) {
      showErrors(Object.entries(m.errors).map(([field, text]) => `${field}: ${text}`).join("\n"));
      state.textContent = "Ready";
      return;
    }
    if (m.type === "accepted") {
      current = { id: m.request_id, waiting: new Set(m.sides.map((s) => s.side)) };
      for (const s of m.sides) {
        const col = column(s.side);
        col.hidden = false;
        col.querySelector(".answer-title").textContent = s.name;
        col.querySelector(".answer-text").textContent = "";
        col.querySelector(".answer-text").classList.remove("answer-empty");
        col.querySelector(".answer-stats").textContent = "waiting for the worker…";
      }
      return;
    }
    if (!current || m.request_id !== current.id) return;  // a reply to an earlier message
    const col = column(m.side);
    if (m.type === "piece") {
      col.querySelector(".answer-text").textContent += m.text;
      col.querySelector(".answer-stats").textContent = "generating…";
    } else if (m.type === "done" || m.type === "error") {
      col.querySelector(".answer-stats").textContent = m.type === "done"
        ? `${m.pieces} pieces in ${m.seconds} s` : `failed: ${m.message}`;
      // an empty answer says why (the worker's empty_reason), never a blank bubble
      if (m.type === "done" && m.empty_reason) {
        col.querySelector(".answer-text").textContent = `No answer: ${m.empty_reason}.`;
        col.querySelector(".answer-text").classList.add("answer-empty");
      }
      current.waiting.delete(m.side);
      if (!current.waiting.size) state.textContent = "Ready";
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    showErrors("");
    const data = new FormData(form);
    const artifacts = [data.get("artifact_a"), data.get("artifact_b")].filter(Boolean).map(Number);
    column("b").hidden = artifacts.length < 2;
    socket.send(JSON.stringify({
      artifacts, prompt: data.get("prompt"), system_prompt: data.get("system_prompt"),
      temperature: Number(data.get("temperature")), top_p: Number(data.get("top_p")),
      max_new_tokens: Number(data.get("max_new_tokens")),
    }));
    state.textContent = "Sent…";
  });

  sendButton.disabled = true;
  connect();
})();
