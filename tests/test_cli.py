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


def test_broken_arguments_of_every_command_are_one_line_and_exit_2(tmp_path, capsys) -> None:
    """What a user may get wrong, command by command: one line naming what is wrong, status 2, no traceback (a
    usage error too: argparse's own, without its usage block)."""
    from ilt_core.modeling.model import build_model

    model = tmp_path / "model"
    build_model("micro", seed=0).save_pretrained(model)
    text = tmp_path / "ok.txt"
    text.write_text("שלום עולם\n", encoding="utf-8")
    (tmp_path / "args.yaml").write_text("a: [1,\n", encoding="utf-8")
    train = ["train", "--model_spec", "micro", "--output_dir", str(tmp_path / "t"), "--train_file", str(text)]
    cases = {
        "eval batch": (["eval", "--model", str(model), "--file", str(text), "--batch-size", "0"], "batch_size=0"),
        "build into a file": (["build", "micro", "--save", str(text)], str(text)),
        "render into nowhere": (["render", "שלום", "-o", str(tmp_path / "no" / "such" / "x.png")], "No such file"),
        "convert into nowhere": (["convert", str(model), str(text / "x")], str(text)),
        "train arguments file": (["train", str(tmp_path / "args.yaml")], "args.yaml: not valid YAML"),
        "train batch": ([*train, "--max_steps", "1", "--per_device_train_batch_size", "0"], "expected 1 or more"),
        "train sizes": ([*train, "--set", "bytes_decoder.config.num_hidden_layers=0"], "num_hidden_layers"),
        "usage": (["build", "micro", "--seed", "abc"], "ilt build: error: argument --seed: invalid int value"),
        "train usage": ([*train, "--learning_rate", "abc"], "ilt train: error: argument --learning_rate"),
    }
    for name, (argv, needle) in cases.items():
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            rc = exc.code
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and needle in err and "Traceback" not in err, (name, rc, err)
