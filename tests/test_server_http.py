"""The editor's server without a browser: files stay inside their folders, uploads are limited and
must be images, prompts are checked as ComfyUI checks them, and the routes the page calls answer.
The app runs in-process on aiohttp's test server (loopback, a free port)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from nextdit_nodes.nodes import NODE_CLASS_MAPPINGS, host
from nextdit_nodes.server.app import ServerConfig, create_app

DATA = Path(__file__).resolve().parent / "data"
EMBEDDED = Path(__file__).resolve().parents[1] / "example_workflows" / "Embedded shapes model.json"


@pytest.fixture()
def folders(tmp_path):
    made = {name: tmp_path / name for name in ("output", "input", "user", "temp", "outside")}
    for path in made.values():
        path.mkdir()
    (made["outside"] / "secret.png").write_bytes(_png())
    yield made
    host.confine_to_model_folders(False)  # the server confines file inputs; tests after it do not


def _png(size=(8, 8), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _run(folders, scenario):
    """Run ``scenario(client)`` against a fresh app on the folders."""
    async def main():
        config = ServerConfig(output_dir=folders["output"], input_dir=folders["input"],
                              user_dir=folders["user"], temp_dir=folders["temp"])
        async with TestClient(TestServer(create_app(config))) as client:
            return await scenario(client)
    return asyncio.run(main())


def _tree(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


# ---- /view --------------------------------------------------------------------------------------

def test_view_refuses_names_that_leave_the_folder(folders):
    (folders["output"] / "ok.png").write_bytes(_png())
    os.symlink(folders["outside"], folders["output"] / "link")
    os.symlink(folders["outside"] / "secret.png", folders["output"] / "secret-link.png")

    async def scenario(client):
        codes = {}
        for name, query in {
            "dotdot": {"filename": "../../etc/passwd"},
            "dotdot outside": {"filename": "../outside/secret.png"},
            "absolute": {"filename": "/etc/passwd"},
            "absolute secret": {"filename": str(folders["outside"] / "secret.png")},
            "subfolder dotdot": {"filename": "secret.png", "subfolder": "../outside"},
            "symlinked folder": {"filename": "secret.png", "subfolder": "link"},
            "symlinked file": {"filename": "secret-link.png"},
            "bad type": {"filename": "ok.png", "type": "models"},
        }.items():
            response = await client.get("/view", params=query)
            codes[name] = response.status
        good = await client.get("/api/view", params={"filename": "ok.png", "type": "output"})
        return codes, good.status, await good.read()

    codes, status, body = _run(folders, scenario)
    assert all(400 <= code < 500 for code in codes.values()), codes
    assert status == 200 and body == (folders["output"] / "ok.png").read_bytes()


# ---- /upload/image ------------------------------------------------------------------------------

def _form(data: bytes, filename: str, **fields) -> dict:
    """A multipart body written by hand, so the file name arrives exactly as given (aiohttp's own
    client would percent-encode a "/" in it)."""
    boundary = "----nextdit-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
             for key, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return {"data": body, "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


def test_uploads_too_large_not_images_or_outside_are_refused_and_nothing_is_written(folders):
    before = {name: _tree(path) for name, path in folders.items() if name != "user"}

    async def scenario(client):
        codes = {}
        codes["100 MB"] = (await client.post("/upload/image", **_form(bytes(100 * 2**20), "big.png"))).status
        codes["not an image"] = (await client.post("/upload/image", **_form(b"#!/bin/sh\necho hi\n" * 50, "x.png"))).status
        codes["truncated png"] = (await client.post("/upload/image", **_form(_png()[:40], "cut.png"))).status
        codes["dotdot name"] = (await client.post("/upload/image", **_form(_png(), "../evil.png"))).status
        codes["absolute name"] = (await client.post("/upload/image", **_form(_png(), str(folders["outside"] / "evil.png")))).status
        codes["dotdot subfolder"] = (await client.post("/upload/image", **_form(_png(), "evil.png", subfolder="../outside"))).status
        return codes

    codes = _run(folders, scenario)
    assert codes["100 MB"] == 413, codes
    assert all(400 <= code < 500 for code in codes.values()), codes
    after = {name: _tree(path) for name, path in folders.items() if name != "user"}
    assert after == before  # not a byte anywhere: no file, no leftover temporary file


def test_an_image_upload_lands_in_the_input_folder_and_is_served_back(folders):
    picture = _png(colour=(10, 200, 90))

    async def scenario(client):
        first = await (await client.post("/api/upload/image", **_form(picture, "photo.png"))).json()
        other = await (await client.post("/api/upload/image", **_form(_png(), "photo.png"))).json()
        same = await (await client.post("/api/upload/image", **_form(picture, "photo.png"))).json()
        served = await (await client.get("/view", params={"filename": "photo.png", "type": "input"})).read()
        return first, other, same, served

    first, other, same, served = _run(folders, scenario)
    assert first == {"name": "photo.png", "subfolder": "", "type": "input"}
    assert other["name"] == "photo (1).png" and same["name"] == "photo.png"  # ComfyUI's naming
    assert served == picture == (folders["input"] / "photo.png").read_bytes()


# ---- /prompt ------------------------------------------------------------------------------------

def _embedded_prompt() -> dict:
    """The API prompt of the embedded workflow, as the runner (and the editor) write it."""
    from nextdit_nodes.runtime import load_workflow, runner_classes

    return load_workflow(EMBEDDED, runner_classes()).to_api()


def test_invalid_values_come_back_as_node_errors(folders):
    prompt = _embedded_prompt()
    prompt["6"]["inputs"]["cfg"] = 99.0      # above the sampler's max 30
    prompt["1"]["inputs"]["dit_name"] = "/etc/passwd"  # a path: the server accepts listed files only

    async def scenario(client):
        response = await client.post("/api/prompt", json={"prompt": prompt, "client_id": "t"})
        return response.status, await response.json()

    status, body = _run(folders, scenario)
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = body["node_errors"]
    assert set(errors) == {"1", "6"}
    (cfg,) = errors["6"]["errors"]
    # The sampler checks cfg itself (VALIDATE_INPUTS refuses a typed cfg without a negative before
    # anything runs, and naming cfg there hands its range check to it, as in ComfyUI).
    assert cfg["type"] == "custom_validation_failed" and cfg["extra_info"] == {"input_name": "cfg"}
    assert "99.0 is bigger than the maximum 30.0" in cfg["details"] and errors["6"]["class_type"] == "NextDiTSampler"
    (dit,) = errors["1"]["errors"]
    assert dit["type"] == "value_not_in_list" and dit["extra_info"]["input_name"] == "dit_name"
    assert "/etc" not in dit["details"].replace("'/etc/passwd'", "")  # names no server path


def test_newbie_template_prompt_is_refused_naming_the_missing_core_nodes(folders):
    """The prompt the real editor queues for the official NewBie template (subgraph flattened)."""
    prompt = json.loads((DATA / "newbie_template_prompt.json").read_text())
    from nextdit_nodes.runtime import runner_classes

    missing = {entry["class_type"] for entry in prompt.values()} - set(runner_classes())

    async def scenario(client):
        response = await client.post("/prompt", json={"prompt": prompt})
        return response.status, await response.json()

    status, body = _run(folders, scenario)
    assert status == 400 and body["error"]["type"] == "missing_node_type"
    named = set(body["error"]["message"].split("found here: ")[1].split(". ")[0].split(", "))
    assert named == missing and "subgraph" not in body["error"]["message"].lower()


# ---- what the page reads at start-up -------------------------------------------------------------

def test_object_info_describes_the_pack_and_core_nodes_like_comfyui(folders):
    async def scenario(client):
        return await (await client.get("/api/object_info")).json()

    info = _run(folders, scenario)
    assert set(NODE_CLASS_MAPPINGS) <= set(info) and {"SaveImage", "PrimitiveInt"} <= set(info)
    sampler = info["NextDiTSampler"]
    declared = NODE_CLASS_MAPPINGS["NextDiTSampler"].INPUT_TYPES()
    assert sampler["input_order"]["required"] == list(declared["required"])
    assert sampler["output"] == ["LATENT"] and sampler["python_module"] == "custom_nodes.nextdit-nodes"
    # The embedded model is offered out of the box.
    assert "NextDiT-embedded-shapes.pth" in info["NextDiTLoader"]["input"]["required"]["dit_name"][0]


def test_startup_routes_answer_and_settings_and_workflows_persist(folders):
    async def scenario(client):
        codes = {}
        for path in ("/", "/api/features", "/api/users", "/api/system_stats", "/api/settings",
                     "/api/i18n", "/api/extensions", "/api/global_subgraphs", "/api/node_replacements",
                     "/internal/folder_paths", "/api/experiment/models", "/api/workflow_templates",
                     "/templates/index.json", "/api/userdata/user.css", "/api/userdata/comfy.templates.json",
                     "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true",
                     "/api/jobs?status=completed,failed,cancelled&limit=64&offset=0", "/api/queue",
                     "/api/history?max_items=64", "/user.css",
                     "/templates/Embedded%20shapes%20model-1.jpg", "/templates/Embedded%20shapes%20model.json"):
            codes[path] = (await client.get(path)).status
        await client.post("/api/settings/Comfy.Minimap.Visible", json=False)
        await client.post("/api/userdata/workflows%2Fmine.json", data=b'{"nodes": []}')
        settings = await (await client.get("/api/settings")).json()
        listed = await (await client.get("/api/userdata?dir=workflows")).json()
        escape = (await client.post("/api/userdata/..%2F..%2Fescape.json", data=b"x")).status
        index = await (await client.get("/templates/index.json")).json()
        extensions = await (await client.get("/api/workflow_templates")).json()
        refused = [(await client.get(path)).status for path in (
            "/templates/Embedded%20shapes%20model%20with%20core%20KSampler.json", "/templates/..%2Fserver.json")]
        return codes, settings, listed, escape, (index, extensions, refused)

    codes, settings, listed, escape, templates = _run(folders, scenario)
    assert all(code == 200 for code in codes.values()), codes
    assert settings == {"Comfy.Minimap.Visible": False} and listed == ["mine.json"]
    assert escape == 403 and not (folders["user"].parent / "escape.json").exists()
    # The examples are the core template index's "Getting Started" category (a new user's template
    # browser opens on it: the frontend's "basics-getting-started"), not listed twice.
    index, extensions, refused = templates
    (category,) = index
    names = [template["name"] for template in category["templates"]]
    assert category["isEssential"] and category["title"] == "Getting Started" and extensions == {}
    assert "Embedded shapes model" in names
    # The examples built on core's KSampler need a full ComfyUI: not offered here.
    assert not [name for name in names if "core KSampler" in name], names
    assert len(names) == len(list(EMBEDDED.parent.glob("*.json"))) - 2
    assert refused == [404, 404]
    assert (folders["user"] / "default" / "workflows" / "mine.json").read_bytes() == b'{"nodes": []}'


def test_requests_from_another_site_are_refused(folders):
    async def scenario(client):
        foreign = await client.post("/api/prompt", json={"prompt": {}}, headers={"Origin": "http://evil.example"})
        return foreign.status

    assert _run(folders, scenario) == 403


def test_previews_with_metadata_progress_state_and_the_preview_method(folders):
    # As ComfyUI: an editor that announces supports_preview_metadata gets event-4 frames (4-byte
    # metadata length, the JSON, the JPEG) naming the node; progress_state lists the started nodes;
    # the editor's preview method "none" (extra_data.preview_method) means no previews at all.
    async def run_once(client, ws, extra: dict, seed: int):
        prompt = _embedded_prompt()
        prompt["6"]["inputs"]["seed"] = seed
        response = await client.post("/api/prompt", json={"prompt": prompt, "client_id": "c1", "extra_data": extra})
        assert response.status == 200, await response.text()
        frames, states = [], []
        while True:
            message = await ws.receive(timeout=120)
            if message.type == aiohttp.WSMsgType.BINARY:
                frames.append(message.data)
                continue
            data = json.loads(message.data)
            if data["type"] == "progress_state":
                states.append(data["data"])
            if data["type"] in ("execution_success", "execution_error"):
                assert data["type"] == "execution_success", data
                return frames, states

    async def scenario(client):
        ws = await client.ws_connect("/ws?clientId=c1")
        await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        quiet = await run_once(client, ws, {"preview_method": "none"}, 1)
        shown = await run_once(client, ws, {}, 2)
        await ws.close()
        return quiet, shown

    (quiet_frames, quiet_states), (frames, states) = _run(folders, scenario)
    kinds = [struct.unpack(">I", frame[:4])[0] for frame in quiet_frames]
    assert 1 not in kinds and 4 not in kinds and 3 in kinds      # the sampler's text, no pictures
    assert quiet_states[-1]["nodes"]["6"]["state"] == "finished"
    previews = [frame for frame in frames if struct.unpack(">I", frame[:4])[0] == 4]
    assert len(previews) == 25
    (length,) = struct.unpack(">I", previews[0][4:8])
    metadata = json.loads(previews[0][8:8 + length])
    assert metadata == {"node_id": "6", "prompt_id": metadata["prompt_id"], "display_node_id": "6",
                        "parent_node_id": None, "real_node_id": "6", "image_type": "image/jpeg"}
    assert Image.open(io.BytesIO(previews[0][8 + length:])).format == "JPEG"
    running = [s["nodes"]["6"] for s in states if s["nodes"].get("6", {}).get("state") == "running"]
    assert [entry["value"] for entry in running][-1] == 25 and running[-1]["max"] == 25
    assert set(running[-1]) == {"value", "max", "state", "node_id", "prompt_id", "display_node_id",
                                "parent_node_id", "real_node_id"}
