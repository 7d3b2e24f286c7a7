// The live dashboard: one websocket (portal/consumers.py) sends a snapshot,
// then updates; each item replaces the row of the same type and id.
// Text goes in with textContent only: names and HL7 summaries are data.
(function () {
  "use strict";

  var MAX_ROWS = 50;
  var root = document.getElementById("dashboard");
  var statusEl = document.getElementById("dash-status");
  var rows = {}; // "type:id" -> <tr>
  var opened = {}; // event ids whose study this page opened already
  var VIEWER_WINDOW = "pacs-viewer"; // the window (tab) studies open in

  function time(iso) {
    return iso ? new Date(iso).toLocaleTimeString() : "";
  }

  function link(href, label) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = label;
    return a;
  }

  function progress(item) {
    var span = document.createElement("span");
    if (item.total) {
      var bar = document.createElement("progress");
      bar.max = item.total;
      bar.value = item.done + item.failed;
      span.appendChild(bar);
      span.appendChild(document.createTextNode(" "));
    }
    span.appendChild(document.createTextNode(item.progress || ""));
    return span;
  }

  // Per type: the cells of a row, and a state for its CSS class.
  var views = {
    event: {
      cells: function (e) {
        var links = document.createElement("span");
        if (e.viewer_url) {
          var view = link(e.viewer_url, "view");
          view.className = "viewer-link";
          view.target = VIEWER_WINDOW;
          links.appendChild(view);
          links.appendChild(document.createTextNode(" "));
        }
        if (e.study_url) links.appendChild(link(e.study_url, "details"));
        return [time(e.at), e.message, links];
      },
      state: function () { return ""; },
    },
    association: {
      cells: function (a) {
        var count = a.instances_received + (a.instances_failed ? " (" + a.instances_failed + " failed)" : "");
        return [
          time(a.at),
          a.calling_ae + " → " + a.called_ae,
          a.peer_address,
          a.result_label + (a.reason ? ": " + a.reason : ""),
          count,
          a.duration == null ? "" : a.duration.toFixed(1) + " s",
        ];
      },
      state: function (a) { return a.result; },
    },
    transfer: {
      cells: function (j) {
        return [
          "#" + j.id,
          j.description || j.kind,
          j.peer,
          j.state_label + (j.last_error && !j.finished ? " (" + j.last_error + ")" : ""),
          progress(j),
          j.rate ? j.rate.toFixed(1) + "/s" : "",
        ];
      },
      state: function (j) { return j.state; },
    },
    burn: {
      cells: function (b) {
        var discs = b.good_discs || b.bad_discs ? b.good_discs + " good, " + b.bad_discs + " bad" : "";
        return [
          "#" + b.id,
          b.kind + " " + b.trigger + (b.publisher ? " on " + b.publisher : ""),
          b.state_label + (b.message ? ": " + b.message : ""),
          discs,
          time(b.updated_at),
        ];
      },
      state: function (b) { return b.state; },
    },
    hl7: {
      cells: function (m) {
        return [time(m.at), m.message_type, m.control_id, m.sending_application, m.outcome_label, m.summary];
      },
      state: function (m) { return m.outcome; },
    },
  };

  // The storage volume's free space (one item, id "storage"): the header line.
  function showDisk(item) {
    var text = document.getElementById("dash-disk");
    var warning = document.getElementById("dash-disk-warning");
    if (!text || !warning) return;
    text.dataset.state = item.state;
    text.textContent = item.text;
    warning.textContent = item.warning;
    warning.hidden = !item.warning;
  }

  function show(item, live) {
    if (item.type === "disk") return showDisk(item);
    var view = views[item.type];
    var table = document.getElementById("dash-" + item.type);
    if (!view || !table) return;
    var key = item.type + ":" + item.id;
    var row = rows[key];
    var body = table.tBodies[0];
    if (!row) {
      row = document.createElement("tr");
      rows[key] = row;
      body.insertBefore(row, body.firstChild);
      while (body.rows.length > MAX_ROWS) {
        var last = body.rows[body.rows.length - 1];
        delete rows[last.dataset.key];
        body.removeChild(last);
      }
    }
    row.dataset.key = key;
    row.dataset.type = item.type;
    row.dataset.id = item.id;
    row.className = (live ? "dash-new " : "") + (view.state(item) ? "dash-" + view.state(item) : "");
    row.replaceChildren.apply(
      row,
      view.cells(item).map(function (value) {
        var td = document.createElement("td");
        if (value instanceof Node) td.appendChild(value);
        else td.textContent = value == null ? "" : String(value);
        return td;
      })
    );
    // "Open transferred studies when received": only for events that happen
    // while the page is open, and once each.
    // The study opens in the viewer, in one window kept for it (the dashboard
    // stays live); where the browser blocks that window, in this one.
    var target = item.viewer_url || item.study_url;
    if (live && item.type === "event" && item.open_study && target && !opened[item.id]) {
      opened[item.id] = true;
      if (!window.open(target, VIEWER_WINDOW)) window.location.assign(target);
    }
  }

  function setStatus(state, text) {
    statusEl.dataset.state = state;
    statusEl.textContent = text;
  }

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + window.location.host + root.dataset.ws);
    socket.onopen = function () { setStatus("live", "connected"); };
    socket.onmessage = function (message) {
      var data = JSON.parse(message.data);
      var live = data.type === "update";
      data.items.forEach(function (item) { show(item, live); });
    };
    socket.onclose = function () {
      setStatus("down", "disconnected, trying again…");
      window.setTimeout(connect, 2000);
    };
  }

  connect();
})();
