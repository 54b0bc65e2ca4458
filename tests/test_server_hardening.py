"""The editor's server against hostile clients: wrong field types, pages of other sites,
DNS-rebinding Host names, websocket clients that never read, oversized images. The app runs
in-process on aiohttp's test server (loopback, a free port)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
from pathlib import Path

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from nextdit_nodes.nodes import host
from nextdit_nodes.server.app import HUB, ServerConfig, create_app

from PIL import Image

EMBEDDED = Path(__file__).resolve().parents[1] / "example_workflows" / "Embedded shapes model.json"


@pytest.fixture()
def folders(tmp_path):
    made = {name: tmp_path / name for name in ("output", "input", "user", "temp")}
    for path in made.values():
        path.mkdir()
    yield made
    host.confine_to_model_folders(False)


def _run(folders, scenario, **config):
    async def main():
        app = create_app(ServerConfig(output_dir=folders["output"], input_dir=folders["input"],
                                      user_dir=folders["user"], temp_dir=folders["temp"], **config))
        async with TestClient(TestServer(app)) as client:
            return await scenario(client, app)
    return asyncio.run(main())


def _tree(path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


async def _stalled_websocket(client) -> socket.socket:
    """A websocket client that completes the handshake and then never reads a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((client.server.host, client.server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?clientId=stalled HTTP/1.1\r\nHost: {client.server.host}:{client.server.port}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await asyncio.sleep(0.2)
    return sock


def test_websocket_keeps_delivering_after_a_list_client_id_and_beside_a_client_that_never_reads(folders):
    async def scenario(client, app):
        hub = app[HUB]
        hub.send_timeout = 1.0
        stalled = await _stalled_websocket(client)
        ws = await client.ws_connect("/ws?clientId=healthy")
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "status"
        refused = await client.post("/prompt", json={"prompt": {}, "client_id": ["a", "b"]})
        refusal = await refused.json()
        hub.send("broken", {}, sid=["a", "b"])  # an unhashable address reaching the sender anyway
        chunk = bytes(512 * 1024)
        for _ in range(48):  # 24 MB to everyone: far beyond what the stalled socket buffers
            hub.send_bytes(chunk)
        hub.send("done", {"n": 1})
        received, last = 0, None
        while True:
            message = await ws.receive(timeout=20)
            if message.type == WSMsgType.BINARY:
                received += 1
            elif message.type == WSMsgType.TEXT:
                last = message.json()
                if last["type"] == "done":
                    break
        for _ in range(50):  # the stalled client is dropped, not waited for
            if "stalled" not in hub.clients:
                break
            await asyncio.sleep(0.1)
        still_there = "stalled" in hub.clients
        await ws.close()
        stalled.close()
        return refused.status, refusal, received, still_there

    status, refusal, received, still_there = _run(folders, scenario)
    assert status == 400 and "client_id" in refusal["error"]["message"]
    assert received == 48 and not still_there


@pytest.mark.parametrize("field,value", [
    ("client_id", ["a"]), ("client_id", {"a": 1}), ("prompt_id", 5), ("number", "first"),
    ("number", float("nan")), ("number", 10**400), ("front", "yes"), ("extra_data", [1]), ("partial_execution_targets", "6"),
])
def test_prompt_fields_of_the_wrong_type_are_refused_naming_the_field(folders, field, value):
    async def scenario(client, app):
        body = json.dumps({"prompt": {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 1}}}, field: value})
        response = await client.post("/prompt", data=body, headers={"Content-Type": "application/json"})
        return response.status, await response.text()

    status, text = _run(folders, scenario)
    assert status == 400 and (field in text or "NaN" in text), text
    assert "Traceback" not in text


def _state_changing_routes(app) -> list[tuple[str, str]]:
    routes = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method in ("POST", "PUT", "DELETE", "PATCH") and path:
            routes.append((route.method, path.replace("{file}", "x.json").replace("{dest}", "y.json")
                           .replace("{id}", "Comfy.Test")))
    return routes


BAD_HEADERS = {
    "Origin null": {"Origin": "null"},
    "cross-site": {"Sec-Fetch-Site": "cross-site"},
    "other origin": {"Origin": "http://evil.example"},
    "rebinding Host": {"Host": "evil.example:8188"},
}


def test_other_sites_and_foreign_hosts_are_refused_on_every_state_changing_route_and_the_websocket(folders):
    async def scenario(client, app):
        routes = _state_changing_routes(app)
        codes = {}
        for method, path in routes:
            for name, headers in BAD_HEADERS.items():
                response = await client.request(method, path, json={"clear": True}, headers=headers)
                codes[(method, path, name)] = response.status
        for name, headers in BAD_HEADERS.items():
            response = await client.get("/ws", headers={**headers, "Upgrade": "websocket", "Connection": "Upgrade",
                                                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                        "Sec-WebSocket-Version": "13"})
            codes[("GET", "/ws", name)] = response.status
        good = await client.post("/api/settings/Comfy.Test", json=1, headers={"Host": "localhost:8188"})
        return routes, codes, good.status

    routes, codes, good = _run(folders, scenario)
    assert len(routes) >= 20  # every POST / DELETE, with and without /api
    assert set(codes.values()) == {403}, {k: v for k, v in codes.items() if v != 403}
    assert good == 200  # localhost is this machine's own name
    files = {p.relative_to(folders["user"]).as_posix() for p in (folders["user"] / "default").rglob("*") if p.is_file()}
    assert files == {"default/comfy.settings.json"}  # nothing the refused requests sent was written
    assert json.loads((folders["user"] / "default" / "comfy.settings.json").read_text()) == {"Comfy.Test": 1}


def test_allowed_host_names_follow_listen_and_allow_host():
    from nextdit_nodes.server.guard import allowed_host_names, host_allowed

    default = allowed_host_names()
    assert host_allowed("127.0.0.1:8188", default) and host_allowed("[::1]:8188", default)
    assert host_allowed("localhost:8188", default) and host_allowed("192.168.1.4:8188", default)
    assert not host_allowed("evil.example:8188", default) and not host_allowed("evil.example", default)
    named = allowed_host_names("studio.lan", ["render.example"])
    assert host_allowed("studio.lan:8188", named) and host_allowed("Render.Example.:80", named)
    assert not host_allowed("evil.example", named)


def test_an_upload_of_too_many_pixels_is_refused_before_decoding(folders):
    buffer = io.BytesIO()
    Image.new("1", (9000, 8000)).save(buffer, format="PNG")  # 72 megapixels in a small file
    data = buffer.getvalue()

    async def scenario(client, app):
        boundary = "b0undary"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
                f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        response = await client.post("/upload/image", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return response.status, await response.text()

    status, text = _run(folders, scenario)
    assert status == 415 and "9000x8000" in text and "megapixels" in text
    assert _tree(folders["input"]) == set()


def _embedded_prompt() -> dict:
    from nextdit_nodes.runtime import load_workflow, runner_classes

    return load_workflow(EMBEDDED, runner_classes()).to_api()


@pytest.mark.parametrize("link", [["3"], ["3", "0"], ["999", 0], ["3", 5], [None, 0], ["3", 0, 0], ["3", 0.5], []])
def test_malformed_links_are_refused_in_validation_like_comfyui(folders, link):
    """ComfyUI: a list input is a link, [node_id, output_index] with the node present and the
    index among its outputs; anything else is "bad_linked_input" on that node and input."""
    prompt = _embedded_prompt()
    prompt["6"]["inputs"]["model"] = link

    async def scenario(client, app):
        response = await client.post("/prompt", json={"prompt": prompt})
        return response.status, await response.json()

    status, body = _run(folders, scenario)
    assert status == 400, body
    (error,) = body["node_errors"]["6"]["errors"]
    assert error["type"] in ("bad_linked_input", "return_type_mismatch") and error["extra_info"]["input_name"] == "model"


def test_nan_never_reaches_json_and_a_duplicate_prompt_id_is_refused(folders):
    prompt = _embedded_prompt()
    text = json.dumps({"prompt": prompt}).replace('"cfg": 4', '"cfg": NaN')
    prompt_id = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"

    async def scenario(client, app):
        nan = await client.post("/prompt", data=text, headers={"Content-Type": "application/json"})
        first = await client.post("/prompt", json={"prompt": prompt, "prompt_id": prompt_id})
        again = await client.post("/prompt", json={"prompt": prompt, "prompt_id": prompt_id})
        await client.post("/interrupt")
        return nan.status, await nan.text(), first.status, again.status, await again.json()

    nan_status, nan_text, first, again, body = _run(folders, scenario)
    assert nan_status == 400 and "NaN is not a JSON number" in nan_text
    assert first == 200 and again == 400 and body["error"]["type"] == "duplicate_prompt_id"


def test_json_answers_write_non_finite_numbers_as_null():
    from nextdit_nodes.server.jsonio import dumps, loads

    assert json.loads(dumps({"a": [float("nan"), 1.5, {"b": float("inf")}]})) == {"a": [None, 1.5, {"b": None}]}
    with pytest.raises(ValueError, match="nested deeper"):
        loads("[" * 300 + "]" * 300)


def test_writes_that_collide_with_folders_or_files_answer_409_not_500(folders):
    (folders["input"] / "taken.png").write_bytes(b"x")
    (folders["input"] / "folder").mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")

    def form(filename, **fields):
        boundary = "b0undary"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + buffer.getvalue() + b"\r\n")
        return {"data": b"".join(parts) + f"--{boundary}--\r\n".encode(),
                "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}

    async def scenario(client, app):
        answers = [await client.post("/upload/image", **form("x.png", subfolder="taken.png")),
                   await client.post("/upload/image", **form("folder", overwrite="true")),
                   await client.post("/userdata/workflows", data=b"{}"),
                   await client.post("/api/settings/A", json=1),
                   await client.post("/userdata/comfy.settings.json%2Fx.json", data=b"{}"),
                   await client.post("/userdata/comfy.settings.json/move/workflows")]
        return [(answer.status, await answer.text()) for answer in answers]

    answers = _run(folders, scenario)
    assert [status for status, _ in answers] == [409, 409, 409, 200, 409, 409], answers
    assert all(text for status, text in answers if status == 409)  # each says why
