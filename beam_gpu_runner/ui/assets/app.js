// beam-gpu-runner web UI. Read-only; polls the JSON endpoints about once a second.
//
// Every value from a pipeline (labels, transform names, metric names, errors,
// options) is inserted as text: el() turns strings into text nodes, attributes
// are set with setAttribute, and nothing here assigns innerHTML.
(function () {
  "use strict";

  var POLL_MS = 1000;
  var WATERMARK_DONE = 9.2e18;   // Beam's MAX timestamp in micros (2^63 - 1)
  var SVG_NS = "http://www.w3.org/2000/svg";
  var app = document.getElementById("app");
  var conn = document.getElementById("conn");

  // -- DOM helpers ------------------------------------------------------------
  function append(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { append(node, c); }); return; }
    if (typeof child === "string" || typeof child === "number") {
      node.appendChild(document.createTextNode(String(child)));
    } else {
      node.appendChild(child);
    }
  }
  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (attrs[k] !== null && attrs[k] !== undefined) node.setAttribute(k, String(attrs[k]));
      });
    }
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }
  function svg(tag, attrs) {
    var node = document.createElementNS(SVG_NS, tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (attrs[k] !== null && attrs[k] !== undefined) node.setAttribute(k, String(attrs[k]));
      });
    }
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }
  function jobLink(id, text) {
    return el("a", { href: "/jobs/" + encodeURIComponent(id), "class": "job-link" }, text || id);
  }

  // -- formatting -------------------------------------------------------------
  function fmtInt(n) { return (n === null || n === undefined) ? "—" : Number(n).toLocaleString("en-US"); }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "—";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0, v = Number(n);
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(1)) + " " + units[i];
  }
  function fmtRate(r) {
    if (r === null || r === undefined || !isFinite(r)) return "—";
    if (r >= 100) return Math.round(r).toLocaleString("en-US") + "/s";
    return r.toFixed(1) + "/s";
  }
  function fmtTime(t) {
    if (t === null || t === undefined) return "—";
    var d = new Date(t * 1000);
    return d.toLocaleDateString("en-CA") + " " + d.toLocaleTimeString("en-GB");
  }
  function fmtDuration(s) {
    if (s === null || s === undefined) return "—";
    s = Math.max(0, s);
    if (s < 60) return s.toFixed(1) + " s";
    var m = Math.floor(s / 60), h = Math.floor(m / 60);
    if (h > 0) return h + " h " + (m % 60) + " min";
    return m + " min " + Math.floor(s % 60) + " s";
  }
  function fmtWatermark(w, now) {
    if (w === null || w === undefined) return "not started";
    if (w >= WATERMARK_DONE) return "done";
    var t = w / 1e6;
    return fmtTime(t) + " (lag " + fmtDuration(now - t) + ")";
  }
  function fmtMetric(m) {
    var v = m.value;
    if (v === null || v === undefined) return "—";
    if (m.kind === "counter") return fmtInt(v);
    if (m.kind === "distribution") {
      return "count " + fmtInt(v.count) + ", sum " + fmtInt(v.sum) + ", min " + fmtInt(v.min) +
        ", max " + fmtInt(v.max) + (v.mean !== undefined && v.mean !== null
          ? ", mean " + Number(v.mean).toFixed(2) : "");
    }
    if (m.kind === "gauge") return fmtInt(v.value) + (v.timestamp ? " at " + fmtTime(v.timestamp) : "");
    if (Array.isArray(v)) return v.join(", ");
    return JSON.stringify(v);
  }
  function stateBadge(state) { return el("span", { "class": "state " + state }, state); }
  function optionsList(options) {
    var keys = Object.keys(options || {});
    if (!keys.length) return el("span", { "class": "muted" }, "none");
    var dl = el("dl", { "class": "options" });
    keys.forEach(function (k) { dl.appendChild(el("dt", null, k)); dl.appendChild(el("dd", null, options[k])); });
    return el("details", null, el("summary", null, keys.length + " option" + (keys.length === 1 ? "" : "s")), dl);
  }
  function table(headers, rows, attrs) {
    var head = el("tr", null, headers.map(function (h) {
      return typeof h === "string" ? el("th", null, h) : el("th", { "class": h.cls }, h.text);
    }));
    return el("table", attrs || null, el("thead", null, head), el("tbody", null, rows));
  }

  // -- polling ----------------------------------------------------------------
  var timer = null;
  function poll(url, render) {
    function tick() {
      fetch(url, { cache: "no-store", headers: { "Accept": "application/json" } })
        .then(function (r) {
          return r.json().then(function (body) { return { status: r.status, body: body }; });
        })
        .then(function (res) {
          conn.textContent = "live";
          conn.className = "conn";
          if (res.status !== 200 && res.status !== 404) {
            show([el("p", { "class": "error" }, (res.body && res.body.error) || ("HTTP " + res.status))]);
            return;
          }
          render(res.status, res.body);
        })
        .catch(function () {
          conn.textContent = "cannot reach the server; retrying";
          conn.className = "conn bad";
        })
        .then(function () { timer = setTimeout(tick, POLL_MS); });
    }
    tick();
  }
  function openDetails() {
    var open = {};
    app.querySelectorAll("details[data-key]").forEach(function (d) {
      if (d.open) open[d.getAttribute("data-key")] = true;
    });
    return open;
  }
  function restoreDetails(open) {
    app.querySelectorAll("details[data-key]").forEach(function (d) {
      if (open[d.getAttribute("data-key")]) d.open = true;
    });
  }
  function show(nodes) {
    var open = openDetails();
    app.replaceChildren.apply(app, nodes.filter(function (n) { return n; }));
    restoreDetails(open);
  }

  // -- jobs page --------------------------------------------------------------
  function jobsPage() {
    document.getElementById("nav-jobs").className = "active";
    document.title = "Jobs · beam-gpu-runner";
    poll("/api/jobs", function (status, doc) {
      var jobs = (doc.jobs || []).slice().reverse();   // newest first
      if (!jobs.length) { show([el("h1", null, "Jobs"), el("p", { "class": "muted" }, "No jobs yet.")]); return; }
      var rows = jobs.map(function (j) {
        var duration = j.duration !== null ? j.duration : doc.now - j.start_time;
        var opts = optionsList(j.options);
        if (opts.tagName === "DETAILS") opts.setAttribute("data-key", "opts-" + j.job_id);
        return el("tr", { "class": "job", "data-job": j.job_id },
          el("td", { "class": "mono" }, jobLink(j.job_id)),
          el("td", null, j.name, j.streaming ? el("span", { "class": "badge" }, " streaming") : null),
          el("td", null, stateBadge(j.state), j.error ? el("div", { "class": "muted" }, j.error) : null),
          el("td", null, fmtTime(j.start_time)),
          el("td", { "class": "num" }, fmtDuration(duration)),
          el("td", { "class": "num" }, j.stages_done + "/" + j.stages),
          el("td", { "class": "num" }, fmtInt(j.elements_in)),
          el("td", null, opts));
      });
      show([el("h1", null, "Jobs"),
        table(["Job", "Name", "State", "Started", { text: "Duration", cls: "num" },
          { text: "Stages done", cls: "num" }, { text: "Elements in", cls: "num" }, "Options"],
          rows, { id: "jobs" })]);
    });
  }

  // -- job page ---------------------------------------------------------------
  var history = {};   // stage name -> [{t, in, out}], for throughput
  function throughput(stage, now) {
    var h = history[stage.name] || (history[stage.name] = []);
    if (!h.length || h[h.length - 1].t !== now) h.push({ t: now, i: stage.elements_in, o: stage.elements_out });
    while (h.length > 2 && now - h[0].t > 5) h.shift();
    var first = h[0], last = h[h.length - 1], dt = last.t - first.t;
    if (dt <= 0) return { i: null, o: null };
    return { i: (last.i - first.i) / dt, o: (last.o - first.o) / dt };
  }

  function layout(stages, edges) {
    var preds = {}, index = {};
    stages.forEach(function (s, i) { preds[s.name] = []; index[s.name] = i; });
    edges.forEach(function (e) { if (preds[e[1]] && index[e[0]] !== undefined) preds[e[1]].push(e[0]); });
    var layer = {};
    function depth(name, guard) {
      if (layer[name] !== undefined) return layer[name];
      if (guard > stages.length) return 0;   // a cycle: stop
      var d = 0;
      preds[name].forEach(function (p) { d = Math.max(d, depth(p, guard + 1) + 1); });
      layer[name] = d;
      return d;
    }
    stages.forEach(function (s) { depth(s.name, 0); });
    return layer;
  }
  function clip(text, n) { text = String(text); return text.length > n ? text.slice(0, n - 1) + "…" : text; }

  function stageGraph(job, workersById) {
    var stages = job.stages || [], edges = job.edges || [];
    if (!stages.length) return el("p", { "class": "muted" }, "No stages reported yet.");
    var layer = layout(stages, edges);
    var W = 280, LINE = 16, PAD = 10, GAPX = 70, GAPY = 22, CH = 38;
    var columns = {}, pos = {}, boxes = [];
    stages.forEach(function (s) {
      var workers = (s.workers || []).map(function (w) { return workersById[w]; }).filter(Boolean);
      var hosts = {}, devices = {};
      workers.forEach(function (w) {
        hosts[w.host] = true;
        (w.devices || []).forEach(function (d) { devices[d] = true; });
      });
      var lines = [{ text: s.label || s.name, cls: "title", full: s.label || s.name }];
      if ((s.transforms || []).length) {
        lines.push({ text: "transforms: " + s.transforms.join(", "), cls: "sub" });
      }
      if (s.hint) lines.push({ text: "hint: " + s.hint, cls: "sub" });
      if (s.runner_side) lines.push({ text: "runs on the driver", cls: "sub" });
      else if (s.pool) lines.push({ text: "pool: " + s.pool, cls: "sub" });
      if ((s.workers || []).length) {
        var hostNames = Object.keys(hosts);
        lines.push({ text: s.workers.length + " worker" + (s.workers.length === 1 ? "" : "s") +
          (hostNames.length ? " on " + hostNames.join(", ") : ""), cls: "sub" });
      }
      var devs = Object.keys(devices);
      if (devs.length) lines.push({ text: "GPU " + devs.join(", "), cls: "sub" });
      if (s.placement_note) lines.push({ text: s.placement_note, cls: "sub" });
      lines.push({ text: "in " + fmtInt(s.elements_in) + " · out " + fmtInt(s.elements_out) +
        " · " + s.bundles_running + " running", cls: "count" });
      var col = layer[s.name] || 0;
      columns[col] = columns[col] || [];
      var h = PAD * 2 + lines.length * LINE;
      var y = columns[col].reduce(function (acc, b) { return acc + b.h + GAPY; }, 20);
      var box = { s: s, x: 20 + col * (W + GAPX), y: y, h: h, lines: lines };
      columns[col].push(box);
      boxes.push(box);
      pos[s.name] = box;
    });
    var width = 0, height = 0;
    boxes.forEach(function (b) { width = Math.max(width, b.x + W + 20); height = Math.max(height, b.y + b.h + 20); });
    var root = svg("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height,
      role: "img", "aria-label": "stage graph" });
    root.appendChild(svg("defs", null, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8c959f" }))));
    edges.forEach(function (e) {
      var a = pos[e[0]], b = pos[e[1]];
      if (!a || !b) return;
      var x1 = a.x + W, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2, mx = (x1 + x2) / 2;
      root.appendChild(svg("path", { "class": "edge", "marker-end": "url(#arrow)",
        d: "M " + x1 + " " + y1 + " C " + mx + " " + y1 + ", " + mx + " " + y2 + ", " + x2 + " " + y2 }));
    });
    boxes.forEach(function (b) {
      var cls = "node" + (b.s.hint ? " gpu" : "") + (b.s.runner_side ? " driver" : "") +
        (b.s.output_watermark !== null && b.s.output_watermark >= WATERMARK_DONE ? " done" : "");
      var g = svg("g", { "class": "stage-node", "data-stage": b.s.name },
        svg("title", null, (b.s.label || b.s.name) + "\n" + (b.s.transforms || []).join("\n")),
        svg("rect", { "class": cls, x: b.x, y: b.y, width: W, height: b.h, rx: 6 }));
      b.lines.forEach(function (line, i) {
        g.appendChild(svg("text", { x: b.x + PAD, y: b.y + PAD + (i + 1) * LINE - 4, "class": line.cls },
          clip(line.text, line.cls === "title" ? CH - 4 : CH + 4)));
      });
      root.appendChild(g);
    });
    return el("div", { "class": "graph", id: "graph" }, root);
  }

  function stageTable(job, now) {
    var streaming = job.streaming;
    var headers = ["Stage", { text: "Elements in", cls: "num" }, { text: "Elements out", cls: "num" },
      { text: "Bytes in", cls: "num" }, { text: "Bytes out", cls: "num" },
      { text: "Throughput in", cls: "num" }, { text: "Throughput out", cls: "num" },
      { text: "Bundles running", cls: "num" }, { text: "done", cls: "num" },
      { text: "retried", cls: "num" }, { text: "split", cls: "num" }];
    if (streaming) headers = headers.concat(["Input watermark", "Output watermark"]);
    var rows = (job.stages || []).map(function (s) {
      var rate = throughput(s, now);
      var cells = [
        el("td", { "class": "stage-label" }, el("div", { "class": "label" }, s.label || s.name),
          (s.transforms || []).length ? el("div", { "class": "transforms muted" },
            s.transforms.join(" · ")) : null),
        el("td", { "class": "num elements-in" }, fmtInt(s.elements_in)),
        el("td", { "class": "num elements-out" }, fmtInt(s.elements_out)),
        el("td", { "class": "num" }, fmtBytes(s.bytes_in)),
        el("td", { "class": "num" }, fmtBytes(s.bytes_out)),
        el("td", { "class": "num" }, fmtRate(rate.i)),
        el("td", { "class": "num" }, fmtRate(rate.o)),
        el("td", { "class": "num" }, fmtInt(s.bundles_running)),
        el("td", { "class": "num" }, fmtInt(s.bundles_done)),
        el("td", { "class": "num" }, fmtInt(s.bundles_retried)),
        el("td", { "class": "num" }, fmtInt(s.bundles_split))];
      if (streaming) {
        cells.push(el("td", null, fmtWatermark(s.input_watermark, now)));
        cells.push(el("td", null, fmtWatermark(s.output_watermark, now)));
      }
      return el("tr", { "class": "stage", "data-stage": s.name }, cells);
    });
    return el("div", { "class": "scroll" }, table(headers, rows, { id: "stages" }));
  }

  function workerTable(job) {
    var workers = job.workers || [];
    if (!workers.length) return el("p", { "class": "muted" }, "No workers reported.");
    return table(["Worker", "Pool", "Host", { text: "PID", cls: "num" }, "GPUs", "State",
      { text: "Bundles running", cls: "num" }],
      workers.map(function (w) {
        return el("tr", { "class": "worker" },
          el("td", { "class": "mono" }, w.worker_id), el("td", { "class": "mono" }, w.pool),
          el("td", null, w.host), el("td", { "class": "num" }, w.pid === null ? "—" : String(w.pid)),
          el("td", null, (w.devices || []).join(", ") || "—"), el("td", null, w.state),
          el("td", { "class": "num" }, fmtInt(w.bundles_running)));
      }), { id: "workers" });
  }

  function metricTable(job) {
    var metrics = job.metrics || [];
    if (!metrics.length) return el("p", { "class": "muted" }, "No user metrics reported.");
    return table(["Namespace", "Name", "Kind", "Step", "Value"], metrics.map(function (m) {
      return el("tr", { "class": "metric" }, el("td", { "class": "mono" }, m.namespace),
        el("td", { "class": "mono" }, m.name), el("td", null, m.kind),
        el("td", null, m.step), el("td", { "class": "num" }, fmtMetric(m)));
    }), { id: "metrics" });
  }

  function jobPage(jobId) {
    document.getElementById("nav-jobs").className = "active";
    document.title = jobId + " · beam-gpu-runner";
    poll("/api/jobs/" + encodeURIComponent(jobId), function (status, doc) {
      if (status === 404) {
        show([el("h1", null, jobId), el("p", { "class": "muted" }, "No such job on this server."),
          el("p", null, el("a", { href: "/" }, "All jobs"))]);
        return;
      }
      var job = doc.job, now = doc.now;
      var workersById = {};
      (job.workers || []).forEach(function (w) { workersById[w.worker_id] = w; });
      var duration = job.duration !== null ? job.duration : now - job.start_time;
      var opts = optionsList(job.options);
      if (opts.tagName === "DETAILS") opts.setAttribute("data-key", "options");
      var error = null;
      if (job.error || job.traceback) {
        error = [el("h2", null, "Error"),
          el("pre", { "class": "error", id: "error" }, job.error || "",
            job.traceback ? "\n\n" + job.traceback : ""),
          job.logs_kept_in ? el("p", null, "Worker logs kept in ", el("span", { "class": "mono" }, job.logs_kept_in)) : null];
      }
      show([
        el("h1", { id: "job-name" }, job.name),
        el("div", { "class": "facts" },
          el("span", null, stateBadge(job.state)),
          el("span", { "class": "mono" }, job.job_id),
          el("span", null, el("b", null, "started "), fmtTime(job.start_time)),
          el("span", null, el("b", null, job.end_time ? "took " : "running for "), fmtDuration(duration)),
          el("span", null, el("b", null, "stages done "), job.stages_done + "/" + (job.stages || []).length),
          job.streaming ? el("span", { "class": "badge" }, "streaming") : el("span", { "class": "badge" }, "batch")),
        error ? el("section", null, error) : null,
        el("h2", null, "Stage graph"), stageGraph(job, workersById),
        el("h2", null, "Stages"), stageTable(job, now),
        el("h2", null, "Workers"), workerTable(job),
        el("h2", null, "User metrics"), metricTable(job),
        el("h2", null, "Options"), opts]);
    });
  }

  // -- devices page -----------------------------------------------------------
  function sparkline(samples) {
    var pts = (samples || []).filter(function (s) { return s[1] !== null; });
    if (pts.length < 2) return null;
    var W = 120, H = 24, t0 = pts[0][0], t1 = pts[pts.length - 1][0], span = Math.max(1e-6, t1 - t0);
    var points = pts.map(function (s) {
      return ((s[0] - t0) / span * W).toFixed(1) + "," + (H - s[1] / 100 * H).toFixed(1);
    }).join(" ");
    return svg("svg", { "class": "spark", width: W, height: H, viewBox: "0 0 " + W + " " + H },
      svg("title", null, "utilisation over the last " + fmtDuration(span)),
      svg("polyline", { points: points }));
  }
  function devicesPage() {
    document.getElementById("nav-devices").className = "active";
    document.title = "Devices · beam-gpu-runner";
    poll("/api/devices", function (status, doc) {
      var devices = doc.devices || [];
      if (!devices.length) {
        show([el("h1", null, "Devices"), el("p", { "class": "muted" },
          "The configured drivers report no devices, and none is leased.")]);
        return;
      }
      var rows = devices.map(function (d) {
        var util = d.fake ? el("span", { "class": "muted" }, "fake device: no readings")
          : el("span", null, d.utilization_percent === null ? "—" : d.utilization_percent.toFixed(0) + " %", " ", sparkline(d.samples));
        var memory = d.memory_used_bytes !== null ? fmtBytes(d.memory_used_bytes) + " / " + fmtBytes(d.memory_total_bytes)
          : (d.memory_total_bytes !== null ? fmtBytes(d.memory_total_bytes) : "—");
        return el("tr", { "class": "device", "data-uuid": d.uuid },
          el("td", null, d.resource), el("td", { "class": "num" }, d.index),
          el("td", null, d.name, " ", d.fake ? el("span", { "class": "badge fake" }, "fake (testing driver)") : null),
          el("td", { "class": "mono" }, d.uuid),
          el("td", { "class": "holder-job" }, d.holder_job ? jobLink(d.holder_job) : (d.holder_worker ? "—" : el("span", { "class": "muted" }, "free"))),
          el("td", { "class": "holder-stage" }, d.holder_stage || ""),
          el("td", { "class": "holder-worker mono" }, d.holder_worker || ""),
          el("td", { "class": "num" }, d.share === null ? (d.holder_worker ? "whole" : "") : String(d.share)),
          el("td", null, util), el("td", { "class": "num" }, memory));
      });
      show([el("h1", null, "Devices"),
        table(["Resource", { text: "Index", cls: "num" }, "Name", "UUID", "Job", "Stage", "Worker",
          { text: "Share", cls: "num" }, "Utilisation", { text: "Memory", cls: "num" }], rows, { id: "devices" })]);
    });
  }

  // -- routing ----------------------------------------------------------------
  var path = window.location.pathname;
  if (path === "/devices") devicesPage();
  else if (path.indexOf("/jobs/") === 0 && path.length > 6) jobPage(decodeURIComponent(path.slice(6)));
  else jobsPage();
}());
