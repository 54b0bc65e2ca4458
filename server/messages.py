"""The ``/ws`` websocket: who is connected, and sending ComfyUI's messages to them from any thread.

Text frames are ``{"type": event, "data": {...}}``. Latent previews are binary frames as in
ComfyUI's ``protocol.py`` / ``server.py`` ``send_image``: a 4-byte big-endian event type
(1 = PREVIEW_IMAGE), a 4-byte image type (1 = JPEG), then the JPEG bytes; or, for editors that
support it, ``send_image_with_metadata``'s event 4 (``preview_frame_with_metadata``). A node's progress text
is a binary TEXT frame as ``send_progress_text`` sends it: event 3, the node id's length (4 bytes),
the node id, then the UTF-8 text.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import struct
import uuid

from aiohttp import WSMsgType, web

from .jsonio import dumps

log = logging.getLogger(__name__)

PREVIEW_IMAGE, TEXT, PREVIEW_IMAGE_WITH_METADATA, JPEG = 1, 3, 4, 1
# What this server tells the editor it supports (ComfyUI's feature flags). Frontend 1.49.6 draws a
# preview on the node only from PREVIEW_IMAGE_WITH_METADATA frames, sent to clients that announce
# "supports_preview_metadata" (plain PREVIEW_IMAGE frames to the others), as ComfyUI does.
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": 0}


def preview_frame(image, max_size: int | None) -> bytes:
    """A PIL image as a binary PREVIEW_IMAGE frame, shrunk to ``max_size`` as ComfyUI does."""
    from PIL import Image, ImageOps

    if max_size is not None:
        image = ImageOps.contain(image, (max_size, max_size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return struct.pack(">II", PREVIEW_IMAGE, JPEG) + buffer.getvalue()


def preview_frame_with_metadata(image, max_size: int | None, metadata: dict) -> bytes:
    """A PREVIEW_IMAGE_WITH_METADATA frame as ComfyUI's ``send_image_with_metadata``: event 4, the
    metadata JSON's length (4 bytes), the JSON (node ids, prompt id, ``image_type``), the JPEG."""
    jpeg = preview_frame(image, max_size)[8:]
    meta = json.dumps({**metadata, "image_type": "image/jpeg"}).encode("utf-8")
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + jpeg


def text_frame(node_id: str, text: str) -> bytes:
    """A node's progress text as a binary TEXT frame (the editor shows it on the node)."""
    node = str(node_id).encode("utf-8")
    return struct.pack(">II", TEXT, len(node)) + node + text.encode("utf-8")


# A client that has not taken a message within SEND_TIMEOUT seconds, or lets OUTBOX_LIMIT messages
# pile up, is dropped: the others never wait for it. HEARTBEAT pings find connections that died
# without closing.
SEND_TIMEOUT = 10.0
OUTBOX_LIMIT = 256
HEARTBEAT = 30.0


class Client:
    """One connected editor: its socket and the messages waiting for it, sent by its own task."""

    def __init__(self, sid: str, ws: web.WebSocketResponse, request: web.Request, send_timeout: float,
                 on_drop):
        self.sid = sid
        self.on_drop = on_drop  # (client) -> None: the hub forgets it
        self.ws = ws
        self.request = request
        self.send_timeout = send_timeout
        self.outbox: asyncio.Queue = asyncio.Queue(maxsize=OUTBOX_LIMIT)
        self.features: dict = {}   # the feature flags its editor announced
        self.task = asyncio.create_task(self._deliver())

    def offer(self, payload) -> bool:
        """Queue ``payload``; False when this client is too far behind (then it is dropped)."""
        try:
            self.outbox.put_nowait(payload)
        except asyncio.QueueFull:
            return False
        return True

    async def _deliver(self) -> None:
        while True:
            payload = await self.outbox.get()
            if self.ws.closed:
                return
            try:
                send = self.ws.send_bytes if isinstance(payload, bytes) else self.ws.send_str
                await asyncio.wait_for(send(payload), self.send_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a timeout or a dead socket drops this client only
                log.info("websocket client %s dropped: %s", self.sid, type(error).__name__)
                await self.drop()
                return

    async def drop(self) -> None:
        self.on_drop(self)
        if self.task is not asyncio.current_task():
            self.task.cancel()
        with contextlib.suppress(Exception):  # it is going away either way
            await asyncio.wait_for(self.ws.close(), 1.0)
        transport = self.request.transport  # a client that reads nothing never answers the close
        if transport is not None:
            transport.abort()


class Hub:
    """The connected editors. ``send`` and ``send_bytes`` may be called from any thread; one task
    hands each message to every addressed client's own queue, so a slow client delays nobody."""

    def __init__(self, queue_info, max_upload_size: int, send_timeout: float = SEND_TIMEOUT):
        self.queue_info = queue_info  # () -> {"exec_info": {"queue_remaining": n}}
        self.features = {**SERVER_FEATURES, "max_upload_size": max_upload_size}
        self.send_timeout = send_timeout
        self.clients: dict[str, Client] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._outbox: asyncio.Queue | None = None
        self._pump_task: asyncio.Task | None = None
        self._dropping: set[asyncio.Task] = set()

    async def start(self, app: web.Application) -> None:
        self.loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue()
        self._pump_task = asyncio.create_task(self._pump())

    async def stop(self, app: web.Application) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
        for client in list(self.clients.values()):
            await client.drop()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT)
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId") or uuid.uuid4().hex
        client = Client(sid, ws, request, self.send_timeout, self._forget)
        if (previous := self.clients.get(sid)) is not None:
            await previous.drop()
        self.clients[sid] = client
        try:
            client.offer(json.dumps({"type": "status", "data": {"status": self.queue_info(), "sid": sid}}))
            first = True
            async for message in ws:
                if message.type == WSMsgType.TEXT and first:
                    first = False
                    try:
                        data = json.loads(message.data)
                    except (ValueError, RecursionError):
                        continue
                    if isinstance(data, dict) and data.get("type") == "feature_flags":
                        announced = data.get("data")
                        client.features = announced if isinstance(announced, dict) else {}
                        client.offer(json.dumps({"type": "feature_flags", "data": self.features}))
        finally:
            self._forget(client)
            client.task.cancel()
        return ws

    def _forget(self, client: Client) -> None:
        if self.clients.get(client.sid) is client:
            del self.clients[client.sid]

    def supports(self, sid: str | None, flag: str) -> bool:
        """Whether the editor ``sid`` announced ``flag`` in its feature flags."""
        client = self.clients.get(sid or "")
        return client is not None and bool(client.features.get(flag))

    def send(self, event: str, data: dict, sid: str | None = None) -> None:
        """Send to the client ``sid``, or to everyone when ``sid`` is None (ComfyUI's rule)."""
        self._post(dumps({"type": event, "data": data}), sid)

    def send_bytes(self, payload: bytes, sid: str | None = None) -> None:
        self._post(payload, sid)

    def broadcast_status(self) -> None:
        self.send("status", {"status": self.queue_info()})

    def _post(self, payload, sid: str | None) -> None:
        if self.loop is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self._outbox.put_nowait, (payload, sid))
            except RuntimeError:  # the loop closed meanwhile: the server is stopping
                pass

    async def _pump(self) -> None:
        while True:
            payload, sid = await self._outbox.get()
            try:
                targets = list(self.clients.values()) if sid is None else [self.clients.get(sid)]
                for client in targets:
                    if client is not None and not client.offer(payload):
                        log.info("websocket client %s dropped: %d messages behind", client.sid, OUTBOX_LIMIT)
                        self._dropping.add(task := asyncio.create_task(client.drop()))
                        task.add_done_callback(self._dropping.discard)
            except Exception:  # one bad message must not silence the server
                log.exception("a websocket message was not delivered")
