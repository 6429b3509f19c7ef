// foobar: small progressive enhancements. The site works without this file; it only adds
// a live "characters left" counter under the post box.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const box of document.querySelectorAll("textarea[data-max]")) {
    const max = Number(box.dataset.max);
    const counter = document.querySelector(`[data-counter-for="${box.id}"]`);
    if (!counter || !Number.isFinite(max)) continue;
    const update = () => {
      // Count characters the way the server does: trimmed, by code point.
      const left = max - Array.from(box.value.trim()).length;
      counter.textContent = String(left);
      counter.classList.toggle("near", left >= 0 && left < 20);
      counter.classList.toggle("over", left < 0);
    };
    box.addEventListener("input", update);
    update();
  }
});
