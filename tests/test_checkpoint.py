"""Checkpoints: exact round trip, no pickle, clear errors for bad files, atomic saves."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import tiny_spec

from ilt_core.cli.main import main
from ilt_core.errors import CheckpointError
from ilt_core.modeling.checkpoint import CARD_NAME, CONFIG_NAME, GENERATION_CONFIG_NAME, PROCESSOR_NAME, WEIGHTS_NAME
from ilt_core.modeling.model import ILTModel, build_model

TEXTS = ["שלום עולם", "hello there, world"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_models):
    model = tiny_models["full"]
    directory = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(directory)
    return model, directory


def _outputs(model):
    batch = model.processor(TEXTS)
    with torch.no_grad():
        return model(**batch.model_inputs())


def test_round_trip_is_bit_exact(saved):
    model, directory = saved
    loaded = ILTModel.from_pretrained(directory)
    # the loaded model's spec is the saved one resolved (every backbone inline); the spec as given is kept too
    assert loaded.spec.to_dict() == model.config.spec and loaded.config.source_spec == model.spec.to_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    a, b = _outputs(model), _outputs(loaded)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)


def test_no_pickle_in_the_folder(saved):
    _, directory = saved
    names = sorted(p.name for p in Path(directory).iterdir())
    assert names == sorted([CONFIG_NAME, WEIGHTS_NAME, GENERATION_CONFIG_NAME, PROCESSOR_NAME, CARD_NAME])
    raw = (Path(directory) / WEIGHTS_NAME).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    json.loads(raw[8 : 8 + header_len])  # a safetensors header is plain JSON
    assert not zipfile.is_zipfile(Path(directory) / WEIGHTS_NAME)  # torch.save archives are zip+pickle


def _copy(directory, tmp_path):
    target = tmp_path / "copy"
    target.mkdir()
    for p in Path(directory).iterdir():
        (target / p.name).write_bytes(p.read_bytes())
    return target


def test_truncated_file_is_a_clear_error(saved, tmp_path):
    target = _copy(saved[1], tmp_path)
    weights = target / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        ILTModel.from_pretrained(target)


def test_flipped_byte_is_caught_by_the_checksum(saved, tmp_path):
    target = _copy(saved[1], tmp_path)
    weights = target / WEIGHTS_NAME
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256"):
        ILTModel.from_pretrained(target)


def test_garbage_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        ILTModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json in it"):
        ILTModel.from_pretrained(tmp_path / "empty")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / WEIGHTS_NAME).write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        ILTModel.from_pretrained(tmp_path / "garbage")


def test_weights_from_another_spec_are_refused(saved, tmp_path):
    target = _copy(saved[1], tmp_path)
    other = build_model(tiny_spec("bytes-only"), seed=0)
    other_dir = tmp_path / "other"
    other.save_pretrained(other_dir)
    # the bytes-only model's weights (a valid file, checksum and all) beside the full model's config.json
    (target / WEIGHTS_NAME).write_bytes((other_dir / WEIGHTS_NAME).read_bytes())
    with pytest.raises(CheckpointError, match="do not fit the model"):
        ILTModel.from_pretrained(target)


def test_interrupted_save_keeps_the_previous_checkpoint(saved, tmp_path, monkeypatch):
    model, directory = saved
    target = _copy(directory, tmp_path)
    import safetensors.torch

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(target)
    monkeypatch.undo()
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == []
    loaded = ILTModel.from_pretrained(target)
    assert torch.equal(_outputs(loaded).logits, _outputs(model).logits)


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    (tmp_path / "text.txt").write_text("שלום עולם\n", encoding="utf-8")
    rc = main(["eval", "--model", str(tmp_path / "missing"), "--file", str(tmp_path / "text.txt")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no such checkpoint folder" in err
