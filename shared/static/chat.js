// ChatLab page client: a small Phoenix Channels V2 client and the chat UI.
// Frames are [join_ref, ref, topic, event, payload]. User text only ever goes into
// textContent, never into HTML.
"use strict";

(function () {
  const TOPIC = "rooms:lobby";
  const HEARTBEAT_MS = 30000;
  const REJOIN_MS = [1000, 2000, 5000, 10000];
  const STATUS_POLL_MS = 3000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    messages: $("messages"), input: $("message-input"), username: $("username"),
    composer: $("composer"), presence: $("presence"), online: $("online-count"),
    nodes: $("nodes"), redis: $("redis"), connection: $("connection"),
  };

  // --- Rendering --------------------------------------------------------------------

  function atBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  }

  function addLine(className, parts) {
    const stick = atBottom();
    const li = document.createElement("li");
    li.className = className;
    for (const [cls, text] of parts) {
      const span = document.createElement("span");
      if (cls) span.className = cls;
      span.textContent = text;
      li.appendChild(span);
    }
    ui.messages.appendChild(li);
    if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
    return li;
  }

  let lastPing = null;
  function showMessage(msg) {
    if (msg.user === "SYSTEM") {
      // The original's demo timer pings every few seconds; fold repeats into one line.
      if (lastPing && lastPing === ui.messages.lastElementChild) {
        lastPing.count += 1;
        lastPing.lastChild.textContent = " ×" + lastPing.count;
      } else {
        lastPing = addLine("system", [["user", "[SYSTEM]"], ["", msg.body], ["meta", ""]]);
        lastPing.count = 1;
      }
      return;
    }
    const mine = msg.user === currentUser();
    const when = msg.ts ? new Date(msg.ts).toLocaleTimeString() : "";
    addLine(mine ? "mine" : "", [["user", "[" + msg.user + "]"], ["body", msg.body], ["meta", when + (msg.node ? " · " + msg.node : "")]]);
  }

  function showEvent(text) { addLine("event", [["", text]]); }

  function setConnection(state, text) {
    ui.connection.dataset.state = state;
    ui.connection.textContent = text;
  }

  // --- Presence (Phoenix's presence_state / presence_diff) --------------------------

  let presences = {};
  function syncState(state) { presences = state; renderPresence(); }
  function syncDiff(diff) {
    for (const [key, { metas }] of Object.entries(diff.joins || {})) {
      const known = presences[key] ? presences[key].metas : [];
      const refs = new Set(metas.map((m) => m.phx_ref));
      presences[key] = { metas: known.filter((m) => !refs.has(m.phx_ref)).concat(metas) };
    }
    for (const [key, { metas }] of Object.entries(diff.leaves || {})) {
      if (!presences[key]) continue;
      const refs = new Set(metas.map((m) => m.phx_ref));
      const left = presences[key].metas.filter((m) => !refs.has(m.phx_ref));
      if (left.length) presences[key] = { metas: left }; else delete presences[key];
    }
    renderPresence();
  }
  function renderPresence() {
    ui.presence.replaceChildren();
    const keys = Object.keys(presences).sort();
    for (const key of keys) {
      const li = document.createElement("li");
      li.textContent = key;
      const n = presences[key].metas.length;
      if (n > 1) {
        const c = document.createElement("span");
        c.className = "count";
        c.textContent = "×" + n;
        li.appendChild(c);
      }
      ui.presence.appendChild(li);
    }
    ui.online.textContent = String(keys.length);
  }

  // --- The socket -------------------------------------------------------------------

  let ws = null, ref = 0, joinRef = null, heartbeat = null, attempts = 0;
  let lastSeenId = null;
  const seen = new Set();
  const pending = new Map();

  function currentUser() { return ui.username.value.trim() || "anonymous"; }
  function idKey(id) { const [ms, seq] = id.split("-"); return [Number(ms), Number(seq)]; }
  function newer(a, b) { const x = idKey(a), y = idKey(b); return x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]); }

  function send(topic, event, payload, onReply, useJoinRef = true) {
    const r = String(++ref);
    if (onReply) pending.set(r, onReply);
    ws.send(JSON.stringify([useJoinRef ? joinRef : null, r, topic, event, payload]));
    return r;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(scheme + "://" + location.host + "/socket/websocket?vsn=2.0.0");
    setConnection("connecting", "connecting…");
    ws.onopen = () => { attempts = 0; join(); heartbeat = setInterval(() => send("phoenix", "heartbeat", {}, null, false), HEARTBEAT_MS); };
    ws.onmessage = (event) => onFrame(JSON.parse(event.data));
    ws.onclose = () => {
      clearInterval(heartbeat);
      pending.clear();
      joinRef = null;
      setConnection("offline", "reconnecting…");
      const delay = REJOIN_MS[Math.min(attempts++, REJOIN_MS.length - 1)];
      setTimeout(connect, delay);
    };
  }

  function join() {
    const params = { user: ui.username.value.trim() || null };
    if (lastSeenId) params.last_seen_id = lastSeenId;
    joinRef = String(ref + 1);
    send(TOPIC, "phx_join", params, (status, response) => {
      if (status === "ok") { setConnection("online", "online"); return; }
      setConnection("offline", "join refused: " + (response.reason || status));
      setTimeout(() => { if (ws.readyState === WebSocket.OPEN) join(); }, 2000);
    });
  }

  function onFrame([frameJoinRef, frameRef, topic, event, payload]) {
    if (event === "phx_reply") {
      const cb = pending.get(frameRef);
      pending.delete(frameRef);
      if (cb) cb(payload.status, payload.response || {});
      return;
    }
    if (topic !== TOPIC || (frameJoinRef && frameJoinRef !== joinRef)) return;
    switch (event) {
      case "new:msg":
        if (payload.id) {
          if (seen.has(payload.id)) return;
          seen.add(payload.id);
          if (!lastSeenId || newer(payload.id, lastSeenId)) lastSeenId = payload.id;
        }
        showMessage(payload);
        break;
      case "user:entered": showEvent("[" + (payload.user || "anonymous") + " entered]"); break;
      case "presence_state": syncState(payload); break;
      case "presence_diff": syncDiff(payload); break;
      case "phx_close": case "phx_error": joinRef = null; setTimeout(join, 1000); break;
    }
  }

  ui.composer.addEventListener("submit", (event) => event.preventDefault());
  ui.input.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.isComposing) return;
    event.preventDefault();
    const body = ui.input.value.trim();
    if (!body || !ws || ws.readyState !== WebSocket.OPEN || !joinRef) return;
    send(TOPIC, "new:msg", { user: ui.username.value.trim(), body }, (status, response) => {
      if (status !== "ok") showEvent("not sent: " + (response.reason || status));
    });
    ui.input.value = "";
  });
  ui.username.value = localStorage.getItem("chatlab.username") || "";
  ui.username.addEventListener("change", () => localStorage.setItem("chatlab.username", ui.username.value.trim()));

  // --- The navbar's live lines ------------------------------------------------------

  async function pollStatus() {
    try {
      const nodes = await (await fetch("/api/nodes", { cache: "no-store" })).json();
      ui.nodes.textContent = "[" + nodes.nodes.join(", ") + "]";
      const ready = await (await fetch("/readyz", { cache: "no-store" })).json();
      ui.redis.textContent = ready.redis;
    } catch (_) { /* the socket's state already shows that the node is away */ }
  }
  setInterval(pollStatus, STATUS_POLL_MS);

  connect();
})();
