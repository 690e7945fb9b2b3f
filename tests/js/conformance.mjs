// Drives the official, unmodified phoenix JS client against a running ChatLab node.
//
//   node conformance.mjs <client package> <socket url> <scenario> [<more socket urls>]
//   node conformance.mjs phoenix-1.8 ws://127.0.0.1:4000/socket push
//   node conformance.mjs phoenix-1.8 ws://127.0.0.1:4001/socket cluster ws://127.0.0.1:4002/socket
//
// The `cluster` scenario takes a second url: another node of the same stage-2 cluster.
//
// Prints one JSON line per observed fact on stdout, so the Python tests assert on what the
// client actually saw. Exits 1 with a message on stderr on any failure; every wait has a
// deadline, so a silent server fails the run instead of hanging it.
import WebSocket from "ws"

const [clientPackage, url, scenario, ...otherUrls] = process.argv.slice(2)
const DEADLINE_MS = 10_000
const RESTART_DEADLINE_MS = 30_000 // the node is stopped, drained and started again meanwhile
const RUN_DEADLINE_MS = 60_000
const NODE_STOP_DEADLINE_MS = 20_000 // a drained node's goodbye, or else its missed heartbeats

function fact(step, data = {}) {
  process.stdout.write(JSON.stringify({step, ...data}) + "\n")
}

function fail(message) {
  process.stderr.write(`conformance ${scenario} (${clientPackage}): ${message}\n`)
  process.exit(1)
}

process.on("unhandledRejection", error => fail(error?.stack || String(error)))
process.on("uncaughtException", error => fail(error?.stack || String(error)))
setTimeout(() => fail(`still running after ${RUN_DEADLINE_MS} ms`), RUN_DEADLINE_MS).unref()

if (!clientPackage || !url || !scenario) {
  fail("usage: node conformance.mjs <client package> <socket url> <scenario>")
}
const {Socket, Presence} = await import(clientPackage)

// A promise settled by `start(resolve, reject)`, rejected if that takes longer than `ms`.
function within(what, start, ms = DEADLINE_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms)
    start(
      value => { clearTimeout(timer); resolve(value) },
      error => { clearTimeout(timer); reject(error) },
    )
  })
}

// The response of an ok reply to `push`; an error reply or the client's own timeout fails.
function okReply(push, what) {
  return within(`reply to ${what}`, (resolve, reject) => {
    push
      .receive("ok", resolve)
      .receive("error", response => reject(new Error(`${what}: error reply ${JSON.stringify(response)}`)))
      .receive("timeout", () => reject(new Error(`${what}: the client timed out waiting for the reply`)))
  })
}

// The first frame the socket receives that `match`es, seen through the client's onMessage hook.
function nextMessage(socket, what, match, ms = DEADLINE_MS) {
  return within(what, resolve => {
    const ref = socket.onMessage(msg => {
      if (match(msg)) { socket.off([ref]); resolve(msg) }
    })
  }, ms)
}

function connect(name, opts = {}, to = url) {
  // Node.js 20 has no global WebSocket; `ws` is the transport the client is given instead.
  // The client's own push timeout is shorter than our deadlines, so it is the one reported.
  const socket = new Socket(to, {transport: WebSocket, timeout: DEADLINE_MS / 2, ...opts})
  socket.onClose(event => fact("socket_closed", {socket: name, code: event.code}))
  socket.connect()
  return socket
}

// Joins rooms:lobby as `user`; the bindings are made before joining, as the server pushes
// right after its join reply.
async function joinLobby(socket, user, bind = () => {}) {
  const channel = socket.channel("rooms:lobby", {user})
  bind(channel)
  const response = await okReply(channel.join(), `join of rooms:lobby as ${user}`)
  fact("joined", {user, topic: channel.topic, response})
  return channel
}

// Collects the channel's new:msg payloads; `wait(id)` is the one with that id, as history
// replayed on join may arrive first.
function inbox(channel) {
  const seen = []
  const waiting = []
  channel.on("new:msg", payload => {
    seen.push(payload)
    waiting.filter(w => w.id === payload.id).forEach(w => w.resolve(payload))
  })
  return {
    wait: id => within(`new:msg ${id}`, resolve => {
      const found = seen.find(p => p.id === id)
      if (found) { resolve(found) } else { waiting.push({id, resolve}) }
    }),
  }
}

// One Presence for `channel`, whose single onSync/onLeave slots feed any number of waits:
// `until(what, test)` resolves with the sorted user list once `test(users)` holds.
function watchPresence(channel) {
  const presence = new Presence(channel)
  const waiting = []
  const left = []
  const users = () => presence.list(name => name).sort()
  const check = () => {
    for (const w of [...waiting]) {
      if (w.test(users())) { waiting.splice(waiting.indexOf(w), 1); w.resolve(users()) }
    }
  }
  presence.onSync(check)
  // `current` is what is left of the user: no metas, no socket of theirs anywhere.
  presence.onLeave((name, current) => { if (!current?.metas?.length) { left.push(name) } })
  return {
    presence,
    left,
    users,
    until: (what, test, ms = DEADLINE_MS) => within(what, resolve => {
      waiting.push({test, resolve})
      check()
    }, ms),
  }
}

function pushMessage(channel, user, body) {
  return okReply(channel.push("new:msg", {user, body}), `new:msg from ${user}`)
}

const scenarios = {
  // Join, the pushes that follow the join reply, then a message and its reply and echo.
  async push() {
    const socket = connect("alice")
    let messages
    const channel = await joinLobby(socket, "alice", channel => {
      for (const event of ["user:entered", "join", "presence_state", "presence_diff"]) {
        channel.on(event, payload => fact("received", {event, payload}))
      }
      messages = inbox(channel)
    })
    const reply = await pushMessage(channel, "alice", "hello")
    fact("reply", {status: "ok", response: reply})
    fact("echo", {payload: await messages.wait(reply.id)})
    return [socket]
  },

  // What one socket pushes, another socket in the room receives.
  async broadcast() {
    const alice = connect("alice")
    const bob = connect("bob")
    const aliceChannel = await joinLobby(alice, "alice")
    let messages
    await joinLobby(bob, "bob", channel => { messages = inbox(channel) })
    const reply = await pushMessage(aliceChannel, "alice", "hi bob")
    fact("reply", {status: "ok", response: reply})
    fact("broadcast", {to: "bob", payload: await messages.wait(reply.id)})
    return [alice, bob]
  },

  // The client's own heartbeat timer: a reply it did not recognise would make it close the
  // connection one interval later, so several replies in a row on one connection prove it.
  // The interval is also the reply's deadline, and the client checks its timers before its
  // socket, so a shorter one fails whenever a busy machine stalls the process that long.
  async heartbeat() {
    const socket = connect("alice", {heartbeatIntervalMs: 1000})
    await within("socket open", resolve => socket.onOpen(resolve))
    for (let i = 0; i < 3; i++) {
      const msg = await nextMessage(socket, "heartbeat reply", m => m.topic === "phoenix" && m.event === "phx_reply")
      fact("heartbeat_reply", {ref: msg.ref, join_ref: msg.join_ref, payload: msg.payload})
    }
    const rtt = await within("ping", resolve => {
      if (!socket.ping(resolve)) { throw new Error("socket.ping: not connected") }
    })
    fact("ping", {rtt_ms: rtt})
    fact("connection", {state: socket.connectionState(), connections: socket.establishedConnections})
    return [socket]
  },

  // leave(): the server's ok reply, its phx_close, the channel closed, and the others see her go.
  async leave() {
    const alice = connect("alice")
    const bob = connect("bob")
    const channel = await joinLobby(alice, "alice")
    let presence
    await joinLobby(bob, "bob", channel => { presence = new Presence(channel) })
    await within("alice in bob's presence", resolve => {
      presence.onSync(() => { if (presence.list(name => name).includes("alice")) { resolve() } })
    })
    const left = within("alice's presence leaving", resolve => presence.onLeave(name => { if (name === "alice") { resolve(name) } }))
    const closed = within("channel close", resolve => channel.onClose(resolve))
    const joinRef = channel.joinRef()
    // The client acknowledges a leave locally at once (it cannot push once leaving), so the
    // server's own reply and phx_close are watched on the socket. Both are watched before
    // leaving: they may arrive in one read, and a watcher added later would miss the second.
    const serverClose = nextMessage(alice, "phx_close", m => m.event === "phx_close" && m.topic === "rooms:lobby")
    const serverReply = nextMessage(alice, "server reply to phx_leave", m => m.event === "phx_reply" && m.topic === "rooms:lobby")
    const leavePush = channel.leave()
    const reply = await serverReply
    if (reply.ref !== leavePush.ref) { throw new Error(`leave reply ref ${reply.ref}, expected ${leavePush.ref}`) }
    fact("leave_reply", {topic: reply.topic, join_ref: reply.join_ref, payload: reply.payload, joined_as: joinRef})
    const close = await serverClose
    fact("server_close", {topic: close.topic, join_ref: close.join_ref, joined_as: joinRef})
    await closed
    fact("channel_closed", {state: channel.state, still_listed: alice.channels.includes(channel)})
    fact("presence_leave", {user: await left, seen_by: "bob", users: presence.list(name => name)})
    return [alice, bob]
  },

  // Presence.onSync on both sockets lists both users.
  async presence() {
    const sockets = {alice: connect("alice"), bob: connect("bob")}
    const synced = []
    for (const [user, socket] of Object.entries(sockets)) {
      await joinLobby(socket, user, channel => {
        const presence = new Presence(channel)
        synced.push(within(`presence of both at ${user}`, resolve => {
          presence.onSync(() => {
            const users = presence.list(name => name).sort()
            if (users.includes("alice") && users.includes("bob")) { resolve({users, presence}) }
          })
        }))
      })
    }
    for (const [i, user] of Object.keys(sockets).entries()) {
      const {users, presence} = await synced[i]
      const metas = presence.list((name, {metas}) => ({name, metas}))
      fact("presence_sync", {seen_by: user, users, metas})
    }
    return Object.values(sockets)
  },

  // Topics the server refuses: the join push receives the error and its reason.
  async join_errors() {
    const socket = connect("alice")
    for (const topic of ["rooms:secret", "other:topic"]) {
      const channel = socket.channel(topic, {user: "alice"})
      const response = await within(`reply to join of ${topic}`, (resolve, reject) => {
        channel.join()
          .receive("error", resolve)
          .receive("ok", () => reject(new Error(`join of ${topic} was accepted`)))
          .receive("timeout", () => reject(new Error(`join of ${topic}: the client timed out`)))
      })
      fact("join_error", {topic, response, state: channel.state})
      channel.leave() // or the client keeps rejoining it on its rejoin timer
    }
    return [socket]
  },

  // The node is restarted under the client: its own reconnect and rejoin timers must bring
  // the channel back, and a push after that must be answered.
  async restart() {
    const retryMs = () => 100 // the defaults back off to seconds; these keep the test short
    const socket = connect("carol", {reconnectAfterMs: retryMs, rejoinAfterMs: retryMs})
    socket.onOpen(() => fact("socket_open"))
    let lastSeenId = null
    let sentParams = null
    // The params are a function, so each rejoin asks only for what was missed meanwhile.
    const channel = socket.channel("rooms:lobby", () => {
      sentParams = lastSeenId ? {user: "carol", last_seen_id: lastSeenId} : {user: "carol"}
      return sentParams
    })
    channel.on("new:msg", payload => { lastSeenId = payload.id ?? lastSeenId })
    channel.onError(reason => fact("channel_errored", {reason}))
    let joins = 0
    const waiters = []
    channel.join().receive("ok", () => {
      joins += 1
      fact("joined", {count: joins, params: sentParams})
      waiters.shift()?.()
    })
    await within("first join", resolve => waiters.push(resolve))
    const before = await pushMessage(channel, "carol", "before restart")
    fact("pushed", {response: before})
    const rejoined = within("rejoin after the restart", resolve => waiters.push(resolve), RESTART_DEADLINE_MS)
    fact("ready_for_restart")
    await rejoined
    fact("rejoined", {count: joins})
    const after = await pushMessage(channel, "carol", "after restart")
    fact("pushed_after_rejoin", {response: after})
    return [socket]
  },
}

// Two nodes of a stage-2 cluster: alice's socket on the first url (node a), bob's on the
// second (node b). Messages cross both ways with their ids; presence is cluster-wide; and
// once the test stops node a (after `ready_for_stop`), bob's presence drops alice.
scenarios.cluster = async function cluster() {
  const [urlB] = otherUrls
  if (!urlB) { throw new Error("the cluster scenario needs a second socket url") }
  const sockets = {alice: connect("alice", {}, url), bob: connect("bob", {}, urlB)}
  const channels = {}
  const inboxes = {}
  const watches = {}
  for (const [user, socket] of Object.entries(sockets)) {
    channels[user] = await joinLobby(socket, user, channel => {
      inboxes[user] = inbox(channel)
      watches[user] = watchPresence(channel)
    })
  }
  for (const [user, watch] of Object.entries(watches)) {
    const users = await watch.until(`presence of alice and bob at ${user}`, list => list.includes("alice") && list.includes("bob"))
    fact("presence_sync", {seen_by: user, users, metas: watch.presence.list((name, {metas}) => ({name, metas}))})
  }
  const crossings = [["alice", "bob", "hello bob, from node a"], ["bob", "alice", "hi alice, from node b"]]
  for (const [from, to, body] of crossings) {
    const reply = await pushMessage(channels[from], from, body)
    const payload = await inboxes[to].wait(reply.id)
    const echo = await inboxes[from].wait(reply.id)
    fact("crossed", {from, to, reply, payload, echo})
  }
  fact("ready_for_stop")
  const users = await watches.bob.until("alice leaving bob's presence", list => !list.includes("alice"), NODE_STOP_DEADLINE_MS)
  fact("presence_after_stop", {seen_by: "bob", users, left: watches.bob.left})
  // The surviving node still answers: bob's room works without node a.
  const after = await pushMessage(channels.bob, "bob", "still here on node b")
  fact("pushed_after_stop", {response: after, echo: await inboxes.bob.wait(after.id)})
  return Object.values(sockets)
}

const run = scenarios[scenario]
if (!run) {
  fail(`unknown scenario ${JSON.stringify(scenario)}; one of ${Object.keys(scenarios).join(", ")}`)
}
try {
  const sockets = await run()
  for (const socket of sockets) { socket.disconnect() }
  fact("done")
  process.exit(0)
} catch (error) {
  fail(error.message)
}
