// Progressive enhancement for the send step's change window; the forms work without it (a time
// typed then is taken in the server's zone, as the page says).
// The browser's own zone goes with the form (its IANA name), and a scheduled time is shown in it.
(function () {
  "use strict";
  var zone = "";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { zone = ""; }
  if (!zone) { return; }
  document.querySelectorAll("input[data-zone]").forEach(function (el) { el.value = zone; });
  document.querySelectorAll("[data-zone-name]").forEach(function (el) { el.textContent = "in your zone, " + zone; });
  document.querySelectorAll("time[data-local]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (isNaN(when.getTime())) { return; }
    var shown = when.toLocaleString(undefined, {
      year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
    });
    el.textContent = ", and " + shown + " in your zone (" + zone + ")";
    el.hidden = false;
  });
})();
