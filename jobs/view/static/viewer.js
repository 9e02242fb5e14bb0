// Loupe viewer: keyboard navigation between units, heat-map overlays, and per-tile error marks.
(function () {
  "use strict";
  function follow(id) {
    var link = document.getElementById(id);
    if (link) { window.location.href = link.href; }
  }
  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey) { return; }
    var target = event.target || {};
    var typing = target.tagName === "TEXTAREA" || target.tagName === "SELECT" ||
      (target.tagName === "INPUT" && target.type !== "checkbox");
    if (typing) { return; }
    if (event.key === "ArrowLeft" || event.key === "k") { follow("prev"); }
    else if (event.key === "ArrowRight" || event.key === "j") { follow("next"); }
    else if (event.key === "u") { follow("layer-link"); }
    else if (event.key === "h") {
      var toggle = document.getElementById("heat-toggle");
      if (toggle) { toggle.checked = !toggle.checked; toggle.dispatchEvent(new Event("change")); }
    }
  });
  var toggle = document.getElementById("heat-toggle");
  if (toggle) {
    toggle.addEventListener("change", function () { document.body.classList.toggle("heat-on", toggle.checked); });
  }
  // A damaged or missing object breaks only its own tile: mark it and say so.
  function markBroken(img) {
    if (img.classList.contains("broken") || img.classList.contains("heat")) { return; }
    img.classList.add("broken");
    var note = document.createElement("span");
    note.className = "tile-error";
    note.textContent = "image unavailable";
    img.insertAdjacentElement("afterend", note);
  }
  window.loupeMarkBroken = markBroken;
  // Layer grids: fetch a tile's render only when the tile is on screen (no more requests than tiles seen).
  var lazy = document.querySelectorAll("img.lazy[data-src]");
  if ("IntersectionObserver" in window) {
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (entry.isIntersecting) {
          entry.target.src = entry.target.dataset.src;
          observer.unobserve(entry.target);
        }
      });
    }, { rootMargin: "0px" });
    lazy.forEach(function (img) { observer.observe(img); });
  } else {
    lazy.forEach(function (img) { img.src = img.dataset.src; });
  }
  document.querySelectorAll("img[data-failed]").forEach(markBroken);
})();
