"""Files the pack writes appear whole or not at all: a writer killed mid-file leaves only a hidden
temporary file, which the next start removes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from nextdit_nodes.files.atomic import atomic_path, clean_leftovers, partial_name, write_bytes

KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    from PIL import Image
    from nextdit_nodes.runtime.core_nodes import save_png

    def dying_save(self, fp, *args, **kwargs):  # half a PNG written, then kill -9
        with open(fp, "wb") as out:
            out.write(b"\\x89PNG\\r\\n\\x1a\\n half of it")
            out.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    Image.Image.save = dying_save
    save_png(torch.zeros(8, 8, 3), Path(sys.argv[1]), None, None)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="kill -9 is POSIX")
def test_a_killed_save_image_leaves_no_file_under_its_final_name(tmp_path):
    final = tmp_path / "ComfyUI_00001_.png"
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(final)], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert not final.exists()
    (leftover,) = list(tmp_path.iterdir())
    assert leftover.name.startswith(".ComfyUI_00001_.png.") and leftover.name.endswith(".partial")
    assert clean_leftovers(tmp_path) == [leftover] and list(tmp_path.iterdir()) == []


def test_a_failed_write_removes_its_temporary_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "settings.json"
    write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as partial:
        partial.write_bytes(b"new, but half")
        raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_leftovers_of_a_running_writer_are_kept(tmp_path):
    mine = partial_name(tmp_path / "a.safetensors")  # this process is alive
    mine.write_bytes(b"in progress")
    assert clean_leftovers(tmp_path) == [] and mine.exists()
