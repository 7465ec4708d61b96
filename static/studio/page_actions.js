// Small behaviours of the pages, bound here rather than written inline in the
// HTML: the Content-Security-Policy allows scripts from this site only (no
// inline handlers, no eval), so every page behaviour lives in a static file.
(function () {
  "use strict";

  // <input data-select-on-focus>: the whole secret is selected for copying.
  document.addEventListener("focusin", (event) => {
    if (event.target.matches && event.target.matches("[data-select-on-focus]")) event.target.select();
  });

  // <button data-copy-from="id">: copies that input's value.
  document.addEventListener("click", (event) => {
    const button = event.target.closest && event.target.closest("[data-copy-from]");
    if (!button) return;
    const input = document.getElementById(button.dataset.copyFrom);
    navigator.clipboard.writeText(input.value).then(() => { button.textContent = "Copied"; });
  });

  // <select data-submit-on-change>: picking a value sends its form (the header's team switcher).
  document.addEventListener("change", (event) => {
    if (event.target.matches && event.target.matches("[data-submit-on-change]")) event.target.form.submit();
  });

  // <div data-pause-while-editing hx-trigger="every 3s">: a poll skips its turn
  // while the user types in a field inside (a priority being changed).
  document.addEventListener("htmx:confirm", (event) => {
    const element = event.detail.elt;
    if (element.matches("[data-pause-while-editing]") && element.querySelector("input:focus")) {
      event.preventDefault();
    }
  });

  // <form data-upload-progress>: its bar and text follow the upload. Bound on
  // the form itself, so it runs before listeners further up the page.
  function followUpload(form) {
    if (form.dataset.progressBound) return;
    form.dataset.progressBound = "1";
    form.addEventListener("htmx:xhr:progress", (event) => {
      const { loaded, total } = event.detail;
      const bar = form.querySelector("#upload-progress");
      bar.max = total;
      bar.value = loaded;
      form.querySelector("#upload-progress-text").textContent = loaded >= total ? "Uploaded; checking every row…"
        : Math.floor(100 * loaded / total) + " % uploaded";
    });
  }
  function bindUploads(root) {
    if (root.matches && root.matches("[data-upload-progress]")) followUpload(root);
    if (root.querySelectorAll) root.querySelectorAll("[data-upload-progress]").forEach(followUpload);
  }
  document.addEventListener("DOMContentLoaded", () => bindUploads(document));
  document.addEventListener("htmx:load", (event) => bindUploads(event.target));
})();
