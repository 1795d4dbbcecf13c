// Progressive enhancement only: every page works without this file.
// Elements with data-confirm ask before a dangerous action (download of an original,
// delete, revoke). No inline handlers: the Content-Security-Policy allows none.
"use strict";
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-confirm]");
  if (link && !window.confirm(link.dataset.confirm)) {
    event.preventDefault();
  }
});
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
