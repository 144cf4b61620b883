/* jiggler-gevent dashboard: confirmations, live counters and the two charts.
 * Loaded from our own origin (the Content-Security-Policy allows no inline script).
 * Every value from the server is written with textContent, never as HTML. */
(function () {
  "use strict";

  var COLORS = { processed: "#2f7d32", failed: "#c62828", grid: "#e3e6ea", text: "#5b6470" };
  var LIVE_POINTS = 60;

  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  function setup(canvas) {
    var ratio = window.devicePixelRatio || 1;
    var width = canvas.clientWidth || canvas.width;
    var height = canvas.clientHeight || canvas.height;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    var ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    return { ctx: ctx, width: width, height: height };
  }

  /* series: [{name, values}], labels: one per value; kind: "line" or "bars" */
  function draw(canvas, series, labels, kind) {
    var c = setup(canvas), ctx = c.ctx;
    var left = 48, right = 10, top = 10, bottom = 24;
    var w = c.width - left - right, h = c.height - top - bottom;
    var max = 1;
    series.forEach(function (s) { s.values.forEach(function (v) { if (v > max) { max = v; } }); });
    var rough = max / 4, magnitude = Math.pow(10, Math.floor(Math.log10(rough)));
    var tick = [1, 2, 5, 10].map(function (m) { return m * magnitude; })
      .filter(function (t) { return t >= rough; })[0];
    tick = Math.max(1, tick);  // counts are whole numbers
    var top_value = tick * 4;
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = COLORS.text;
    ctx.strokeStyle = COLORS.grid;
    ctx.lineWidth = 1;
    for (var g = 0; g <= 4; g++) {
      var y = top + h - (h * g) / 4;
      ctx.beginPath(); ctx.moveTo(left, y + 0.5); ctx.lineTo(left + w, y + 0.5); ctx.stroke();
      ctx.textAlign = "right";
      ctx.fillText((tick * g).toLocaleString("en-US"), left - 6, y + 4);
    }
    var n = labels.length;
    if (n === 0) { return; }
    var every = Math.max(1, Math.ceil(n / 8));
    ctx.textAlign = "center";
    labels.forEach(function (label, i) {
      if (i % every === 0 || (kind !== "bars" && i === n - 1 && n > 1 && (n - 1) % every > every / 2)) {
        var x = kind === "bars" ? left + (w * (i + 0.5)) / n : left + (n === 1 ? 0 : (w * i) / (n - 1));
        ctx.textAlign = kind === "bars" ? "center" : (i === 0 ? "left" : (i === n - 1 ? "right" : "center"));
        ctx.fillText(label, x, top + h + 16);
      }
    });
    series.forEach(function (s, index) {
      ctx.fillStyle = ctx.strokeStyle = COLORS[s.name];
      if (kind === "bars") {
        var slot = w / n, bar = Math.max(1, slot / 2 - 2);
        s.values.forEach(function (v, i) {
          var bh = (h * v) / top_value;
          ctx.fillRect(left + slot * i + 1 + index * bar, top + h - bh, bar, bh);
        });
      } else {
        ctx.lineWidth = 2;
        ctx.beginPath();
        s.values.forEach(function (v, i) {
          var x = left + (n === 1 ? 0 : (w * i) / (n - 1)), yv = top + h - (h * v) / top_value;
          if (i === 0) { ctx.moveTo(x, yv); } else { ctx.lineTo(x, yv); }
        });
        ctx.stroke();
      }
    });
    canvas.setAttribute("data-drawn", String(n));
  }

  function clock(date) {
    return date.toTimeString().slice(0, 8);
  }

  var live = document.getElementById("live-chart");
  if (!live) { return; }
  var history = document.getElementById("history-chart");
  var status = document.getElementById("live-status");
  var url = live.getAttribute("data-url");
  var delay = Math.min(60000, Math.max(2000, parseInt(live.getAttribute("data-poll-ms"), 10) || 5000));
  var points = { processed: [], failed: [], labels: [] };
  var last = null;

  function update(data) {
    var totals = data.totals || {};
    Array.prototype.forEach.call(document.querySelectorAll("[data-counter]"), function (el) {
      var value = totals[el.getAttribute("data-counter")];
      if (typeof value === "number") { el.textContent = value.toLocaleString("en-US"); }
    });
    var processed = Number(totals.processed) || 0, failed = Number(totals.failed) || 0;
    points.processed.push(last ? Math.max(0, processed - last.processed) : 0);
    points.failed.push(last ? Math.max(0, failed - last.failed) : 0);
    points.labels.push(clock(new Date()));
    last = { processed: processed, failed: failed };
    ["processed", "failed", "labels"].forEach(function (k) {
      if (points[k].length > LIVE_POINTS) { points[k].shift(); }
    });
    draw(live, [{ name: "processed", values: points.processed }, { name: "failed", values: points.failed }],
         points.labels, "line");
    if (history && Array.isArray(data.history)) {
      draw(history, [
        { name: "processed", values: data.history.map(function (d) { return Number(d.processed) || 0; }) },
        { name: "failed", values: data.history.map(function (d) { return Number(d.failed) || 0; }) }
      ], data.history.map(function (d) { return String(d.day).slice(5); }), "bars");
    }
    if (status) { status.textContent = "updated " + clock(new Date()); }
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(update)
      .catch(function (error) { if (status) { status.textContent = "update failed: " + error.message; } })
      .then(function () { window.setTimeout(poll, delay); });
  }

  poll();
})();
