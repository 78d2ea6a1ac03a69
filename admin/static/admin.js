// faiss-proxy admin: progressive enhancement only (the page works without it).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Copy button for the API key shown once.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.querySelector(button.dataset.copy);
      field.select();
      try {
        await navigator.clipboard.writeText(field.value);
      } catch (err) {
        document.execCommand("copy");
      }
      button.textContent = "Copied";
    });
  }
  // Confirmation before revoking a key or suspending a tenant.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  // Delete stays disabled until the tenant's name is typed (the server checks it too).
  for (const form of document.querySelectorAll("form[data-typed]")) {
    const input = form.querySelector("input[name=confirm]");
    const button = form.querySelector("button[type=submit]");
    const update = () => { button.disabled = input.value !== form.dataset.typed; };
    input.addEventListener("input", update);
    update();
  }
});
