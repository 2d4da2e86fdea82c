"""Text files on every CLI input path: bad bytes get one line naming the file and line, or are read as documented."""

from __future__ import annotations

import pytest
import yaml
from helpers import tiny_spec

from ilt_core.cli.main import main
from ilt_core.errors import ILTError
from ilt_core.text.lines import read_text_lines


def test_plain_file_bom_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffשלום עולם\r\n\r\n  \nhello\n".encode())
    read = read_text_lines(path)
    assert read.texts == ["שלום עולם", "hello"] and read.bom and read.blank == 2 and read.replaced == 0
    assert read_text_lines(path, limit=1).texts == ["שלום עולם"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"ok\nbad \xff byte\n", r"line 2, byte 5: not valid UTF-8"),
        (b"ok\nok\nnul\x00here\n", r"line 3, byte 4: a NUL character"),
        ("שלום".encode()[:-1] + b"\n", r"line 1, byte 7: not valid UTF-8"),  # a truncated multi-byte letter
    ],
)
def test_bad_bytes_name_the_file_and_line(tmp_path, content, needle):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ILTError, match=needle) as info:
        read_text_lines(path, "--file")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_replace_reads_bad_bytes_as_replacement_characters_and_counts_them(tmp_path):
    path = tmp_path / "bad.txt"
    # a U+FFFD already in the text is text, not a replacement
    path.write_bytes("a\ufffd\n".encode() + b"x\xff\xfey\nnul\x00\n")
    read = read_text_lines(path, replace=True)
    assert read.texts == ["a\ufffd", "x\ufffd\ufffdy", "nul\ufffd"]
    assert read.replaced == 3 and read.replaced_lines == [2, 3]


def test_eval_on_bad_text_is_one_line_or_replaced_with_a_count(tmp_path, capsys):
    from ilt_core.modeling.model import build_model

    model_dir = tmp_path / "m"
    build_model(yaml.safe_load(yaml.safe_dump(tiny_spec("bytes-only"))), seed=0).save_pretrained(model_dir)
    bad = tmp_path / "bad.txt"
    bad.write_bytes("שלום עולם\n".encode() + b"caf\xe9 au lait\n")
    assert main(["eval", "--model", str(model_dir), "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 2, byte 4" in err and str(bad) in err and "--replace-invalid" in err
    assert main(["eval", "--model", str(model_dir), "--file", str(bad), "--replace-invalid"]) == 0
    captured = capsys.readouterr()
    assert "1 invalid byte(s)" in captured.err and "lines 2" in captured.err
    assert '"num_texts": 2' in captured.out


def test_bench_on_bad_text_is_one_line_before_any_mix_runs(tmp_path, capsys):
    good = tmp_path / "good.txt"
    good.write_text("שלום עולם\n", encoding="utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nnul\x00\n")
    out = tmp_path / "out"
    argv = ["bench", "--train-file", str(bad), "--eval-file", str(good), "--mixes", "tiny", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--train-file" in err and "line 2, byte 4: a NUL" in err
    assert not out.exists()
