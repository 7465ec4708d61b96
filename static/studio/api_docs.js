// The API docs page: Swagger UI (static/vendor) drawn from the studio's
// OpenAPI document. A file rather than an inline script: the studio's
// Content-Security-Policy allows scripts from this site only.
(function () {
  "use strict";
  const target = document.getElementById("swagger-ui");
  if (!target || typeof window.SwaggerUIBundle !== "function") return;
  window.SwaggerUIBundle({
    url: target.dataset.schemaUrl,
    domNode: target,
    deepLinking: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    // The page's own session may read (GET) in "Try it out"; writes need a token (Authorize).
    withCredentials: true,
    validatorUrl: null,  // no badge from validator.swagger.io: the page works offline
  });
})();
