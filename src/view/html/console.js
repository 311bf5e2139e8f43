// run-chain's console: refreshes a page that is complete without this script.
// - Every 2 s (not while the tab is hidden, nor while paused), the page is fetched again
//   and each element marked data-live is replaced by the element with the same id in it.
// - A running run's output (<pre data-src data-offset>) is extended with what the run wrote
//   after that byte offset, fetched from the JSON API, and inserted as text (a text node,
//   never HTML): task output is hostile data.
// - <time data-until> counts down.
// - A running run's output is shown from its end, and followed while it is scrolled there.
"use strict";
(function () {
  var PERIOD = 2000;
  var paused = false;
  var busy = false;

  function pauseButton() {
    var controls = document.getElementById("controls");
    if (!controls) return;
    var b = document.createElement("button");
    b.type = "button";
    b.id = "pause";
    b.textContent = "Pause updates";
    b.addEventListener("click", function () {
      paused = !paused;
      b.textContent = paused ? "Resume updates" : "Pause updates";
      b.setAttribute("aria-pressed", paused ? "true" : "false");
      if (!paused) tick();
    });
    controls.appendChild(b);
  }

  function countdowns() {
    var now = Date.now();
    document.querySelectorAll("time[data-until]").forEach(function (t) {
      var left = Math.max(0, Number(t.getAttribute("data-until")) - now);
      var s = Math.round(left / 1000);
      var text = s >= 3600 ? Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m"
        : s >= 60 ? Math.floor(s / 60) + "m " + (s % 60) + "s" : s + "s";
      t.textContent = text;
    });
  }

  // Replace each data-live element by its namesake in the page fetched again; an output
  // <pre> that still follows the same run keeps its text (it is extended, not replaced).
  function swap(doc) {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      if (!el.id) return;
      var fresh = doc.getElementById(el.id);
      if (!fresh) return;
      var mine = el.querySelector("pre[data-src]");
      var theirs = fresh.querySelector("pre[data-src]");
      if (mine && theirs && mine.getAttribute("data-src") === theirs.getAttribute("data-src")) {
        theirs.replaceWith(mine);
      }
      el.replaceWith(document.importNode(fresh, true));
    });
  }

  function extend(pre) {
    var src = pre.getAttribute("data-src");
    var from = pre.getAttribute("data-offset") || "0";
    return fetch(src + "?from=" + encodeURIComponent(from), { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (o) {
        if (pre.getAttribute("data-src") !== src || pre.getAttribute("data-offset") !== from) return false;
        var following = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        if (o.output_skipped) pre.appendChild(document.createTextNode("\n[… output no longer kept …]\n"));
        if (o.output) pre.appendChild(document.createTextNode(o.output));
        if (following) pre.scrollTop = pre.scrollHeight;
        pre.setAttribute("data-offset", String(o.output_to));
        if (!o.running) {
          pre.removeAttribute("data-src");
          return true; // the run has ended: show its final state
        }
        return false;
      });
  }

  function refreshPage() {
    return fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (text) { swap(new DOMParser().parseFromString(text, "text/html")); });
  }

  function tick() {
    if (paused || document.hidden || busy) return;
    busy = true;
    var outputs = Array.prototype.slice.call(document.querySelectorAll("pre[data-src]"));
    var live = document.querySelector("[data-live]");
    Promise.all(outputs.map(extend))
      .then(function (ended) {
        if (live || ended.indexOf(true) >= 0) return refreshPage();
      })
      .catch(function () { /* the next tick tries again */ })
      .then(function () { busy = false; countdowns(); });
  }

  document.addEventListener("visibilitychange", function () { if (!document.hidden) tick(); });
  document.addEventListener("DOMContentLoaded", function () {
    pauseButton();
    countdowns();
    // A running run's output is followed from its end (scrolled back up, it stays there).
    document.querySelectorAll("pre[data-src]").forEach(function (p) { p.scrollTop = p.scrollHeight; });
    setInterval(tick, PERIOD);
    setInterval(countdowns, 1000);
  });
})();
