"""Send `serve` and the runner the bad inputs a hostile or careless client sends, and count the
clean answers: a 4xx with a message (server) or exit code 3 with a message (runner), never a
500, a traceback or a dead server. Loopback only; every loop bounded.

    python benchmarks/hardening_audit.py [--only load|server|runner] [--port 8391]

Prints each input that was not answered cleanly, then the totals.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "example_workflows" / "Embedded shapes model.json"
UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def _png_bytes(size=(8, 8)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1" if size[0] * size[1] > 10**6 else "RGB", size).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def text_bomb_png() -> bytes:
    """A tiny PNG whose compressed text chunk inflates to 200 MB."""
    png = _png_bytes()
    bomb = zlib.compress(b" " * (200 * 2**20), 9)
    chunk = _chunk(b"zTXt", b"workflow\x00\x00" + bomb)
    return png[:33] + chunk + png[33:]


def huge_png(width=60000, height=60000) -> bytes:
    """A PNG header claiming 3.6 gigapixels (the pixel data is never reached)."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b"")


# ---- the server ---------------------------------------------------------------------------------

def _prompt() -> dict:
    from nextdit_nodes.runtime import load_workflow, runner_classes

    return load_workflow(EMBEDDED, runner_classes()).to_api()


def _multipart(data: bytes, filename: str = "x.png", **fields) -> tuple[bytes, dict]:
    boundary = "audit-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"}


def server_cases() -> list[tuple[str, str, str, bytes | None, dict]]:
    """(name, method, path, body, headers)."""
    prompt = _prompt()
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "NextDiTSampler")
    decode = next(k for k, v in prompt.items() if v["class_type"].endswith("VAEDecode"))
    model_input = next(n for n, v in prompt[sampler]["inputs"].items() if isinstance(v, list))

    def edited(node, name, value):
        changed = json.loads(json.dumps(prompt))
        changed[node]["inputs"][name] = value
        return changed

    cases: list = []

    def post_prompt(name, body, raw=False):
        data = body if raw else json.dumps(body).encode()
        cases.append((f"/prompt {name}", "POST", "/prompt", data, {"Content-Type": "application/json"}))

    post_prompt("not JSON", b"{nope", raw=True)
    post_prompt("empty body", b"", raw=True)
    post_prompt("not UTF-8", b'{"prompt": "\xff\xfe"}', raw=True)
    post_prompt("a JSON list", [1, 2])
    post_prompt("a JSON string", "prompt")
    post_prompt("no prompt", {})
    post_prompt("prompt a list", {"prompt": []})
    post_prompt("prompt a string", {"prompt": "x"})
    post_prompt("nested 100000 deep", b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}", raw=True)
    for field, value in [("client_id", ["a"]), ("client_id", {"a": 1}), ("client_id", 7),
                         ("prompt_id", 5), ("prompt_id", ["x"]), ("prompt_id", "not-a-uuid"),
                         ("number", "first"), ("number", [1]), ("front", "yes"),
                         ("extra_data", [1]), ("extra_data", "x"),
                         ("partial_execution_targets", "6"), ("partial_execution_targets", [{"a": 1}])]:
        post_prompt(f"{field}={json.dumps(value)}", {"prompt": prompt, field: value})
    for constant in ("NaN", "Infinity", "-Infinity"):
        body = f'{{"prompt": {json.dumps(prompt)}, "number": {constant}}}'.encode()
        post_prompt(f"number={constant}", body, raw=True)
        post_prompt(f"cfg={constant}", json.dumps(edited(sampler, "cfg", 1.0)).replace(
            '"cfg": 1.0', f'"cfg": {constant}').join(['{"prompt": ', "}"]).encode(), raw=True)
    post_prompt("node entry a list", {"prompt": {"1": []}})
    post_prompt("class_type a number", {"prompt": {"1": {"class_type": 5, "inputs": {}}}})
    post_prompt("inputs a list", {"prompt": {**prompt, sampler: {"class_type": "NextDiTSampler", "inputs": [1]}}})
    post_prompt("unknown node type", {"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
    for label, link in [('["6"]', [decode]), ('[id, "0"]', [decode, "0"]), ('[missing, 0]', ["999", 0]),
                        ('[id, 99]', [decode, 99]), ('[id, -1]', [decode, -1]), ('[null, 0]', [None, 0]),
                        ('[id, 0, 0]', [decode, 0, 0]), ('[id, 0.5]', [decode, 0.5]), ("[]", [])]:
        post_prompt(f"link {label}", {"prompt": edited(sampler, model_input, link)})
    post_prompt("steps a string", {"prompt": edited(sampler, "steps", "many")})
    post_prompt("number 10**400", f'{{"prompt": {json.dumps(prompt)}, "number": 1{"0" * 400}}}'.encode(), raw=True)
    post_prompt("steps 10**400", f'{{"prompt": {json.dumps(edited(sampler, "steps", 7))}}}'.replace(
        '"steps": 7', '"steps": ' + "9" * 400).encode(), raw=True)
    post_prompt("seed a list", {"prompt": edited(sampler, "seed", {"a": 1})})
    post_prompt("width negative", {"prompt": edited(sampler, "width", -64)})
    post_prompt("cycle", {"prompt": edited(sampler, model_input, [sampler, 0])})
    post_prompt("no output node", {"prompt": {k: v for k, v in prompt.items()
                                              if v["class_type"] not in ("SaveImage", "PreviewImage")}})
    post_prompt("duplicate prompt_id (second)", {"prompt": prompt, "prompt_id": UUID, "number": 10**9})

    def post_json(path, name, raw: bytes):
        cases.append((f"{path} {name}", "POST", path, raw, {"Content-Type": "application/json"}))

    for path in ("/queue", "/history", "/interrupt", "/settings"):
        post_json(path, "not JSON", b"{nope")
        post_json(path, "a JSON list", b"[1]")
        post_json(path, "nested 100000 deep", b"[" * 100000 + b"]" * 100000)
    post_json("/queue", "delete a string", b'{"delete": "abc"}')
    post_json("/history", "delete a number", b'{"delete": 5}')
    post_json("/interrupt", "prompt_id a list", b'{"prompt_id": [1]}')
    post_json("/settings", "NaN value", b'{"a": NaN}')
    post_json("/settings/Comfy.X", "not JSON", b"{nope")
    for query in ("max_items=abc", "offset=abc", "max_items=-1"):
        cases.append((f"/history?{query}", "GET", f"/history?{query}", None, {}))
    for query in ("limit=abc", "limit=-5", "status=bogus", "offset=x"):
        cases.append((f"/jobs?{query}", "GET", f"/jobs?{query}", None, {}))
    cases.append(("/jobs/unknown", "GET", "/jobs/unknown", None, {}))
    for query in ("", "filename=x.png&type=models", "filename=../../etc/passwd", "filename=a%00b.png",
                  "filename=missing.png", "filename=note.txt&preview=webp",
                  "filename=/etc/passwd", "filename=ok.png&subfolder=../.."):
        cases.append((f"/view?{query}", "GET", f"/view?{query}", None, {}))
    for name, (data, filename, fields) in {
        "no file": (None, None, {}), "not an image": (b"#!/bin/sh\n" * 20, "x.png", {}),
        "truncated": (_png_bytes()[:40], "cut.png", {}), "60000x60000 header": (huge_png(), "huge.png", {}),
        "72 megapixels": (_png_bytes((9000, 8000)), "big.png", {}),
        "bad type": (_png_bytes(), "x.png", {"type": "models"}),
        "dotdot name": (_png_bytes(), "../x.png", {}),
        "dotdot subfolder": (_png_bytes(), "x.png", {"subfolder": "../.."}),
        "subfolder that is a file": (_png_bytes(), "x.png", {"subfolder": "taken.png"}),
        "name of a folder": (_png_bytes(), "folder", {}),
        "name of a folder, overwrite": (_png_bytes(), "folder", {"overwrite": "true"}),
    }.items():
        if data is None:
            body, headers = b"--audit-boundary--\r\n", {"Content-Type": "multipart/form-data; boundary=audit-boundary"}
        else:
            body, headers = _multipart(data, filename, **fields)
        cases.append((f"/upload/image {name}", "POST", "/upload/image", body, headers))
    cases.append(("/upload/image JSON body", "POST", "/upload/image", b"{}", {"Content-Type": "application/json"}))
    for name, method, path in [("dir missing", "GET", "/userdata"), ("dir outside", "GET", "/userdata?dir=../.."),
                               ("dotdot file", "POST", "/userdata/..%2F..%2Fx.json"),
                               ("move outside", "POST", "/userdata/workflows%2Fa.json/move/..%2F..%2Fb.json"),
                               ("delete missing", "DELETE", "/userdata/workflows%2Fnone.json"),
                               ("write onto a folder", "POST", "/userdata/workflows"),
                               ("write under a file", "POST", "/userdata/comfy.settings.json%2Fx.json"),
                               ("move onto a folder", "POST", "/userdata/comfy.settings.json/move/workflows"),
                               ("delete a folder", "DELETE", "/userdata/workflows")]:
        cases.append((f"/userdata {name}", method, path, b"x" if method == "POST" else None, {}))
    for name, headers in [("Origin null", {"Origin": "null"}), ("cross-site", {"Sec-Fetch-Site": "cross-site"}),
                          ("other origin", {"Origin": "http://evil.example"}),
                          ("rebinding Host", {"Host": "evil.example:8188"})]:
        for path in ("/prompt", "/queue", "/interrupt", "/settings", "/userdata/x.json", "/upload/image"):
            cases.append((f"{name} POST {path}", "POST", path, b"{}", {**headers, "Content-Type": "application/json"}))
    return cases


def run_server_audit(port: int) -> tuple[int, int, list[str]]:
    with tempfile.TemporaryDirectory(prefix="nextdit-audit-") as scratch:
        scratch = Path(scratch)
        for name in ("output", "input", "user"):
            (scratch / name).mkdir()
        (scratch / "output" / "note.txt").write_text("not an image")
        (scratch / "output" / "ok.png").write_bytes(_png_bytes())
        (scratch / "input" / "taken.png").write_bytes(_png_bytes())
        (scratch / "input" / "folder").mkdir()
        (scratch / "user" / "default").mkdir()
        (scratch / "user" / "default" / "comfy.settings.json").write_text("{}")
        env = dict(os.environ)
        server = subprocess.Popen(
            [sys.executable, "-m", "nextdit_nodes", "serve", "--port", str(port),
             "--output-dir", str(scratch / "output"),
             "--input-dir", str(scratch / "input"), "--user-dir", str(scratch / "user")],
            cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for(port)
            cases = server_cases()
            _request(port, "POST", "/prompt", json.dumps({"prompt": _prompt(), "prompt_id": UUID,
                                                           "number": 10**9}).encode(), {})
            bad = []
            for name, method, path, body, headers in cases:
                try:
                    status, text = _request(port, method, path, body, headers)
                except OSError as error:
                    bad.append(f"{name}: no answer ({error})")
                    continue
                if not (400 <= status < 500 and text.strip() and "Traceback" not in text):
                    bad.append(f"{name}: {status} {text[:120]!r}")
            alive = _request(port, "GET", "/queue", None, {})[0] == 200
            if not alive:
                bad.append("the server stopped answering")
            _request(port, "POST", "/queue", b'{"clear": true}', {})
            _request(port, "POST", "/interrupt", b"", {})
            return len(cases), len(cases) - len(bad), bad
        finally:
            server.terminate()
            server.wait(timeout=30)


def _wait_for(port: int) -> None:
    for _ in range(300):
        try:
            _request(port, "GET", "/api/features", None, {})
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def _request(port, method, path, body, headers, timeout=120) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


# ---- load and faults ----------------------------------------------------------------------------

def _start_server(port: int, folder: Path) -> subprocess.Popen:
    env = dict(os.environ)
    server = subprocess.Popen(
        [sys.executable, "-m", "nextdit_nodes", "serve", "--port", str(port), "--output-dir", str(folder / "output"),
         "--input-dir", str(folder / "input"), "--user-dir", str(folder / "user")],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(port)
    return server


def _stalled_websocket(port: int):
    """A websocket client that completes the handshake and never reads."""
    import base64
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?clientId=stalled HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    return sock


def _history_when(port: int, prompt_ids: set[str], seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        history = json.loads(_request(port, "GET", "/history", None, {})[1])
        if prompt_ids <= set(history) or time.monotonic() > deadline:
            return history
        time.sleep(0.5)


def _running_id(port: int, other_than: str | None, seconds: float = 300) -> str | None:
    """The id of the running prompt once it is not ``other_than`` (None: once one runs)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        running = json.loads(_request(port, "GET", "/queue", None, {})[1])["queue_running"]
        current = running[0][1] if running else None
        if (other_than is None and current is not None) or (other_than is not None and current != other_than):
            return current
        time.sleep(0.05)
    return None


def run_load_audit(port: int, prompts: int = 24, interrupts: int = 4) -> list[str]:
    """``prompts`` small prompts posted at once from as many threads, a websocket client that
    never reads connected throughout, ``interrupts`` Cancels while they run, then kill -9 with
    prompts waiting and a restart. Nothing may be lost: every prompt in the history once, one
    image per successful run, no half-written file."""
    from concurrent.futures import ThreadPoolExecutor

    prompt = _prompt()
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "NextDiTSampler")
    prompt[sampler]["inputs"].update(steps=4, width=32, height=32)

    def post(seed: int) -> str:
        body = json.loads(json.dumps({"prompt": prompt, "client_id": "audit"}))
        body["prompt"][sampler]["inputs"]["seed"] = seed
        status, text = _request(port, "POST", "/prompt", json.dumps(body).encode(),
                                {"Content-Type": "application/json"})
        return json.loads(text)["prompt_id"] if status == 200 else f"refused {status}"

    lines = []
    with tempfile.TemporaryDirectory(prefix="nextdit-audit-") as scratch:
        scratch = Path(scratch)
        for name in ("output", "input", "user"):
            (scratch / name).mkdir()
        server = _start_server(port, scratch)
        stalled = _stalled_websocket(port)
        try:
            with ThreadPoolExecutor(max_workers=prompts) as pool:
                posted = list(pool.map(post, range(prompts)))
            for _ in range(interrupts):  # Cancels while the queue runs, each on a running prompt
                running = _running_id(port, None)
                _request(port, "POST", "/interrupt", b"", {})
                _running_id(port, running)  # until that prompt has stopped
            refused = [p for p in posted if p.startswith("refused")]
            queued = [post(1000 + seed) for seed in range(6)]
            time.sleep(0.5)
            server.kill()  # kill -9 with prompts waiting
            server.wait(timeout=30)
            server = _start_server(port, scratch)
            wanted = {p for p in posted + queued if not p.startswith("refused")}
            history = _history_when(port, wanted, 600)
        finally:
            stalled.close()
            server.terminate()
            server.wait(timeout=30)
        done = {pid: item["status"]["status_str"] for pid, item in history.items()}
        missing = wanted - set(done)
        successes = sum(status == "success" for status in done.values())
        images = [p for p in (scratch / "output").rglob("*") if p.is_file()]
        partial = [p for p in images if p.name.endswith(".partial")]
        lines.append(f"load: {prompts} prompts posted at once + {len(queued)} waiting at kill -9, "
                     f"{len(refused)} refused, {len(missing)} lost, {successes} ran to the end, "
                     f"{len(done) - successes} interrupted or failed ({interrupts} Cancels, one kill -9 "
                     f"and a restart), {len(images) - len(partial)} images for {successes} successes, "
                     f"{len(partial)} half-written files")
        if refused or missing or partial:
            lines.append("load: NOT HELD")
    return lines


# ---- the runner ---------------------------------------------------------------------------------

def runner_cases(folder: Path) -> list[tuple[str, Path, list[str]]]:
    """(name, workflow file, extra arguments)."""
    prompt = _prompt()
    save = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "NextDiTSampler")
    files = {
        "not JSON": b"{nope", "not UTF-8": b'{"a": "\xff"}', "empty": b"", "a JSON list": b"[1, 2]",
        "nested 100000 deep": b"[" * 100000 + b"]" * 100000,
        "nested 5000 deep in a node": json.dumps(prompt).replace(
            '"inputs": {', '"deep": ' + "[" * 5000 + "]" * 5000 + ', "inputs": {', 1).encode(),
        "chain of 3000 nodes": json.dumps(_chain(prompt, 3000)).encode(),
        "link [\"6\"]": json.dumps({**prompt, sampler: {**prompt[sampler], "inputs": {
            **prompt[sampler]["inputs"], "model": [save]}}}).encode(),
        "cfg NaN": json.dumps(prompt).replace('"cfg": ', '"cfg": NaN, "x": ', 1).encode(),
    }
    cases = []
    for name, data in files.items():
        path = folder / f"{len(cases)}.json"
        path.write_bytes(data)
        cases.append((name, path, []))
    for name, data in {"60000x60000 PNG": huge_png(), "text-bomb PNG": text_bomb_png(),
                       "truncated PNG": _png_bytes()[:30]}.items():
        path = folder / f"{len(cases)}.png"
        path.write_bytes(data)
        cases.append((name, path, []))
    blocker = folder / "a-file"
    blocker.write_text("x")
    good = folder / "good.json"
    good.write_text(json.dumps(prompt))
    cases.append(("output folder cannot be created", good, ["--output-dir", str(blocker / "out")]))
    cases.append(("--set steps=abc", good, ["--set", f"{sampler}.steps=abc"]))
    cases.append(("--set cfg=nan", good, ["--set", f"{sampler}.cfg=nan"]))
    return cases


def _chain(prompt: dict, length: int) -> dict:
    """The embedded prompt whose positive text comes through ``length`` chained text primitives,
    the first of which lacks its value (so the run stops in validation, after the graph walks)."""
    chained = json.loads(json.dumps(prompt))
    for i in range(length):
        chained[f"c{i}"] = {"class_type": "PrimitiveString", "inputs": {"value": [f"c{i - 1}", 0]} if i else {}}
    encode = next(k for k, v in chained.items() if v["class_type"] == "NextDiTTextEncode")
    chained[encode]["inputs"]["prompt"] = [f"c{length - 1}", 0]
    return chained


def train_lora_cases(folder: Path) -> list[tuple[str, list[str]]]:
    """(name, train-lora arguments) that must stop with exit 3 before any model loads."""
    data = folder / "data"
    data.mkdir()
    (data / "a.png").write_bytes(_png_bytes((64, 64)))
    other_columns, latin1 = folder / "other-columns", folder / "latin1-csv"
    for path, text in ((other_columns, b"path,description\na.png,a circle\n"),
                       (latin1, "file_name,text\na.png,tr\u00e8s\n".encode("latin-1"))):
        path.mkdir()
        (path / "a.png").write_bytes(_png_bytes((64, 64)))
        (path / "metadata.csv").write_bytes(text)
    base = ["--dit", "d", "--gemma", "g", "--jina", "j", "--vae", "v", "--output", str(folder / "lora.safetensors")]
    cases = [(f"{option} {value}", [str(data), *base, option, value]) for option, value in (
        ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-1"), ("--caption-dropout", "2"), ("--rank", "0"),
        ("--time-shift", "nan"), ("--grad-clip", "-1"), ("--resolution", "0"))]
    cases += [("metadata.csv with other columns", [str(other_columns), *base]),
              ("metadata.csv not UTF-8", [str(latin1), *base])]
    return cases


def run_runner_audit() -> tuple[int, int, list[str]]:
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="nextdit-audit-") as scratch:
        scratch = Path(scratch)
        cases = runner_cases(scratch)
        bad = []
        for name, path, extra in cases:
            done = subprocess.run([sys.executable, "-m", "nextdit_nodes", "run", str(path), "-q",
                                   "--output-dir", str(scratch / "out"), *extra],
                                  cwd=scratch, env=env, capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 3 or "Traceback" in done.stderr or "error:" not in done.stderr:
                bad.append(f"{name}: exit {done.returncode} {done.stderr.strip()[-200:]!r}")
        lora_cases = train_lora_cases(scratch)
        for name, arguments in lora_cases:
            done = subprocess.run([sys.executable, "-m", "nextdit_nodes", "train-lora", *arguments, "--no-progress"],
                                  cwd=scratch, env=env, capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 3 or "Traceback" in done.stderr or "error:" not in done.stderr:
                bad.append(f"train-lora {name}: exit {done.returncode} {done.stderr.strip()[-200:]!r}")
        tried = len(cases) + len(lora_cases)
        return tried, tried - len(bad), bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("server", "runner", "load"))
    parser.add_argument("--port", type=int, default=8391)
    args = parser.parse_args()
    totals = []
    if args.only in (None, "load"):
        lines = run_load_audit(args.port + 1)
        print("\n".join(lines))
        totals.append(not any("NOT HELD" in line for line in lines))
    for part, audit in (("server", lambda: run_server_audit(args.port)), ("runner", run_runner_audit)):
        if args.only in (None, part):
            tried, clean, bad = audit()
            for line in bad:
                print(f"  {part}: {line}")
            print(f"{part}: {tried} bad inputs, {clean} answered cleanly")
            totals.append(tried == clean)
    return 0 if all(totals) else 1


if __name__ == "__main__":
    sys.exit(main())
