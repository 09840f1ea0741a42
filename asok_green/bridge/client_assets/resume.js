/*
 * asok_green's resume client: a WebSocket that reconnects and loses nothing (protocol asok-green.v1).
 *
 *     const socket = window.asokWS("/chat/general", { resume: true });
 *     socket.onmessage = (event) => show(event.data);
 *     socket.addEventListener("continuitylost", (event) => warn(event.detail));
 *
 * window.asokWS(path) without options is Asok's own helper, untouched: this script only adds
 * the `resume` option. Served by asok_green at /asok/green/resume.js and added to every page
 * that calls window.asokWS; it needs nothing else.
 *
 * The socket offers the subprotocol asok-green.v1. The server then wraps every frame in JSON and
 * numbers the messages of each stream that keeps history (the path's stream, and `room:<name>`
 * for each room joined with {"op": "join_room"}). After a drop the client reconnects (exponential
 * backoff with full jitter) and asks for what it missed: `?asok_since=<epoch>:<offset>` for the
 * path, `"since"` in each room's join. It delivers each numbered message once and in order; a
 * duplicate is dropped, a gap makes it reconnect so the server fills it, and when the server can
 * no longer fill it the socket fires "continuitylost" before going on with live messages.
 */
(function () {
  "use strict";

  if (window.AsokResume) {
    return; // already on the page (added by the server and loaded by the page itself)
  }

  var PROTOCOL = "asok-green.v1";
  var CONNECTING = 0;
  var OPEN = 1;
  var CLOSING = 2;
  var CLOSED = 3;
  var STORAGE_PREFIX = "asok-green.resume:";

  var DEFAULTS = {
    backoffBase: 500, // ms: the first retry waits up to this long
    backoffCap: 10000, // ms: no retry waits longer
    stableAfter: 5000, // ms: a link open this long starts the next backoff from scratch
    persist: false, // true (or a key): keep the positions in sessionStorage, so a reload resumes too
    maxQueued: 1000, // messages sent while reconnecting are kept for the next link, at most this many
  };

  /** Full jitter: a random wait in [0, min(cap, base * 2^attempt)) milliseconds. */
  function backoffDelay(attempt, base, cap, random) {
    var ceiling = Math.min(cap, base * Math.pow(2, Math.min(attempt, 30)));
    return Math.floor((random || Math.random)() * ceiling);
  }

  /** The ws:// or wss:// URL of `path`, worked out as Asok's helper does (page port, ASOK_WS_PATH). */
  function socketUrl(path) {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var prefix = window.ASOK_WS_PATH !== undefined ? window.ASOK_WS_PATH : "";
    var name = location.hostname;
    var host = location.host;
    if (name === "localhost" || name === "127.0.0.1" || name === "0.0.0.0" || name.indexOf("192.168.") === 0) {
      var pagePort = location.port ? parseInt(location.port, 10) : location.protocol === "https:" ? 443 : 80;
      host = name + ":" + (window.ASOK_WS_PORT || pagePort);
    }
    return scheme + "//" + host + prefix + path;
  }

  /** `path` with the position of its stream in the query string, for the server to replay after it. */
  function withSince(path, position) {
    if (!position) {
      return path;
    }
    var since = "asok_since=" + encodeURIComponent(position.e) + ":" + position.o;
    return path + (path.indexOf("?") >= 0 ? "&" : "?") + since;
  }

  /**
   * The last position ({e: epoch, o: offset}) of each stream, and the client rule of asok-green.v1.
   * Pure: no socket, no timer; each method says what the socket must do.
   */
  function StreamPositions(saved) {
    this.streams = new Map();
    var entries = saved && typeof saved === "object" ? saved : {};
    for (var name in entries) {
      var value = entries[name];
      if (Object.prototype.hasOwnProperty.call(entries, name) && value && typeof value.e === "string" && isFinite(value.o)) {
        this.streams.set(name, { e: value.e, o: Number(value.o) });
      }
    }
  }

  /** The position of `stream`, or undefined. */
  StreamPositions.prototype.get = function (stream) {
    return this.streams.get(stream);
  };

  /** Forget `stream` (a room left: joining it again later starts from its present). */
  StreamPositions.prototype.forget = function (stream) {
    this.streams.delete(stream);
  };

  /**
   * A numbered message arrived: "deliver" it (offset last + 1, or a stream seen for the first
   * time), drop a "duplicate" (offset <= last), or "gap" (offset > last + 1: reconnect, the
   * server fills it); "epoch": a new epoch, deliver it and tell the page continuity was lost.
   */
  StreamPositions.prototype.accept = function (stream, epoch, offset) {
    var known = this.streams.get(stream);
    if (!known) {
      this.streams.set(stream, { e: epoch, o: offset });
      return "deliver";
    }
    if (known.e !== epoch) {
      this.streams.set(stream, { e: epoch, o: offset });
      return "epoch";
    }
    if (offset <= known.o) {
      return "duplicate";
    }
    if (offset > known.o + 1) {
      return "gap";
    }
    known.o = offset;
    return "deliver";
  };

  /**
   * A notice of the server ("position", "resumed" or "continuity_lost") about `stream`: "ok",
   * "lost" (continuity lost: the position moves to the server's) or "gap" (reconnect).
   */
  StreamPositions.prototype.notice = function (kind, stream, epoch, offset) {
    var known = this.streams.get(stream);
    if (kind === "continuity_lost") {
      this.streams.set(stream, { e: epoch, o: offset });
      return "lost";
    }
    if (!known) {
      this.streams.set(stream, { e: epoch, o: offset });
      return "ok";
    }
    if (known.e !== epoch) {
      this.streams.set(stream, { e: epoch, o: offset });
      return "lost";
    }
    if (offset > known.o) {
      if (kind === "resumed") {
        return "gap"; // the replay stopped short of what the server has: ask again
      }
      this.streams.set(stream, { e: epoch, o: offset });
      return "lost"; // a position past ours, without a replay: those messages are not coming
    }
    return "ok";
  };

  /** The positions as a plain object, for sessionStorage. */
  StreamPositions.prototype.toJSON = function () {
    var out = {};
    this.streams.forEach(function (position, name) {
      out[name] = { e: position.e, o: position.o };
    });
    return out;
  };

  function decodeBase64(text, binaryType) {
    var raw = atob(text);
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) {
      bytes[i] = raw.charCodeAt(i);
    }
    return binaryType === "arraybuffer" ? bytes.buffer : new Blob([bytes]);
  }

  /** A room op the page sends ({"op": "join_room" | "leave_room", "room": ...}), or null. */
  function roomOp(data) {
    if (typeof data !== "string" || data.charAt(0) !== "{" || data.indexOf("_room") < 0) {
      return null;
    }
    try {
      var message = JSON.parse(data);
    } catch (error) {
      return null;
    }
    var op = message && message.op;
    if ((op === "join_room" || op === "leave_room") && typeof message.room === "string") {
      return message;
    }
    return null;
  }

  var EVENTS = ["open", "message", "error", "close", "resumed", "continuitylost", "reconnecting"];

  /**
   * A WebSocket-like object that survives drops: `onopen`, `onmessage`, `onclose`, `onerror`,
   * `send`, `close`, `readyState`, `addEventListener`, plus the events "resumed",
   * "continuitylost" and "reconnecting" (and their `on...` properties).
   *
   * "open" fires for every link (event.reconnected is true after the first); "close" fires once,
   * after close() is called. While the link is down readyState is CONNECTING and send() keeps
   * the messages for the next link.
   */
  class ResumingSocket extends EventTarget {
    constructor(path, options) {
      super();
      this._options = Object.assign({}, DEFAULTS, options || {});
      this._path = path;
      this.url = socketUrl(path);
      this._origin = new URL(this.url).origin;
      this.protocol = "";
      this.extensions = "";
      this.binaryType = "blob";
      var self = this;
      EVENTS.forEach(function (type) {
        // Each on<type> property is called first, as a listener added before any other.
        self["on" + type] = null;
        self.addEventListener(type, function (event) {
          var handler = self["on" + type];
          if (typeof handler === "function") {
            handler.call(self, event);
          }
        });
      });
      this._readyState = CONNECTING;
      this._socket = null;
      this._timer = null;
      this._attempt = 0;
      this._links = 0;
      this._openedAt = 0;
      this._closeRequested = false;
      this._queue = [];
      this._rooms = new Map(); // room name -> the join op the page sent
      this._storageKey = this._storageKeyFor(path);
      var saved = this._load();
      this._pathStream = typeof saved.path === "string" ? saved.path : null;
      this.positions = new StreamPositions(saved.streams);
      this._onPageHide = function () {
        self._save();
      };
      this._onOnline = function () {
        if (self._timer !== null) {
          clearTimeout(self._timer);
          self._connect();
        }
      };
      window.addEventListener("pagehide", this._onPageHide);
      window.addEventListener("online", this._onOnline);
      this._connect();
    }

    get readyState() {
      return this._readyState;
    }

    get bufferedAmount() {
      return this._socket ? this._socket.bufferedAmount : 0;
    }

    /** Send a message now, or on the next link while this one is down; nothing once closed. */
    send(data) {
      if (this._readyState === CLOSING || this._readyState === CLOSED) {
        return;
      }
      var op = roomOp(data);
      if (op !== null) {
        data = this._trackRoom(op, data);
      }
      if (this._readyState === OPEN && this._socket) {
        this._socket.send(data);
        return;
      }
      this._queue.push(data);
      if (this._queue.length > this._options.maxQueued) {
        this._queue.shift();
      }
    }

    /** Close for good: no more reconnects; "close" fires once the link is closed. */
    close(code, reason) {
      if (this._readyState === CLOSING || this._readyState === CLOSED) {
        return;
      }
      this._closeRequested = true;
      this._save();
      window.removeEventListener("pagehide", this._onPageHide);
      window.removeEventListener("online", this._onOnline);
      if (this._timer !== null) {
        clearTimeout(this._timer);
        this._timer = null;
      }
      code = code === undefined ? 1000 : code;
      var socket = this._socket;
      if (socket && (socket.readyState === CONNECTING || socket.readyState === OPEN)) {
        this._readyState = CLOSING;
        socket.close(code, reason);
        return;
      }
      this._socket = null;
      this._readyState = CLOSED;
      var self = this;
      setTimeout(function () {
        self.dispatchEvent(new CloseEvent("close", { code: code, reason: reason || "", wasClean: true }));
      });
    }

    _connect() {
      this._timer = null;
      this._readyState = CONNECTING;
      var since = this._pathStream ? this.positions.get(this._pathStream) : undefined;
      var socket;
      try {
        socket = new WebSocket(socketUrl(withSince(this._path, since)), PROTOCOL);
      } catch (error) {
        if (this._links === 0 && this._attempt === 0) {
          throw error; // a bad URL or port: the same error as new WebSocket(...) gives
        }
        var self = this;
        setTimeout(function () {
          self.dispatchEvent(new Event("error"));
          self._dropped({ code: 1006, reason: String(error), wasClean: false });
        });
        return;
      }
      socket.binaryType = "arraybuffer";
      this._socket = socket;
      this._watch(socket);
    }

    _watch(socket) {
      var self = this;
      socket.onopen = function () {
        if (self._socket === socket) {
          self._opened(socket);
        }
      };
      socket.onmessage = function (event) {
        if (self._socket === socket) {
          self._received(event);
        }
      };
      socket.onerror = function () {
        if (self._socket === socket) {
          self.dispatchEvent(new Event("error"));
        }
      };
      socket.onclose = function (event) {
        if (self._socket === socket) {
          self._dropped(event);
        }
      };
    }

    _opened(socket) {
      this._readyState = OPEN;
      this._openedAt = Date.now();
      this.protocol = socket.protocol;
      this.extensions = socket.extensions;
      var self = this;
      this._rooms.forEach(function (op, room) {
        socket.send(self._joinWithSince(op, room));
      });
      var queued = this._queue;
      this._queue = [];
      for (var i = 0; i < queued.length; i++) {
        socket.send(queued[i]);
      }
      var event = new Event("open");
      event.reconnected = this._links > 0;
      this._links += 1;
      this.dispatchEvent(event);
    }

    _received(event) {
      if (this.protocol !== PROTOCOL) {
        this._deliver(event.data); // a server that does not speak asok-green.v1: frames as they come
        return;
      }
      var frame;
      try {
        frame = JSON.parse(event.data);
      } catch (error) {
        this._deliver(event.data);
        return;
      }
      if (!frame || typeof frame !== "object") {
        this._deliver(event.data);
      } else if (typeof frame.asok === "string") {
        this._notice(frame);
      } else if (typeof frame.s === "string") {
        this._streamMessage(frame);
      } else {
        this._deliver(this._payload(frame));
      }
    }

    _payload(frame) {
      return typeof frame.b === "string" ? decodeBase64(frame.b, this.binaryType) : frame.d;
    }

    _deliver(data, frame) {
      if (data instanceof ArrayBuffer && this.binaryType === "blob") {
        data = new Blob([data]);
      }
      var init = { data: data, origin: this._origin };
      if (frame) {
        init.lastEventId = frame.e + ":" + frame.o;
      }
      var event = new MessageEvent("message", init);
      if (frame) {
        event.stream = frame.s;
        event.epoch = frame.e;
        event.offset = frame.o;
      }
      this.dispatchEvent(event);
    }

    _learnStream(stream) {
      if (stream.indexOf("room:") !== 0) {
        this._pathStream = stream;
      }
    }

    _streamMessage(frame) {
      this._learnStream(frame.s);
      var verdict = this.positions.accept(frame.s, frame.e, frame.o);
      if (verdict === "gap") {
        this._resumeNow();
        return;
      }
      if (verdict === "duplicate") {
        return;
      }
      if (verdict === "epoch") {
        this._continuityLost(frame.s, frame.e, frame.o, "epoch_changed");
      }
      this._deliver(this._payload(frame), frame);
    }

    _notice(frame) {
      var kind = frame.asok;
      if ((kind !== "position" && kind !== "resumed" && kind !== "continuity_lost") || typeof frame.s !== "string") {
        return; // a notice of a later version: not ours to act on
      }
      this._learnStream(frame.s);
      var verdict = this.positions.notice(kind, frame.s, frame.e, frame.o);
      if (verdict === "gap") {
        this._resumeNow();
        return;
      }
      this._save();
      if (verdict === "lost") {
        this._continuityLost(frame.s, frame.e, frame.o, frame.reason || "position_changed");
      }
      if (kind === "resumed") {
        var detail = { stream: frame.s, epoch: frame.e, offset: frame.o, replayed: frame.replayed || 0 };
        this.dispatchEvent(new CustomEvent("resumed", { detail: detail }));
      }
    }

    _continuityLost(stream, epoch, offset, reason) {
      var detail = { stream: stream, epoch: epoch, offset: offset, reason: reason };
      this.dispatchEvent(new CustomEvent("continuitylost", { detail: detail }));
    }

    /** Something was missed on this link: drop it and reconnect at once, asking for it. */
    _resumeNow() {
      var socket = this._socket;
      this._socket = null;
      socket.onopen = socket.onmessage = socket.onerror = socket.onclose = null;
      socket.close(1000, "resume");
      this._retry(0, 1006, "resume");
    }

    _dropped(event) {
      this._socket = null;
      if (this._closeRequested) {
        this._readyState = CLOSED;
        this.dispatchEvent(new CloseEvent("close", { code: event.code, reason: event.reason, wasClean: event.wasClean }));
        return;
      }
      var options = this._options;
      if (this._openedAt && Date.now() - this._openedAt >= options.stableAfter) {
        this._attempt = 0;
      }
      this._retry(backoffDelay(this._attempt, options.backoffBase, options.backoffCap), event.code, event.reason);
    }

    _retry(delay, code, reason) {
      this._readyState = CONNECTING;
      this._openedAt = 0;
      this._attempt += 1;
      var detail = { attempt: this._attempt, delay: delay, code: code, reason: reason };
      this.dispatchEvent(new CustomEvent("reconnecting", { detail: detail }));
      if (this._closeRequested) {
        return; // the page closed the socket from its reconnecting handler
      }
      var self = this;
      this._timer = setTimeout(function () {
        self._connect();
      }, delay);
    }

    _trackRoom(op, data) {
      if (op.op === "leave_room") {
        this._rooms.delete(op.room);
        this.positions.forget("room:" + op.room);
        return data;
      }
      this._rooms.set(op.room, op);
      return this._joinWithSince(op, op.room);
    }

    _joinWithSince(op, room) {
      var position = this.positions.get("room:" + room);
      if (!position || op.since) {
        return JSON.stringify(op);
      }
      return JSON.stringify(Object.assign({}, op, { since: { e: position.e, o: position.o } }));
    }

    _storageKeyFor(path) {
      var persist = this._options.persist;
      if (!persist) {
        return null;
      }
      return STORAGE_PREFIX + (typeof persist === "string" ? persist : path);
    }

    _load() {
      if (!this._storageKey) {
        return {};
      }
      try {
        var saved = JSON.parse(window.sessionStorage.getItem(this._storageKey) || "{}");
        return saved && typeof saved === "object" ? saved : {};
      } catch (error) {
        return {};
      }
    }

    _save() {
      if (!this._storageKey) {
        return;
      }
      try {
        var state = { path: this._pathStream, streams: this.positions.toJSON() };
        window.sessionStorage.setItem(this._storageKey, JSON.stringify(state));
      } catch (error) {
        // storage full or disabled: resuming after a reload is a bonus, never a failure
      }
    }
  }

  ResumingSocket.CONNECTING = ResumingSocket.prototype.CONNECTING = CONNECTING;
  ResumingSocket.OPEN = ResumingSocket.prototype.OPEN = OPEN;
  ResumingSocket.CLOSING = ResumingSocket.prototype.CLOSING = CLOSING;
  ResumingSocket.CLOSED = ResumingSocket.prototype.CLOSED = CLOSED;

  // window.asokWS(path) stays Asok's helper (whenever Asok's script defines it, before or after
  // this one); window.asokWS(path, {resume: true}) makes a ResumingSocket.
  var plain = typeof window.asokWS === "function" ? window.asokWS : null;

  function asokWS(path, options) {
    if (options && options.resume) {
      return new ResumingSocket(path, options);
    }
    if (plain) {
      return plain.apply(this, arguments);
    }
    return new WebSocket(socketUrl(path));
  }

  Object.defineProperty(window, "asokWS", {
    configurable: true,
    enumerable: true,
    get: function () {
      return asokWS;
    },
    set: function (helper) {
      plain = helper;
    },
  });

  window.AsokResume = {
    PROTOCOL: PROTOCOL,
    ResumingSocket: ResumingSocket,
    StreamPositions: StreamPositions,
    backoffDelay: backoffDelay,
    socketUrl: socketUrl,
    withSince: withSince,
  };
})();
