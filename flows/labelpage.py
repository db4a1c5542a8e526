"""``galot label serve``: a small local web page where a person labels the pending batch.

The page shows the batch's thumbnails in a grid, one button per class (keys ``1``…``9``,
``0``, then ``a``… for further classes), "skip — none of these" (``x``), undo (``z`` or
Backspace), progress ("37 / 100 labelled") and "done" (Enter) once every image has an
answer. Each click is one POST that rewrites the answers file atomically
(galot_core/labels.py) before it is acknowledged, so a reload, a closed tab or a killed
server loses nothing: the page is only a view of the run folder.

"done" calls ``on_done(cycle)`` (given by the command line: it resumes a paused Prefect
flow run or continues the experiment in a ``galot run`` process) and the page then
follows the run: when the next cycle stops for labels, its batch appears.

Plain ``http.server`` from the standard library, bound to 127.0.0.1 only. Requests must
name the server's own host (``Host: 127.0.0.1:<port>`` or ``localhost:<port>``, against
DNS rebinding) and changes must carry the page's random token (against other sites
posting to localhost).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from galot_core import labels
from galot_core.errors import GalotError, show

HOST = "127.0.0.1"
BODY_MAX = 1 << 16      # a request body is one small JSON object
TIMEOUT_S = 30.0        # a connection that sends nothing for this long is closed (its thread ends)
_LENGTH = re.compile(r"[0-9]{1,9}")


class BadRequest(GalotError):
    """A request the page never sends (wrong types, no or bad Content-Length, not JSON): HTTP 400."""


def _index(body: dict[str, Any], key: str) -> int:
    """``body[key]`` as a JSON integer (not 7.9, true, "7", [7], null or 1e999)."""
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{key}: must be an integer, got {show(value)}")
    return value


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 makes the 6th simultaneous connection wait seconds to connect


class LabelServer:
    """The labelling page of one run folder; ``serve_forever`` until ``shutdown``."""

    def __init__(self, run_dir: str | Path, *, port: int = 0, on_done: Callable[[int], str] | None = None,
                 activity: Callable[[], str | None] | None = None, timeout_s: float = TIMEOUT_S) -> None:
        self.run_dir = Path(run_dir)
        self.token = secrets.token_urlsafe(24)
        self.on_done = on_done
        self.activity = activity or (lambda: None)
        self.message: tuple[int, str] | None = None  # (cycle, what "done" did), shown until the next batch
        self.lock = threading.Lock()  # one change of the answers file at a time (labels_lock: across processes)
        self.timeout_s = timeout_s
        self.httpd = _Server((HOST, port), _handler(self))
        self.httpd.daemon_threads = True

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop ``serve_forever`` running in another thread, and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def close(self) -> None:
        """Close the socket after ``serve_forever`` returned (or was interrupted) in this thread."""
        self.httpd.server_close()

    # ----- what the page asks ---------------------------------------------------------
    def state(self) -> dict[str, Any]:
        s = labels.status(self.run_dir)
        if self.message and s["cycle"] not in (None, self.message[0]):
            self.message = None  # the next batch is here: what happened to the last one is old news
        s.update(run=str(self.run_dir), activity=self.activity(), message=self.message[1] if self.message else None)
        return s

    def _batch(self, body: dict[str, Any]) -> labels.Batch:
        cycle = _index(body, "cycle")
        pending = labels.pending_cycle(self.run_dir)
        if pending is None or cycle != pending:
            raise GalotError(f"cycle {cycle} is not waiting for labels (now: {pending}); reload the page")
        batch = labels.read_batch(self.run_dir, pending)
        assert batch is not None
        return batch

    def label(self, body: dict[str, Any]) -> dict[str, Any]:
        index, answer = _index(body, "index"), body.get("answer")
        if not isinstance(answer, str):
            raise BadRequest(f"answer: must be a class name or skip, got {show(answer)}")
        with self.lock:
            labels.give(self.run_dir, self._batch(body), index, answer)
        return self.state()

    def undo(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            labels.undo(self.run_dir, self._batch(body))
        return self.state()

    def done(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            batch = self._batch(body)
            left = labels.missing(batch, labels.read_answers(self.run_dir, batch.cycle))
            if left:
                raise GalotError(f"cycle {batch.cycle}: {len(left)} images still have no label; label or skip them")
        text = (self.on_done(batch.cycle) if self.on_done else
                f"cycle {batch.cycle}: all labelled; run `galot run` to continue")
        self.message = (batch.cycle, text)
        return self.state()


class _Handler(BaseHTTPRequestHandler):
    """The page's HTTP requests, answered from one :class:`LabelServer`."""

    server_version = "galot-label"
    label_server: LabelServer  # set by :func:`_handler`
    timeout: float  # StreamRequestHandler sets it on the socket: no half-open connection stays

    def _body(self) -> dict[str, Any]:
        """The request's JSON object, at most BODY_MAX bytes whatever Content-Length claims (-1, huge, junk)."""
        length = (self.headers.get("Content-Length") or "0").strip()
        if not _LENGTH.fullmatch(length) or int(length) > BODY_MAX:
            raise BadRequest(f"Content-Length must be 0 to {BODY_MAX} bytes, got {show(length)}")
        try:
            body = json.loads(self.rfile.read(int(length)) or b"{}")
        except (ValueError, RecursionError):  # RecursionError: deeply nested JSON
            raise BadRequest("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise BadRequest(f"the body must be a JSON object, got {show(body)}")
        return body

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        pass  # one line per thumbnail is noise in the terminal that runs the experiment

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").lower()
        return host in (f"{HOST}:{self.label_server.port}", f"localhost:{self.label_server.port}")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802
        if not self._host_ok():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
        path = self.path.split("?", 1)[0]
        if path == "/":
            page = PAGE.replace("__TOKEN__", self.label_server.token).encode()
            return self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
        if path == "/api/state":
            try:
                return self._json(HTTPStatus.OK, self.label_server.state())
            except GalotError as e:  # a damaged run folder: its one line, not a traceback
                return self._json(HTTPStatus.CONFLICT, {"error": str(e)})
        if path.startswith("/labels/") and path.endswith(".png"):
            target = (self.label_server.run_dir / path.lstrip("/")).resolve()
            root = labels.labels_dir(self.label_server.run_dir).resolve()
            if target.is_relative_to(root) and target.is_file():
                return self._send(HTTPStatus.OK, target.read_bytes(), "image/png")
        return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok() or self.headers.get("X-Galot-Token") != self.label_server.token:
            return self._json(HTTPStatus.FORBIDDEN, {"error": "missing or wrong token; reload the page"})
        actions = {"/api/label": self.label_server.label, "/api/undo": self.label_server.undo, "/api/done": self.label_server.done}
        action = actions.get(self.path)
        if action is None:
            return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        try:
            body = self._body()
            return self._json(HTTPStatus.OK, action(body))
        except BadRequest as e:
            self.close_connection = True  # the body may not have been read
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except GalotError as e:
            try:
                state = self.label_server.state()
            except GalotError:
                state = None
            return self._json(HTTPStatus.CONFLICT, {"error": str(e), "state": state})
        except OSError:  # TimeoutError included: the client stopped sending; drop the connection
            self.close_connection = True


def _handler(server: LabelServer) -> type[BaseHTTPRequestHandler]:
    """http.server's handler class, bound to ``server`` (it builds one handler per request)."""
    return type("Handler", (_Handler,), {"label_server": server, "timeout": server.timeout_s})


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>galot · label</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
 header{position:sticky;top:0;background:#fff;border-bottom:1px solid #d8dbe2;padding:12px 20px;z-index:2}
 h1{font-size:18px;margin:0 0 8px}
 #progress{font-weight:600}
 .bar{height:6px;background:#e4e7ec;border-radius:3px;margin:6px 0 10px;overflow:hidden}
 .bar>div{height:100%;background:#2f7d4f;width:0}
 .buttons{display:flex;flex-wrap:wrap;gap:6px}
 button{font-size:14px;padding:7px 12px;border:1px solid #b8bfcc;border-radius:6px;background:#fff;cursor:pointer}
 button:hover{background:#eef1f6} button:disabled{opacity:.45;cursor:default}
 button kbd{font-size:11px;color:#667;border:1px solid #ccd;border-radius:3px;padding:0 3px;margin-right:5px}
 #done{background:#2f7d4f;color:#fff;border-color:#2f7d4f} #done:disabled{background:#9fb8a8;border-color:#9fb8a8}
 #skip{border-style:dashed}
 main{padding:16px 20px}
 .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(132px,1fr));gap:10px}
 .card{background:#fff;border:2px solid #d8dbe2;border-radius:8px;padding:6px;cursor:pointer;text-align:center}
 .card img{width:112px;height:112px;object-fit:contain;image-rendering:pixelated;background:#222;border-radius:4px}
 .card.current{border-color:#2463eb;box-shadow:0 0 0 3px #bcd0fb}
 .card.answered{border-color:#2f7d4f}
 .card .name{font-size:11px;color:#667;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
 .card .answer{font-size:13px;font-weight:600;min-height:18px}
 .card .answer.skip{color:#a15c00}
 #note{margin:8px 0 0;color:#445;font-size:14px}
</style></head>
<body>
<header>
 <h1 id="title">galot · label</h1>
 <div><span id="progress">–</span> <span id="hint"></span></div>
 <div class="bar"><div id="bar"></div></div>
 <div class="buttons" id="classes"></div>
 <div class="buttons" style="margin-top:6px">
  <button id="skip" data-answer="skip"><kbd>x</kbd>skip — none of these</button>
  <button id="undo"><kbd>z</kbd>undo</button>
  <button id="done" disabled><kbd>Enter</kbd>done — continue the experiment</button>
 </div>
 <div id="note"></div>
</header>
<main><div class="grid" id="grid"></div></main>
<script>
const TOKEN = "__TOKEN__";
const KEYS = "1234567890abcdefghijklmnopqrstuvwy";  // x, z: skip, undo
let state = null, current = null, busy = false;

async function call(path, body) {
  const opts = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json",
               "X-Galot-Token": TOKEN}, body: JSON.stringify(body)};
  const r = await fetch(path, opts);
  const data = await r.json();
  if (!r.ok) { note(data.error || r.statusText); return data.state || null; }
  return data;
}
function shortRun(run) { return run.split("/").filter(Boolean).slice(-2).join("/"); }
function note(text) { document.getElementById("note").textContent = text || ""; }
function answered(it) { return it.answer !== null && it.answer !== undefined; }
function nextOpen(after) {
  const items = state.items, start = items.findIndex(it => it.index === after);
  for (let k = 1; k <= items.length; k++) {
    const it = items[(start + k) % items.length];
    if (!answered(it)) return it.index;
  }
  return null;
}
function render(s) {
  if (!s) return;
  const sameBatch = state && state.cycle === s.cycle;
  state = s;
  const title = document.getElementById("title"), grid = document.getElementById("grid");
  const classes = document.getElementById("classes");
  if (s.cycle === null) {
    title.textContent = "galot · " + shortRun(s.run);
    document.getElementById("progress").textContent = "no images wait for labels";
    document.getElementById("bar").style.width = "0";
    classes.innerHTML = ""; grid.innerHTML = "";
    document.getElementById("done").disabled = true;
    note(s.activity || s.message || "");
    return;
  }
  title.textContent = `galot · ${shortRun(s.run)} · cycle ${s.cycle}`;
  title.title = s.run;
  document.getElementById("progress").textContent = `${s.labelled} / ${s.total} labelled`;
  document.getElementById("hint").textContent = s.labelled === s.total ? "— all done? press done" :
      "— click a class (or press its key) for the highlighted image";
  document.getElementById("bar").style.width = (100 * s.labelled / Math.max(1, s.total)) + "%";
  if (!sameBatch || classes.children.length !== s.classes.length) {
    classes.innerHTML = "";
    s.classes.forEach((c, i) => {
      const b = document.createElement("button");
      b.dataset.answer = c;
      b.className = "class";
      b.innerHTML = (i < KEYS.length ? `<kbd>${KEYS[i]}</kbd>` : "") + c.replace(/[&<>]/g, m => `&#${m.charCodeAt(0)};`);
      b.onclick = () => answer(c);
      classes.appendChild(b);
    });
  }
  if (!sameBatch || current === null || !s.items.some(it => it.index === current)) {
    const open = s.items.find(it => !answered(it));
    current = open ? open.index : (s.items.length ? s.items[0].index : null);
  }
  grid.innerHTML = "";
  for (const it of s.items) {
    const card = document.createElement("div");
    card.className = "card" + (answered(it) ? " answered" : "") + (it.index === current ? " current" : "");
    card.dataset.index = it.index;
    const img = document.createElement("img");
    img.src = "/" + it.thumbnail; img.alt = it.image;
    const name = document.createElement("div"); name.className = "name"; name.textContent = it.image;
    name.title = it.image;
    const ans = document.createElement("div");
    ans.className = "answer" + (it.answer === "skip" ? " skip" : ""); ans.textContent = it.answer || "";
    card.append(img, ans, name);
    card.onclick = () => { current = it.index; render(state); };
    grid.appendChild(card);
  }
  document.getElementById("done").disabled = s.labelled !== s.total;
  note(s.activity || s.message || "");
}
async function answer(a) {
  if (busy || !state || state.cycle === null || current === null) return;
  busy = true;
  const at = current;
  const s = await call("/api/label", {cycle: state.cycle, index: at, answer: a});
  if (s) { state = s; const n = nextOpen(at); if (n !== null) current = n; render(s); }
  busy = false;
}
async function undo() {
  if (busy || !state || state.cycle === null) return;
  busy = true;
  const last = state.last;
  const s = await call("/api/undo", {cycle: state.cycle});
  if (s) { if (last !== null) current = last; render(s); }
  busy = false;
}
async function done() {
  if (busy || !state || state.cycle === null || state.labelled !== state.total) return;
  busy = true;
  render(await call("/api/done", {cycle: state.cycle}));
  busy = false;
}
document.getElementById("skip").onclick = () => answer("skip");
document.getElementById("undo").onclick = undo;
document.getElementById("done").onclick = done;
document.addEventListener("keydown", e => {
  if (e.ctrlKey || e.metaKey || e.altKey || !state) return;
  const k = e.key.toLowerCase();
  if (k === "x") answer("skip");
  else if (k === "z" || k === "backspace") { e.preventDefault(); undo(); }
  else if (k === "enter") done();
  else { const i = KEYS.indexOf(k); if (i >= 0 && i < state.classes.length) answer(state.classes[i]); }
});
async function refresh() { if (!busy) { const s = await call("/api/state"); if (s) render(s); } }
refresh();
setInterval(() => { if (!state || state.cycle === null || state.message) refresh(); }, 2000);
</script>
</body></html>
"""
