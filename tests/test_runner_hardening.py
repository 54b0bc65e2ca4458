"""The runner against hostile files: every one ends in exit code 3 with a message naming what is
wrong, never a traceback (exit 1), and before anything runs."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from nextdit_nodes.commands import cli
from nextdit_nodes.runtime import runner_classes
from nextdit_nodes.runtime import load_workflow as load
from PIL import Image

EMBEDDED = Path(__file__).resolve().parents[1] / "example_workflows" / "Embedded shapes model.json"


def _prompt() -> dict:
    return load(EMBEDDED, runner_classes()).to_api()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    return buffer.getvalue()


def _huge_png() -> bytes:
    """A PNG header claiming 60000 x 60000 pixels."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def _text_bomb_png() -> bytes:
    """A small PNG whose compressed text chunk inflates to 64 MB (PIL stops at MAX_TEXT_CHUNK)."""
    png = _small_png()
    return png[:33] + _chunk(b"zTXt", b"workflow\x00\x00" + zlib.compress(b" " * (64 * 2**20), 9)) + png[33:]


def _chain(length: int) -> dict:
    """The embedded prompt with its positive text passed through ``length`` text primitives, the
    first without a value: validation walks the whole chain, then refuses."""
    prompt = _prompt()
    for i in range(length):
        prompt[f"c{i}"] = {"class_type": "PrimitiveString", "inputs": {"value": [f"c{i - 1}", 0]} if i else {}}
    prompt["4"]["inputs"]["prompt"] = [f"c{length - 1}", 0]
    return prompt


def _bad_files() -> dict[str, tuple[bytes, str, str]]:
    """name -> (content, suffix, words the message must contain)."""
    prompt = _prompt()
    one_element_link = json.loads(json.dumps(prompt))
    one_element_link["6"]["inputs"]["model"] = ["1"]
    return {
        "nested 100000 deep": (b"[" * 100000 + b"]" * 100000, ".json", "nests"),
        "nested 500 deep in a node": (json.dumps(prompt).replace(
            '"inputs"', '"deep": ' + "[" * 500 + "]" * 500 + ', "inputs"', 1).encode(), ".json", "nests"),
        "chain of 3000 nodes": (json.dumps(_chain(3000)).encode(), ".json", "node c0"),
        "one-element link": (json.dumps(one_element_link).encode(), ".json", "link [node_id, output_index]"),
        "60000x60000 PNG": (_huge_png(), ".png", "cannot read"),
        "text-bomb PNG": (_text_bomb_png(), ".png", "cannot read"),
    }


@pytest.mark.parametrize("name", list(_bad_files()))
def test_hostile_workflow_files_end_in_exit_3_with_a_message(tmp_path, capsys, name):
    content, suffix, words = _bad_files()[name]
    path = tmp_path / f"workflow{suffix}"
    path.write_bytes(content)
    code = cli.main(["run", str(path), "-q", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 3, err[-500:]
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_created_is_named_before_the_run(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(_prompt()))
    code = cli.main(["run", str(path), "-q", "--output-dir", str(blocker / "out")])
    err = capsys.readouterr().err
    assert code == 3 and "--output-dir" in err and "is a file" in err and str(blocker) in err


def test_a_non_finite_set_value_is_refused_naming_the_input(tmp_path, capsys):
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(_prompt()))
    code = cli.main(["run", str(path), "-q", "--set", "6.cfg=nan", "--output-dir", str(tmp_path / "o")])
    assert code == 3 and "input 'cfg'" in capsys.readouterr().err
