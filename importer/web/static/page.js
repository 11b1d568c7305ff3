// Progressive enhancement only: every page works without this file.
// 1. Drag and drop onto the upload box. 2. The fixing grid's keys and unsaved cells.
// 3. Live job snapshots over server-sent events.
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

  // The fixing grid (check page). Every cell is an input of one form, so the page works without
  // this; here a cell behaves as in a spreadsheet: arrows move, typing or Enter or F2 edits,
  // Esc takes the cell back, Enter keeps it, Ctrl+S saves. Cells typed and not saved stay in
  // `pending` across table swaps (filters, pages, bulk fixes): a save sends them all, and only them.
  var pending = {};
  var sent = null;
  var CELL = /^c-(\d+)-(\d+)$/;
  var isCell = function (el) {
    return !!(el && el.classList && el.classList.contains("cell") && el.closest("[data-grid]"));
  };
  var editing = function (input) { return input.parentElement.classList.contains("editing"); };
  var plain = function (text) { return text.replace(/[\r\n]/g, ""); }; // an input drops line breaks
  var unsaved = function () {
    var shown = document.getElementById("unsaved");
    if (!shown) { return; }
    var ids = Object.keys(pending);
    var away = ids.filter(function (id) { return !document.getElementById(id); }).length;
    var text = ids.length ? ids.length + " unsaved change" + (ids.length > 1 ? "s" : "") : "";
    if (away) { text += " (" + away + " in rows not shown)"; }
    if (shown.textContent !== text) { shown.textContent = text; }
  };
  var mark = function (input) {
    var dirty = input.value !== plain(input.defaultValue);
    input.parentElement.classList.toggle("dirty", dirty);
    if (dirty) { pending[input.id] = input.value; } else { delete pending[input.id]; }
    unsaved();
  };
  var begin = function (input, select) {
    input.parentElement.classList.add("editing");
    if (select) { input.select(); } else { input.setSelectionRange(input.value.length, input.value.length); }
  };
  // A mode that needs an id (a bot, a SIP trunk): its id cell is marked, and (from the keyboard)
  // is the next cell to type in, at once, before any save.
  var needs = function (input, jump) {
    var m = CELL.exec(input.id);
    var th = m && input.closest("table").querySelector("th[data-pos='" + m[2] + "'][data-needs]");
    if (!th) { return false; }
    var pos = JSON.parse(th.getAttribute("data-needs"))[input.value.toLowerCase().replace(/[^0-9a-z]/g, "")];
    var target = pos === undefined ? null : document.getElementById("c-" + m[1] + "-" + pos);
    if (!target) { return false; }
    target.parentElement.classList.add("needed");
    target.setAttribute("aria-required", "true");
    if (!jump || target.value.trim()) { return false; }
    target.focus();
    begin(target, false);
    return true;
  };
  var commit = function (input, jump) {
    input.parentElement.classList.remove("editing");
    input.setAttribute("data-before", input.value);
    mark(input);
    return needs(input, jump);
  };
  var move = function (input, rows, cols) {
    var tr = input.closest("tr");
    var row = Array.prototype.slice.call(tr.querySelectorAll("input.cell"));
    var at = row.indexOf(input);
    var to = null;
    if (rows) {
      var next = rows < 0 ? tr.previousElementSibling : tr.nextElementSibling;
      to = next && next.querySelectorAll("input.cell")[at];
    } else {
      to = row[at + cols];
    }
    if (to) { to.focus(); }
  };
  var cellKey = function (e, input) {
    if (e.altKey || e.ctrlKey || e.metaKey) { return; }
    var arrows = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (!editing(input)) {
      if (arrows[e.key]) { e.preventDefault(); move(input, arrows[e.key][0], arrows[e.key][1]); }
      else if (e.key === "Enter" || e.key === "F2") { e.preventDefault(); begin(input, false); }
      else if (e.key === "Backspace" || e.key === "Delete" || e.key.length === 1) { begin(input, true); }
      return;  // the key itself then types over the selected text
    }
    if (e.key === "Enter") {
      e.preventDefault();
      if (!commit(input, true)) { move(input, 1, 0); }
    } else if (e.key === "Escape") {
      e.preventDefault();
      input.value = input.getAttribute("data-before");
      input.parentElement.classList.remove("editing");
      mark(input);
    }
  };
  document.addEventListener("focusin", function (e) {
    if (isCell(e.target)) { e.target.setAttribute("data-before", e.target.value); }
  });
  document.addEventListener("focusout", function (e) {
    if (isCell(e.target) && editing(e.target)) { commit(e.target, false); }
  });
  document.addEventListener("click", function (e) {
    var t = e.target;
    if (isCell(t) && !editing(t) && !t.readOnly) { t.parentElement.classList.add("editing"); return; }
    var link = t.closest && t.closest("a[data-cell]");
    var cell = link && document.getElementById(link.getAttribute("data-cell"));
    if (cell) {
      e.preventDefault();
      cell.focus({ preventScroll: true });
      cell.scrollIntoView({ block: "center", inline: "nearest" });
    }
  });
  document.addEventListener("input", function (e) {
    var t = e.target;
    if (!isCell(t)) { return; }
    if (!editing(t)) { t.parentElement.classList.add("editing"); }  // pasted, or picked from a list
    mark(t);
  });
  document.addEventListener("keydown", function (e) {
    var save = document.getElementById("save");
    var t = e.target;
    if (save && (e.ctrlKey || e.metaKey) && !e.altKey && (e.key === "s" || e.key === "S")) {
      e.preventDefault();
      if (isCell(t) && editing(t)) { commit(t, false); }
      save.click();
    } else if (isCell(t)) {
      cellKey(e, t);
    } else if (e.key === "Enter" && t.tagName === "INPUT" && t.closest("fieldset.tool")) {
      e.preventDefault();  // Enter in a bulk fix's field runs that fix, not the form's Save
      t.closest("fieldset.tool").querySelector("[data-tool]").click();
    }
  });
  var grid = function (elt) { return !!(elt && elt.closest && elt.closest("form#grid")); };
  document.body.addEventListener("htmx:configRequest", function (e) {
    if (!grid(e.detail.elt) || e.detail.verb !== "post") { return; }
    var form = e.detail.formData;
    var untouched = [];
    form.forEach(function (value, key) { if (CELL.test(key) && !(key in pending)) { untouched.push(key); } });
    untouched.forEach(function (key) { form.delete(key); });  // only what was typed: never an old value
    Object.keys(pending).forEach(function (key) { form.set(key, pending[key]); });
    sent = Object.assign({}, pending);
  });
  document.body.addEventListener("htmx:beforeRequest", function (e) {
    // Nothing typed while a save is on its way can be lost: the cells wait for its answer.
    if (grid(e.detail.elt) && e.detail.requestConfig.verb === "post") {
      document.querySelectorAll("[data-grid] input.cell").forEach(function (i) { i.readOnly = true; });
    }
  });
  document.body.addEventListener("htmx:afterRequest", function (e) {
    if (!e.detail.successful) {
      sent = null;
      document.querySelectorAll("[data-grid] input.cell").forEach(function (i) { i.readOnly = false; });
    }
  });
  var restore = function () {
    if (sent) {
      if (!document.querySelector("#message.error")) {
        Object.keys(sent).forEach(function (id) { if (pending[id] === sent[id]) { delete pending[id]; } });
      }
      sent = null;
    }
    Object.keys(pending).forEach(function (id) {
      var input = document.getElementById(id);
      if (input) { input.value = pending[id]; mark(input); }
    });
    unsaved();
  };
  document.body.addEventListener("htmx:afterSwap", restore);
  // Leaving the page (a link, a reload) with cells typed and not saved: the browser asks first.
  window.addEventListener("beforeunload", function (e) {
    if (Object.keys(pending).length) { e.preventDefault(); e.returnValue = ""; }
  });
  // Help that only holds with this script (the keys) is shown by it.
  var reveal = function () { document.querySelectorAll("[data-js][hidden]").forEach(function (el) { el.hidden = false; }); };
  document.body.addEventListener("htmx:afterSwap", reveal);
  // "Select every row shown": ticks (or clears) the rows of the table as shown, for a bulk action.
  document.addEventListener("change", function (e) {
    var all = e.target;
    if (!all.matches || !all.matches("[data-select-all]")) { return; }
    var table = all.closest("table");
    table.querySelectorAll("input[name=sel]").forEach(function (box) { box.checked = all.checked; });
  });
  reveal();

  // After a save, the next row with a problem; after another change, the message saying what happened.
  var land = function () {
    var section = document.getElementById("check");
    var cell = section && document.getElementById(section.getAttribute("data-focus") || "");
    if (cell) {
      cell.focus({ preventScroll: true });
      cell.scrollIntoView({ block: "center", inline: "nearest" });
      return;
    }
    var m = document.getElementById("message");
    if (m) { m.focus(); }
  };
  document.body.addEventListener("htmx:afterSettle", land);
  land();

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
