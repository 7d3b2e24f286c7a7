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
        return [time(e.at), e.message, e.study_url ? link(e.study_url, "open") : ""];
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

  function show(item, live) {
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
    if (live && item.type === "event" && item.open_study && item.study_url && !opened[item.id]) {
      opened[item.id] = true;
      window.location.assign(item.study_url);
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
