// The demo chat client.
//
// Chat lines travel on window.asokWS("/chat/<room>"): the server sends back
// "name: text" for every message of the room.
//
// Presence and typing use Asok's built-in operators on /asok/live. Asok's
// alive script already keeps one /asok/live socket open and re-dispatches its
// {"op": "broadcast"} messages as "asok:ws-broadcast" events, which is how
// presence changes arrive here. That socket is private to the script, so the
// page opens a second one to join the room ("chat:<room>"), to send typing
// events, and to ask for the presence list; it dispatches what it receives as
// the same event, so a single listener handles everything.

const root = document.getElementById("chat");
const room = root.dataset.room;
const liveRoom = `chat:${room}`;
const users = JSON.parse(root.dataset.users || "{}");
const meId = root.dataset.meId ? Number(root.dataset.meId) : null;
const meName = root.dataset.meName;

const messages = document.getElementById("messages");
const statusLine = document.getElementById("status");
const typingLine = document.getElementById("typing");
const composer = document.getElementById("composer");
const input = document.getElementById("message");
const people = document.getElementById("people");

const online = new Set();
const typists = new Map();
let chat = null;
let live = null;

function parseBroadcast(text) {
  if (!text.startsWith("{")) return null;
  try {
    const data = JSON.parse(text);
    return data && data.op === "broadcast" ? data : null;
  } catch {
    return null;
  }
}

function addLine(text) {
  const item = document.createElement("li");
  const cut = text.indexOf(": ");
  if (cut === -1) {
    item.className = "system";
    item.textContent = text;
  } else {
    const name = text.slice(0, cut);
    const who = document.createElement("b");
    who.textContent = name;
    item.append(who, document.createTextNode(text.slice(cut + 1)));
    if (name === meName) item.className = "mine";
  }
  const atBottom = messages.scrollTop + messages.clientHeight >= messages.scrollHeight - 8;
  messages.append(item);
  if (atBottom) messages.scrollTop = messages.scrollHeight;
}

function setStatus(text, ok) {
  statusLine.textContent = text;
  statusLine.classList.toggle("ok", ok);
}

function connectChat() {
  chat = window.asokWS(root.dataset.wsPath);
  chat.onopen = () => setStatus("connected", true);
  chat.onmessage = (event) => {
    if (typeof event.data === "string" && !parseBroadcast(event.data)) addLine(event.data);
  };
  chat.onclose = () => {
    setStatus("reconnecting…", false);
    setTimeout(connectChat, 1500);
  };
}

function sendLive(message) {
  if (live && live.readyState === WebSocket.OPEN) live.send(JSON.stringify(message));
}

function connectLive() {
  live = window.asokWS("/asok/live");
  live.onopen = () => {
    sendLive({ op: "join_room", room: liveRoom });
    sendLive({ op: "get_presence" });
  };
  live.onmessage = (event) => {
    const data = parseBroadcast(event.data);
    if (data) document.dispatchEvent(new CustomEvent("asok:ws-broadcast", { detail: data }));
  };
  live.onclose = () => setTimeout(connectLive, 2000);
}

function renderPeople() {
  people.replaceChildren(
    ...Object.entries(users).map(([id, name]) => {
      const item = document.createElement("li");
      item.textContent = Number(id) === meId ? `${name} (you)` : name;
      item.classList.toggle("online", online.has(Number(id)));
      return item;
    }),
  );
}

function renderTyping() {
  const names = [...typists.keys()].map((id) => users[id] || "Someone");
  if (names.length === 0) typingLine.textContent = "";
  else if (names.length === 1) typingLine.textContent = `${names[0]} is typing…`;
  else typingLine.textContent = `${names.join(", ")} are typing…`;
}

function showTyping(userId, typing) {
  const key = userId ?? "guest";
  clearTimeout(typists.get(key));
  if (typing) typists.set(key, setTimeout(() => showTyping(userId, false), 4000));
  else typists.delete(key);
  renderTyping();
}

function onBroadcast(event) {
  const data = event.detail;
  if (data.type === "presence") {
    if (data.status === "online") online.add(data.user_id);
    else online.delete(data.user_id);
    renderPeople();
  } else if (data.type === "presence_list") {
    online.clear();
    data.users.forEach((id) => online.add(id));
    renderPeople();
  } else if (data.type === "typing" && data.room === liveRoom && data.user_id !== meId) {
    showTyping(data.user_id, data.typing);
  } else if (data.type === "error") {
    addLine(data.message);
  }
}

let typingSent = 0;
let typingStop = null;

function onInput() {
  const now = Date.now();
  if (now - typingSent > 2000) {
    typingSent = now;
    sendLive({ op: "typing", room: liveRoom, typing: true });
  }
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
  chat.send(text);
  input.value = "";
  stopTyping();
}

document.addEventListener("asok:ws-broadcast", onBroadcast);
input.addEventListener("input", onInput);
composer.addEventListener("submit", onSubmit);
renderPeople();
connectChat();
connectLive();
