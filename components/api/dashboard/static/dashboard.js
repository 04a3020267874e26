// dockyard dashboard: live rows and log tail by polling (every 3 s), the detail page's
// stats (after the page, then every 15 s), copy buttons.
// Progressive: every page works without this script (forms and links are plain HTML).
"use strict";
(function () {
  var PERIOD = 3000;

  function poll(url, apply, period, now) {
    function tick() {
      if (document.hidden) { return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (r.status === 401) { window.location.assign("/login"); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (text) { if (text !== null) { apply(text); } })
        .catch(function () { /* the next tick tries again */ });
    }
    window.setInterval(tick, period || PERIOD);
    if (now) { tick(); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var table = document.querySelector("table[data-rows]");
    if (table) {
      var body = document.getElementById("rows");
      var updated = document.getElementById("updated");
      poll(table.getAttribute("data-rows"), function (html) {
        // The server renders (and escapes) the rows; same origin, same template.
        body.innerHTML = html;
        if (updated) { updated.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC"; }
      });
    }
    var logs = document.getElementById("logs");
    if (logs) {
      poll(logs.getAttribute("data-logs"), function (text) {
        var atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
        logs.textContent = text;
        if (atEnd) { logs.scrollTop = logs.scrollHeight; }
      });
      logs.scrollTop = logs.scrollHeight;
    }
    var stats = document.getElementById("stats");
    if (stats) {
      // The engine samples for about 2 s: loaded after the page, then every 15 s.
      poll(stats.getAttribute("data-stats"), function (html) { stats.innerHTML = html; }, 15000, true);
    }
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var input = document.getElementById(button.getAttribute("data-copy"));
        var status = button.parentNode.querySelector(".copied");
        input.select();
        var done = function () { if (status) { status.textContent = "Copied."; } };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(input.value).then(done, function () { document.execCommand("copy"); done(); });
        } else {
          document.execCommand("copy");
          done();
        }
      });
    });
    var problems = document.getElementById("problems");
    if (problems) { problems.focus(); }
  });
})();
