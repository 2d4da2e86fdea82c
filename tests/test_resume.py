"""Resumable training folders: found whether the weights are one file or sharded; others are refused."""

from __future__ import annotations

import pytest
from helpers import micro_spec

from ilt_core.errors import CheckpointError
from ilt_core.modeling.model import build_model
from ilt_core.specs.spec import load_spec
from ilt_core.training.resume import checkpoint_spec, is_complete_checkpoint, last_complete_checkpoint


def _trainer_files(folder) -> None:
    (folder / "trainer_state.json").write_text("{}")
    (folder / "optimizer.pt").write_bytes(b"")


@pytest.mark.parametrize("shard", [None, "200KB"])
def test_checkpoint_folders_are_found_one_file_or_sharded(tmp_path, shard):
    model = build_model(micro_spec("bytes-only"), seed=0)
    folder = tmp_path / "run" / "checkpoint-7"
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    assert (folder / "model.safetensors.index.json").is_file() == bool(shard)
    assert not is_complete_checkpoint(folder)  # no optimizer or trainer state yet: not resumable
    _trainer_files(folder)
    assert is_complete_checkpoint(folder)
    assert last_complete_checkpoint(tmp_path / "run") == folder
    assert load_spec(checkpoint_spec(folder)).latent_transformer == model.spec.latent_transformer


def test_a_folder_without_weights_is_one_clear_error(tmp_path):
    _trainer_files(tmp_path)
    assert not is_complete_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index.json"):
        checkpoint_spec(tmp_path)
