// Progressive enhancement only: every page works without this file.
// 1. Drag and drop onto the upload box. 2. Live job snapshots over server-sent events.
(function () {
  "use strict";
  var drop = document.querySelector("[data-drop]");
  if (drop) {
    var input = drop.querySelector("input[type=file]");
    var shown = drop.querySelector("[data-drop-name]");
    var name = function () { shown.textContent = input.files.length ? "Chosen: " + input.files[0].name : ""; };
    input.addEventListener("change", name);
    ["dragenter", "dragover"].forEach(function (t) {
      drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (t) {
      drop.addEventListener(t, function () { drop.classList.remove("over"); });
    });
    drop.addEventListener("drop", function (e) {
      e.preventDefault();
      if (e.dataTransfer && e.dataTransfer.files.length) { input.files = e.dataTransfer.files; name(); }
    });
  }

  // After htmx swapped a table, move focus to the message saying what happened.
  document.body.addEventListener("htmx:afterSettle", function () {
    var m = document.getElementById("message");
    if (m) { m.focus(); }
  });

  var main = document.querySelector("main[data-job]");
  if (!main || !window.EventSource) { return; }
  var job = main.getAttribute("data-job");
  var watch = (main.getAttribute("data-watch") || "").split(" ").filter(Boolean);
  var live = main.hasAttribute("data-live");
  var finals = ["done", "cancelled", "failed"];
  var set = function (key, value) {
    // Only real changes: a live region would read out the same words again.
    document.querySelectorAll("[data-k=" + key + "]").forEach(function (el) {
      if (el.textContent !== String(value)) { el.textContent = value; }
    });
  };
  var show = function (key, on) {
    document.querySelectorAll("[data-k=" + key + "]").forEach(function (el) { el.hidden = !on; });
  };
  var duration = function (s) {
    if (s === null || s === undefined) { return "working it out"; }
    s = Math.max(0, Math.ceil(s));
    if (s < 90) { return s + " s"; }
    var m = Math.floor(s / 60);
    return m < 90 ? m + " min " + String(s % 60).padStart(2, "0") + " s" : Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  };
  var source = null;
  var connect = function () {
    source = new EventSource("/api/jobs/" + job + "/events");
    source.addEventListener("job", function (e) {
      var j = JSON.parse(e.data);
      show("conn", false);
      set("status", j.status);
      if (watch.length && watch.indexOf(j.status) < 0) { source.close(); window.location.reload(); return; }
      if (!live) { return; }
      var p = j.progress;
      set("done", p.done); set("total", p.total); set("succeeded", p.succeeded); set("failed", p.failed);
      set("eta", j.status === "sending" ? duration(p.eta_seconds) : "—");
      set("queue_position", j.queue_position || ""); show("queue", !!j.queue_position);
      set("paused_seconds", p.paused_seconds || 0); show("paused", p.paused_seconds > 0);
      var bar = document.getElementById("bar");
      if (bar) { bar.max = p.total || 1; bar.value = p.done; }
      if (finals.indexOf(j.status) >= 0) { source.close(); window.location.assign(main.getAttribute("data-done")); }
    });
    source.onerror = function () {
      show("conn", true);
      // The browser retries by itself unless it gave up (CLOSED): then start again ourselves.
      if (source.readyState === EventSource.CLOSED) { setTimeout(connect, 1000); }
    };
  };
  connect();
})();
