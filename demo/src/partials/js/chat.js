// The demo chat client.
//
// Chat lines travel on window.asokWS("/chat/<room>", {resume: true}) as JSON:
//   {"type": "message", "id": 7, "user_id": 1, "name": "alice", "text": "hi", "at": 1700000000}
//
// Presence, typing indicators and read receipts use Asok's built-in operators
// on /asok/live. Asok's own script keeps one /asok/live socket open; the chat
// section's data-subscribe="chat:<room>" makes it join the room, and it turns
// every {"op": "broadcast"} it receives (presence, room_presence, typing,
// receipt) into an "asok:ws-broadcast" event on document. That socket is
// private to Asok's script, so this page opens a second one to send its own
// operators (join_room, typing, receipt, get_presence); it dispatches only the
// answers meant for it (presence_list, error) as the same event, so that one
// listener handles everything.

const root = document.getElementById("chat");
const room = root.dataset.room;
const liveRoom = `chat:${room}`;
const users = JSON.parse(root.dataset.users || "{}");
const meId = root.dataset.meId ? Number(root.dataset.meId) : null;

const messages = document.getElementById("messages");
const statusLine = document.getElementById("status");
const typingLine = document.getElementById("typing");
const composer = document.getElementById("composer");
const input = document.getElementById("message");
const people = document.getElementById("people");

const online = new Set();
const inRoom = new Set();
const typists = new Map();
const seenBy = new Map();
const guestSent = [];
let chat = null;
let live = null;
let newestFromOthers = 0;
let lastReceipt = 0;
let receiptTimer = null;

const nameOf = (id) => users[id] || "Someone";
const clock = (at) => new Date(at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function avatar(name, id) {
  const badge = element("span", "avatar", (name || "?").slice(0, 1).toUpperCase());
  badge.dataset.hue = String((Number(id) || 0) % 6);
  return badge;
}

// -- messages ----------------------------------------------------------------

function scrollAfter(append) {
  const atBottom = messages.scrollTop + messages.clientHeight >= messages.scrollHeight - 8;
  messages.querySelector(".empty")?.remove();
  append();
  if (atBottom) messages.scrollTop = messages.scrollHeight;
}

function addSystemLine(text) {
  scrollAfter(() => messages.append(element("li", "system", text)));
}

function isMine(line) {
  if (meId !== null) return line.user_id === meId;
  const sent = line.user_id === null ? guestSent.indexOf(line.text) : -1;
  if (sent === -1) return false;
  guestSent.splice(sent, 1);
  return true;
}

function addMessage(line) {
  if (document.querySelector(`[data-message-id="${line.id}"]`)) return;
  const mine = isMine(line);
  const item = element("li", mine ? "message mine" : "message");
  item.dataset.messageId = line.id;
  const bubble = element("div", "bubble");
  if (!mine) bubble.append(element("b", "author", line.name));
  bubble.append(element("span", "text", line.text));
  const meta = element("span", "meta", clock(line.at));
  if (mine) meta.append(element("span", "receipt", "✓ Sent"));
  bubble.append(meta);
  if (!mine) item.append(avatar(line.name, line.user_id));
  item.append(bubble);
  scrollAfter(() => messages.append(item));
  if (mine) renderReceipts();
  else {
    newestFromOthers = Math.max(newestFromOthers, line.id);
    scheduleReceipt();
  }
}

// -- read receipts -------------------------------------------------------------

function scheduleReceipt() {
  clearTimeout(receiptTimer);
  receiptTimer = setTimeout(sendReceipt, 250);
}

function sendReceipt() {
  if (document.visibilityState !== "visible" || newestFromOthers <= lastReceipt) return;
  if (sendLive({ op: "receipt", room: liveRoom, message_id: newestFromOthers, status: "read" })) {
    lastReceipt = newestFromOthers;
  }
}

function renderReceipts() {
  messages.querySelectorAll("li.mine").forEach((item) => {
    const id = Number(item.dataset.messageId);
    const readers = [...seenBy].filter(([, upTo]) => upTo >= id).map(([userId]) => nameOf(userId));
    const label = item.querySelector(".receipt");
    label.textContent = readers.length ? `✓✓ Seen by ${readers.join(", ")}` : "✓ Sent";
    label.classList.toggle("seen", readers.length > 0);
  });
}

// -- people, presence and typing -------------------------------------------------

function renderPeople() {
  const rows = Object.entries(users).map(([id, name]) => {
    const userId = Number(id);
    const item = element("li", "person");
    item.classList.toggle("online", online.has(userId));
    item.classList.toggle("here", inRoom.has(userId));
    item.classList.toggle("is-typing", typists.has(userId));
    item.dataset.userId = id;
    const who = element("span", "who", name);
    if (userId === meId) who.append(element("small", "muted", " (you)"));
    const state = typists.has(userId) ? "typing…" : inRoom.has(userId) ? "here" : "";
    item.append(avatar(name, userId), who, element("span", "here-tag", state));
    return item;
  });
  rows.sort((a, b) => Number(b.classList.contains("online")) - Number(a.classList.contains("online")));
  people.replaceChildren(...rows);
}

function renderTyping() {
  const names = [...typists.keys()].map((id) => (id === "guest" ? "A guest" : nameOf(id)));
  typingLine.replaceChildren();
  if (names.length === 0) return;
  const verb = names.length === 1 ? "is" : "are";
  typingLine.append(element("span", "dots"), `${names.join(", ")} ${verb} typing…`);
  typingLine.firstChild.append(element("i"), element("i"), element("i"));
}

function showTyping(userId, typing) {
  const key = userId ?? "guest";
  clearTimeout(typists.get(key));
  if (typing) typists.set(key, setTimeout(() => showTyping(userId, false), 5000));
  else typists.delete(key);
  renderTyping();
  renderPeople();
}

function onBroadcast(event) {
  const data = event.detail;
  if (data.type === "presence") {
    if (data.status === "online") online.add(data.user_id);
    else online.delete(data.user_id);
    renderPeople();
  } else if (data.type === "presence_list") {
    const target = data.room === liveRoom ? inRoom : data.room === undefined ? online : null;
    if (!target) return;
    target.clear();
    data.users.forEach((id) => target.add(id));
    renderPeople();
  } else if (data.room !== liveRoom) {
    if (data.type === "error") addSystemLine(data.message);
  } else if (data.type === "room_presence") {
    if (data.status === "joined") inRoom.add(data.user_id);
    else {
      inRoom.delete(data.user_id);
      if (typists.has(data.user_id)) showTyping(data.user_id, false);
    }
    if (data.user_id !== meId) addSystemLine(`${nameOf(data.user_id)} ${data.status} #${room}`);
    renderPeople();
  } else if (data.type === "typing" && data.user_id !== meId) {
    showTyping(data.user_id, data.typing);
  } else if (data.type === "receipt" && data.user_id !== meId && data.user_id !== null) {
    seenBy.set(data.user_id, Math.max(seenBy.get(data.user_id) || 0, Number(data.message_id)));
    renderReceipts();
  } else if (data.type === "error") {
    addSystemLine(data.message);
  }
}

// -- the two sockets -----------------------------------------------------------------

function setStatus(text, ok) {
  statusLine.textContent = text;
  statusLine.classList.toggle("ok", ok);
}

// The chat socket is asok_green's resume client: it reconnects by itself and the
// server replays what the page missed (the route keeps history), so a dropped link
// loses nothing; when the server cannot fill the gap, the page says so.
function connectChat() {
  chat = window.asokWS(root.dataset.wsPath, { resume: true });
  chat.addEventListener("open", () => setStatus("connected", true));
  chat.addEventListener("reconnecting", () => setStatus("reconnecting…", false));
  chat.addEventListener("continuitylost", showContinuityLost);
  chat.onmessage = (event) => {
    try {
      const line = JSON.parse(event.data);
      if (line && line.type === "message") addMessage(line);
    } catch {
      // Not a chat line (another client of this path may send plain text).
    }
  };
}

function showContinuityLost() {
  const notice = element("li", "system continuity-lost", "Continuity lost: some messages were missed.");
  notice.setAttribute("role", "alert");
  scrollAfter(() => messages.append(notice));
}

function sendLive(message) {
  if (!live || live.readyState !== WebSocket.OPEN) return false;
  live.send(JSON.stringify(message));
  return true;
}

function connectLive() {
  live = window.asokWS("/asok/live");
  live.onopen = () => {
    sendLive({ op: "join_room", room: liveRoom });
    sendLive({ op: "get_presence" });
    sendLive({ op: "get_presence", room: liveRoom });
    sendReceipt();
  };
  live.onmessage = (event) => {
    let data = null;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    // Everything else also reaches Asok's own socket, which dispatches it.
    if (data && data.op === "broadcast" && (data.type === "presence_list" || data.type === "error")) {
      document.dispatchEvent(new CustomEvent("asok:ws-broadcast", { detail: data }));
    }
  };
  live.onclose = () => setTimeout(connectLive, 2000);
}

// -- the composer ----------------------------------------------------------------------

let typingSent = 0;
let typingStop = null;

function onInput() {
  if (!input.value) return stopTyping();
  const now = Date.now();
  if (now - typingSent > 2000 && sendLive({ op: "typing", room: liveRoom, typing: true })) typingSent = now;
  clearTimeout(typingStop);
  typingStop = setTimeout(stopTyping, 3000);
}

function stopTyping() {
  clearTimeout(typingStop);
  if (typingSent) sendLive({ op: "typing", room: liveRoom, typing: false });
  typingSent = 0;
}

function onSubmit(event) {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || !chat || chat.readyState !== WebSocket.OPEN) return;
  if (meId === null) guestSent.push(text);
  chat.send(text);
  input.value = "";
  stopTyping();
}

document.addEventListener("asok:ws-broadcast", onBroadcast);
document.addEventListener("visibilitychange", sendReceipt);
input.addEventListener("input", onInput);
composer.addEventListener("submit", onSubmit);
renderPeople();
connectChat();
connectLive();
