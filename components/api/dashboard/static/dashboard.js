// dockyard dashboard: the table's rows and the detail page's state follow the server's
// event stream (/events, server-sent events; a slow poll only while the stream is down),
// the log tail follows the container's output (a stream of its own), the detail page's
// stats load after the page (then every 15 s), copy buttons.
// Progressive: every page works without this script (forms and links are plain HTML).
"use strict";
(function () {
  var PERIOD = 3000;
  var FALLBACK = 30000; // the slow poll while the event stream is down

  function get(url, apply) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/login"); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (text) { if (text !== null) { apply(text); } })
      .catch(function () { /* the next event or tick tries again */ });
  }

  // refresh() when an event of the stream at `element`'s data-events arrives (one read at
  // a time; events during a read cause one more), and every FALLBACK ms while it is down.
  function follow(element, refresh, mode) {
    var busy = false, again = false, timer = null;
    function run(event) {
      if (busy) { again = true; return; }
      busy = true;
      Promise.resolve(refresh(event)).then(function () {
        busy = false;
        if (again) { again = false; run(null); }
      });
    }
    function fallback(on) {
      if (on && timer === null) { timer = window.setInterval(function () { if (!document.hidden) { run(null); } }, FALLBACK); }
      if (!on && timer !== null) { window.clearInterval(timer); timer = null; }
      if (mode) { mode.textContent = on ? "event stream down: refreshed every 30 s" : "live from the event stream"; }
    }
    if (!window.EventSource) { fallback(true); return; }
    var source = new EventSource(element.getAttribute("data-events"));
    element.getAttribute("data-event-types").split(",").forEach(function (type) {
      source.addEventListener(type, run);
    });
    source.onopen = function () { fallback(false); };
    // The browser reconnects by itself (Last-Event-ID, the server's retry); meanwhile, poll.
    source.onerror = function () { fallback(true); };
  }

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

  // The log tail, live: the server streams the container's output (its last lines at each
  // (re)connection, then each new one) as JSON arrays of lines. It is the agent's output:
  // added as text nodes, never as HTML; at most data-max lines are kept.
  function tail(pre, mode) {
    var most = parseInt(pre.getAttribute("data-max"), 10) || 200;
    var live = pre.getAttribute("data-live");
    function show(text) { if (mode) { mode.textContent = text; } }
    if (!window.EventSource || !live) {
      poll(pre.getAttribute("data-logs"), function (text) { pre.textContent = text; });
      show("(refreshed every 3 s)");
      return;
    }
    var source = new EventSource(live), fresh = true;
    source.onopen = function () { fresh = true; show("(live)"); };
    source.onmessage = function (event) {
      var lines;
      try { lines = JSON.parse(event.data); } catch (e) { return; }
      if (!Array.isArray(lines)) { return; }
      var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      // The first frame after a (re)connection is the whole tail: it replaces the text.
      if (fresh) { pre.textContent = ""; fresh = false; }
      lines.slice(-most).forEach(function (line) {
        pre.appendChild(document.createTextNode(String(line) + "\n"));
      });
      while (pre.childNodes.length > most) { pre.removeChild(pre.firstChild); }
      if (atEnd) { pre.scrollTop = pre.scrollHeight; }
    };
    source.addEventListener("end", function () {
      source.close();
      show("(the container's output ended; reload to follow it again)");
    });
    source.onerror = function () { show("(reconnecting…)"); };
    window.addEventListener("pagehide", function () { source.close(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var table = document.querySelector("table[data-rows]");
    if (table) {
      var body = document.getElementById("rows");
      var updated = document.getElementById("updated");
      follow(table, function () {
        return get(table.getAttribute("data-rows"), function (html) {
          // The server renders (and escapes) the rows; same origin, same template.
          body.innerHTML = html;
          if (updated) { updated.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC"; }
        });
      }, document.getElementById("live-mode"));
    }
    var live = document.getElementById("live");
    if (live && live.getAttribute("data-events")) {
      follow(live, function (event) {
        if (event && event.type === "session.destroyed") {
          live.textContent = "This session was destroyed.";
          return null;
        }
        // The page again, without its one-off notice: its state and actions replace these.
        var url = new URL(window.location.href);
        url.searchParams.delete("done");
        return get(url.toString(), function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html");
          ["facts", "actions"].forEach(function (id) {
            var now = document.getElementById(id), then = fresh.getElementById(id);
            if (now && then) { now.replaceWith(then); }
          });
          if (event) { live.textContent = "Updated after " + event.type + " at " + new Date().toISOString().slice(11, 19) + " UTC."; }
        });
      }, null);
    }
    var logs = document.getElementById("logs");
    if (logs) {
      tail(logs, document.getElementById("logs-mode"));
      logs.scrollTop = logs.scrollHeight;
    }
    var kept = document.getElementById("kept");
    if (kept) {
      // Listing snapshots can take seconds: loaded once after the page.
      get(kept.getAttribute("data-kept"), function (html) { kept.innerHTML = html; });
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
