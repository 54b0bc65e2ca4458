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
import io
import json
import logging
import struct
import uuid

from aiohttp import WSMsgType, web

log = logging.getLogger(__name__)

PREVIEW_IMAGE, TEXT, PREVIEW_IMAGE_WITH_METADATA, JPEG = 1, 3, 4, 1
# What this server tells the editor it supports (ComfyUI's feature flags). Frontend 1.49.6 draws a
# preview on the node only from PREVIEW_IMAGE_WITH_METADATA frames, sent to clients that announce
# "supports_preview_metadata" (plain PREVIEW_IMAGE frames to the others), as ComfyUI does.
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": 0}


def preview_frame(image, max_size: int | None) -> bytes:
    """A PIL image as a binary PREVIEW_IMAGE frame, shrunk to ``max_size`` as ComfyUI does."""
    from PIL import Image, ImageOps  # noqa: PLC0415

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


class Hub:
    """The connected editors. ``send`` and ``send_bytes`` may be called from any thread; one task
    delivers the messages in the order they were sent."""

    def __init__(self, queue_info, max_upload_size: int):
        self.queue_info = queue_info  # () -> {"exec_info": {"queue_remaining": n}}
        self.features = {**SERVER_FEATURES, "max_upload_size": max_upload_size}
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.client_features: dict[str, dict] = {}   # sid -> the feature flags its editor announced
        self.loop: asyncio.AbstractEventLoop | None = None
        self._outbox: asyncio.Queue | None = None
        self._pump_task: asyncio.Task | None = None

    async def start(self, app: web.Application) -> None:
        self.loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue()
        self._pump_task = asyncio.create_task(self._pump())

    async def stop(self, app: web.Application) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
        for ws in list(self.sockets.values()):
            await ws.close()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        try:
            await ws.send_json({"type": "status", "data": {"status": self.queue_info(), "sid": sid}})
            first = True
            async for message in ws:
                if message.type == WSMsgType.TEXT and first:
                    first = False
                    try:
                        data = json.loads(message.data)
                    except ValueError:
                        continue
                    if isinstance(data, dict) and data.get("type") == "feature_flags":
                        announced = data.get("data")
                        self.client_features[sid] = announced if isinstance(announced, dict) else {}
                        await ws.send_json({"type": "feature_flags", "data": self.features})
        finally:
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
                self.client_features.pop(sid, None)
        return ws

    def supports(self, sid: str | None, flag: str) -> bool:
        """Whether the editor ``sid`` announced ``flag`` in its feature flags."""
        return bool(self.client_features.get(sid or "", {}).get(flag))

    def send(self, event: str, data: dict, sid: str | None = None) -> None:
        """Send to the client ``sid``, or to everyone when ``sid`` is None (ComfyUI's rule)."""
        self._post(json.dumps({"type": event, "data": data}), sid)

    def send_bytes(self, payload: bytes, sid: str | None = None) -> None:
        self._post(payload, sid)

    def broadcast_status(self) -> None:
        self.send("status", {"status": self.queue_info()})

    def _post(self, payload, sid: str | None) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._outbox.put_nowait, (payload, sid))

    async def _pump(self) -> None:
        while True:
            payload, sid = await self._outbox.get()
            targets = list(self.sockets.values()) if sid is None else [self.sockets.get(sid)]
            for ws in targets:
                if ws is None or ws.closed:
                    continue
                try:
                    if isinstance(payload, bytes):
                        await ws.send_bytes(payload)
                    else:
                        await ws.send_str(payload)
                except (ConnectionError, RuntimeError) as error:  # the page went away meanwhile
                    log.debug("a websocket message was not delivered: %s", error)
