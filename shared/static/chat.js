// ChatLab page client: a small Phoenix Channels V2 client and the chat UI.
// Frames are [join_ref, ref, topic, event, payload]. User text only ever goes into
// textContent or an attribute's value, never into HTML.
"use strict";

(function () {
  const TOPIC = "rooms:lobby";
  const HEARTBEAT_MS = 30000;
  const RECONNECT_MS = [500, 1000, 2000, 5000, 10000];
  const STATUS_POLL_MS = 3000;
  const GROUP_MS = 5 * 60 * 1000;  // one user's messages this close together share one header

  const $ = (id) => document.getElementById(id);
  const ui = {
    messages: $("messages"), input: $("message-input"), username: $("username"),
    composer: $("composer"), presence: $("presence"), online: $("online-count"),
    nodes: $("nodes"), redis: $("redis"), connection: $("connection"), ping: $("ping"),
  };

  // --- Rendering --------------------------------------------------------------------

  function atBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  }

  function span(cls, text) {
    const el = document.createElement("span");
    if (cls) el.className = cls;
    el.textContent = text;
    return el;
  }

  function addLine(li) {
    const stick = atBottom();
    ui.messages.appendChild(li);
    if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
    return li;
  }

  function notice(className, ...parts) {
    const li = document.createElement("li");
    li.className = className;
    li.append(...parts);
    return addLine(li);
  }

  // A colour per name, the same in every browser, so a person is easy to spot. Hues
  // from a short list stay apart; a hue computed from the name often lands next door.
  const HUES = [250, 205, 160, 25, 330, 190, 0, 40, 285, 140];
  function hue(name) {
    let h = 0;
    for (const ch of name) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return String(HUES[h % HUES.length]);
  }

  function avatar(name) {
    const el = document.createElement("span");
    el.className = "avatar";
    el.setAttribute("aria-hidden", "true");
    // CSS draws the initial from the attribute, so it is not part of the line's text.
    const initial = name.match(/[\p{L}\p{N}]/u);
    el.dataset.initial = initial ? initial[0].toUpperCase() : "?";
    el.style.setProperty("--hue", hue(name));
    return el;
  }

  function clock(date) { return date.toLocaleTimeString([], { hour: "numeric", minute: "2-digit" }); }

  // The original's demo timer pings every few seconds. In the conversation a ping would
  // come between every few messages, so one line below it keeps the last, and counts.
  let pings = 0;
  function showPing(msg) {
    pings += 1;
    ui.ping.replaceChildren(span("user", "[SYSTEM]"), " ", span("body", msg.body),
      " ", span("meta", "last at " + new Date().toLocaleTimeString() + " · ×" + pings));
    ui.ping.hidden = false;
  }

  function showMessage(msg) {
    if (msg.user === "SYSTEM") { showPing(msg); return; }
    const user = msg.user || "anonymous";
    const when = msg.ts ? new Date(msg.ts) : null;
    const prev = ui.messages.lastElementChild;
    const li = document.createElement("li");
    li.className = "msg";
    if (user === currentUser()) li.classList.add("mine");
    // A run of messages reads as one block: only its first line says who, when and on
    // which node. A message typed on another node starts a block, so its node shows.
    if (prev && prev.sender === user && prev.node === msg.node && when && prev.sentAt && when - prev.sentAt < GROUP_MS) {
      li.classList.add("cont");
    }
    li.sender = user;
    li.node = msg.node;
    li.sentAt = when;
    li.style.setProperty("--hue", hue(user));

    const body = span("body", msg.body);
    body.dir = "auto";  // Arabic or Hebrew runs right to left inside its own bubble
    const meta = [when ? clock(when) : "", msg.node || ""].filter(Boolean).join(" · ");
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.title = [when ? when.toLocaleString() : "", msg.node || ""].filter(Boolean).join(" · ");
    bubble.append(span("user", "[" + user + "]"), " ", body, " ", span("meta", meta));
    li.append(avatar(user), bubble);
    addLine(li);
  }

  function showEvent(text, className = "event") { notice(className, span("", text)); }

  function setConnection(state, text) {
    ui.connection.dataset.state = state;
    ui.connection.textContent = text;
    document.body.dataset.connection = state;
  }

  // --- Presence (Phoenix's presence_state / presence_diff) --------------------------

  // A Map, not an object: users are keyed by the name they chose, and a name such as
  // "__proto__" or "constructor" must be a key like any other, not the object's own.
  let presences = new Map();  // user -> metas
  function syncState(state) {
    presences = new Map(Object.entries(state).map(([key, { metas }]) => [key, metas]));
    renderPresence();
  }
  function syncDiff(diff) {
    for (const [key, { metas }] of Object.entries(diff.joins || {})) {
      const refs = new Set(metas.map((m) => m.phx_ref));
      presences.set(key, (presences.get(key) || []).filter((m) => !refs.has(m.phx_ref)).concat(metas));
    }
    for (const [key, { metas }] of Object.entries(diff.leaves || {})) {
      if (!presences.has(key)) continue;
      const refs = new Set(metas.map((m) => m.phx_ref));
      const left = presences.get(key).filter((m) => !refs.has(m.phx_ref));
      if (left.length) presences.set(key, left); else presences.delete(key);
    }
    renderPresence();
  }
  function renderPresence() {
    ui.presence.replaceChildren();
    const keys = [...presences.keys()].sort();
    for (const key of keys) {
      const li = document.createElement("li");
      if (joinedAs !== null && key === joinedAs) li.className = "me";
      li.title = key;  // the whole name, when a long one is cut short
      li.append(avatar(key), span("name", key));
      const n = presences.get(key).length;
      if (n > 1) li.append(span("count", "×" + n));
      ui.presence.appendChild(li);
    }
    ui.online.textContent = String(keys.length);
  }

  // --- The socket -------------------------------------------------------------------

  let ws = null, ref = 0, joinRef = null, heartbeat = null, attempts = 0;
  let joinedAs = null;  // the name the current join carries; presence is keyed by it
  let lastSeenId = null;
  const seen = new Set();
  const pending = new Map();

  function currentUser() { return ui.username.value.trim() || "anonymous"; }
  function idKey(id) { const [ms, seq] = id.split("-"); return [Number(ms), Number(seq)]; }
  function newer(a, b) { const x = idKey(a), y = idKey(b); return x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]); }
  function isOpen() { return ws !== null && ws.readyState === WebSocket.OPEN; }

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
      // Jitter, so the clients of a restarted node do not all come back in the same instant.
      const delay = RECONNECT_MS[Math.min(attempts++, RECONNECT_MS.length - 1)] * (0.75 + Math.random() / 2);
      setTimeout(connect, delay);
    };
  }

  function join() {
    // A retry timer may fire while the socket is down; the next open joins anyway.
    if (!isOpen()) return;
    const user = ui.username.value.trim() || null;
    // The room hears who enters: it waits for a name rather than announce "anonymous".
    if (user === null) { setConnection("nameless", "type a name to join"); ui.username.focus(); return; }
    const params = { user };
    if (lastSeenId) params.last_seen_id = lastSeenId;
    joinRef = String(ref + 1);
    joinedAs = user;
    send(TOPIC, "phx_join", params, (status, response) => {
      if (status === "ok") {
        setConnection("online", "online");
        // The room moved on by more than its history while we were away: say so, above
        // the oldest message it still has, which the replay shows next.
        if (response.history_truncated) showEvent("some earlier messages are no longer available", "event gap");
        return;
      }
      joinRef = null;
      setConnection("offline", "join refused: " + (response.reason || status));
      setTimeout(join, 2000);
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
      // Other clients may join without a name; the room is told of named users only.
      case "user:entered": if (payload.user) showEvent("[" + payload.user + " entered]"); break;
      // A join storm: past the first few names of a batch, the room hears how many more came.
      case "users:entered": {
        const n = Number(payload.count) || 0;
        if (n > 0) showEvent("[and " + n + (n === 1 ? " other" : " others") + " entered]");
        break;
      }
      case "presence_state": syncState(payload); break;
      case "presence_diff": syncDiff(payload); break;
      case "phx_close": case "phx_error": joinRef = null; setTimeout(join, 1000); break;
    }
  }

  // --- The composer -----------------------------------------------------------------

  const UNAVAILABLE_RETRIES = 5, UNAVAILABLE_RETRY_MS = 2000;
  // getRandomValues, unlike randomUUID, also exists on a page served over plain http.
  const randomId = () => Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");

  ui.composer.addEventListener("submit", (event) => event.preventDefault());
  ui.input.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.isComposing) return;
    event.preventDefault();
    const body = ui.input.value.trim();
    if (!body || !isOpen() || !joinRef) return;
    const push = { user: ui.username.value.trim(), body, client_msg_id: randomId() };
    const notSent = (reason) => {
      showEvent("not sent: " + reason, "error");
      if (!ui.input.value) ui.input.value = body;  // give the text back rather than lose it
    };
    const attempt = (retries) => send(TOPIC, "new:msg", push, (status, response) => {
      if (status === "ok") return;
      const reason = response.reason || status;
      // Redis may be back in a moment. `unavailable` does not prove the message was not
      // stored; sent again with the same client_msg_id, it is stored once either way.
      if (reason !== "unavailable" || retries === 0) return notSent(reason);
      setTimeout(() => (isOpen() && joinRef ? attempt(retries - 1) : notSent(reason)), UNAVAILABLE_RETRY_MS);
    });
    attempt(UNAVAILABLE_RETRIES);
    ui.input.value = "";
  });

  ui.username.value = localStorage.getItem("chatlab.username") || "";
  // Enter in the name field moves on to the message; leaving the field commits the name.
  ui.username.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.isComposing) { event.preventDefault(); ui.input.focus(); }
  });
  ui.username.addEventListener("change", () => {
    const name = ui.username.value.trim();
    localStorage.setItem("chatlab.username", name);
    // The first name joins; the online list is keyed by the name given when joining, so a
    // new name joins again, and the server replaces the old join and replays nothing
    // already seen. A cleared name keeps the join it had.
    if (name && name !== joinedAs) join();
  });

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
