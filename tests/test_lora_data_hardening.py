"""train-lora's inputs that are not what they should be: captions that are not UTF-8, metadata
files with other columns, XML captions that are not well formed, numeric options that are not
finite. Each is skipped and listed, warned about, or refused with exit code 3 before any model
loads, never a traceback."""

from __future__ import annotations

import pytest
from nextdit_nodes.commands import cli
from nextdit_nodes.training.lora_data import DatasetError, scan_dataset
from PIL import Image


def _image(path):
    Image.new("RGB", (32, 32), (10, 20, 30)).save(path)


def test_a_caption_that_is_not_utf8_is_skipped_and_listed(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    (tmp_path / "a.txt").write_text("a red circle")
    (tmp_path / "b.txt").write_bytes("un cercle rouge, très grand".encode("latin-1"))
    scan = scan_dataset(tmp_path)
    assert [item.image.name for item in scan.items] == ["a.png"]
    (skipped,) = scan.skipped
    assert skipped.path.name == "b.png" and "b.txt is not UTF-8" in skipped.reason


def test_metadata_csv_with_other_columns_is_refused_naming_them(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_text("path,description\na.png,a circle\n")
    with pytest.raises(DatasetError, match=r"needs a column file_name .* columns are 'path', 'description'"):
        scan_dataset(tmp_path)


def test_metadata_csv_rows_bad_or_not_utf8_are_reported(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    (tmp_path / "metadata.csv").write_text("image,caption\na.png,a circle\nb.png,a square,extra\nmissing.png,x\n")
    scan = scan_dataset(tmp_path)
    assert [item.image.name for item in scan.items] == ["a.png"]
    reasons = sorted(skipped.reason for skipped in scan.skipped)
    assert "row 3 has more fields than the header" in reasons[1] and "does not exist" in reasons[0]
    (tmp_path / "metadata.csv").write_bytes("file_name,text\na.png,très\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        scan_dataset(tmp_path)


def test_a_metadata_jsonl_line_that_is_not_utf8_is_skipped(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_bytes(b'{"image": "a.png", "text": "ok"}\n{"image": "b.png", "text": "\xe9"}\n')
    scan = scan_dataset(tmp_path)
    assert len(scan.items) == 1 and "line 2 is not UTF-8" in scan.skipped[0].reason


def test_an_xml_caption_that_is_not_well_formed_is_warned_with_file_and_position(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    (tmp_path / "a.xml").write_text("<character_1>\n<n>circle</n>\n</character_1>")
    (tmp_path / "b.xml").write_text("<character_1>\n<n>circle</m>\n</character_1>")
    scan = scan_dataset(tmp_path)
    assert len(scan.items) == 2  # it still trains, as written
    (warning,) = scan.warnings
    # "<n>circle</m>": the wrong end tag's name "m" is at line 2, column 12 (1-based).
    assert warning.startswith(str(tmp_path / "b.xml")) and "mismatched tag at line 2, column 12" in warning


@pytest.mark.parametrize("option,value", [("--lr", "nan"), ("--lr", "inf"), ("--lr", "-1"),
                                          ("--caption-dropout", "1.5"), ("--time-shift", "0"),
                                          ("--grad-clip", "nan"), ("--aspect-range", "nan")])
def test_numeric_options_that_are_not_finite_or_out_of_range_exit_3_naming_them(tmp_path, capsys, option, value):
    (tmp_path / "data").mkdir()
    values = [value, "2"] if option == "--aspect-range" else [value]
    code = cli.main(["train-lora", str(tmp_path / "data"), "--dit", "d", "--gemma", "g", "--jina", "j",
                     "--vae", "v", "--output", str(tmp_path / "out.safetensors"), option, *values])
    err = capsys.readouterr().err
    assert code == 3 and option in err and "Traceback" not in err


@pytest.mark.parametrize("problem", ["missing prompt file", "prompt file without prompts", "--prior-images -1",
                                     "--prior-weight nan", "--prior-weight -1", "--prior-batch 0",
                                     "missing --prior-data folder"])
def test_bad_prior_options_exit_3_before_anything_loads(tmp_path, capsys, problem):
    (tmp_path / "data").mkdir()
    prompts = tmp_path / "prior.txt"
    prompts.write_text("# only a comment\n" if problem == "prompt file without prompts" else "a red circle\n")
    options = {"missing prompt file": ["--prior-prompts", str(tmp_path / "absent.txt")],
               "prompt file without prompts": ["--prior-prompts", str(prompts)],
               "missing --prior-data folder": ["--prior-data", str(tmp_path / "absent")]}.get(problem)
    if options is None:
        option, value = problem.split()
        options = ["--prior-prompts", str(prompts), option, value]
    # The model names do not exist: a check that came after loading would fail differently.
    code = cli.main(["train-lora", str(tmp_path / "data"), "--dit", "d", "--gemma", "g", "--jina", "j",
                     "--vae", "v", "--output", str(tmp_path / "out.safetensors"), *options])
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err
    assert ("prior" in err) and ("absent" in err or "no prompts" in err or problem.split()[0] in err)
