"""The `ilt` commands that show a person what the model sees."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from ilt_core.cli.main import main


def test_segment_prints_the_units_as_json(capsys):
    assert main(["segment", "שלום עולם\nhello  there"]) == 0
    units = json.loads(capsys.readouterr().out)
    assert units == ["שלום ", "עולם\n", "hello  ", "there"]


def test_render_writes_one_png_of_all_units(tmp_path, capsys):
    out = tmp_path / "words.png"
    for renderer in ("freetype", "cairo"):
        assert main(["render", "שלום עולם hello", "-o", str(out), "--renderer", renderer]) == 0
        assert "3 units" in capsys.readouterr().out
        image = np.asarray(Image.open(out))
        assert image.ndim == 2 and image.shape[0] == 36  # 32 px rows plus the 4 px gap
        assert (image < 100).any() and (image == 255).any()


def test_render_unknown_renderer_is_one_line(tmp_path, capsys):
    assert main(["render", "x", "-o", str(tmp_path / "x.png"), "--renderer", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--renderer" in err and "freetype:default" in err


def test_build_prints_the_summary_and_saves(tmp_path, capsys):
    assert main(["build", "tiny", "--save", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert "latent_transformer" in out and "hf:causal-lm" in out and "total" in out
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()


def test_presets_lists_every_preset_with_counts(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny", "small", "medium"):
        assert any(line.startswith(name) for line in out.splitlines())
    assert "18.9m" in out  # the tiny latent (pythia-70m without embeddings)
