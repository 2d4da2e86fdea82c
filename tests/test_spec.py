"""Malformed specs: each gives one clear error line naming the field, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import tiny_spec

from ilt_core.cli.main import main
from ilt_core.errors import SpecError
from ilt_core.specs.spec import load_spec, parse_spec


def _with(**changes):
    spec = tiny_spec("full")
    for key, value in changes.items():
        path = key.split("__")
        node = spec
        for part in path[:-1]:
            node = node[part]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return yaml.safe_dump(spec, allow_unicode=True)


_DELETE = object()

# (name, YAML text, what the one error line must contain)
MALFORMED = [
    (
        "unknown component",
        _with(latent_transformer__component="hf:no-such-model"),
        ["latent_transformer.component", "hf:causal-lm"],
    ),
    ("unknown plugin", _with(bytes_decoder__component="nope:lm"), ["bytes_decoder.component", "no plugin 'nope'"]),
    ("not plugin:name", _with(bytes_decoder__component="causal-lm"), ["bytes_decoder.component", "pattern"]),
    ("missing role", _with(latent_transformer=_DELETE), ["latent_transformer", "required field is missing"]),
    ("wrong type", _with(max_unit_bytes="many"), ["max_unit_bytes", "integer", "'many'"]),
    ("negative size", _with(max_unit_bytes=-4), ["max_unit_bytes", "greater than or equal to 4", "-4"]),
    ("dropout out of range", _with(modality_dropout=1.5), ["modality_dropout", "less than 1"]),
    ("bad label mode", _with(labels="words"), ["labels", "'unit' or 'bytes'"]),
    ("both encoders off", _with(image_encoder=False, bytes_encoder=False), ["both false"]),
    ("image without renderer", _with(renderer=_DELETE), ["renderer is missing"]),
    ("typo in a field", _with(latent_transfomer={"component": "hf:causal-lm"}), ["latent_transfomer", "unknown field"]),
    ("role as a string", _with(bytes_decoder="hf:causal-lm"), ["bytes_decoder", "expected a block"]),
    ("role set to true", _with(image_encoder=True), ["image_encoder", "got true"]),
    (
        "component in the wrong role",
        _with(image_encoder__component="hf:causal-lm"),
        ["image_encoder.component", "cannot be a image_encoder"],
    ),
    ("not a mapping", "- a\n- list\n", ["expected a mapping"]),
    ("empty file", "", ["expected a mapping"]),
    ("YAML syntax error", "renderer: {component: freetype:default\nlatent: [\n", ["YAML syntax error", "line"]),
    (
        "mismatched dimensions",
        _with(latent_transformer__config__hidden_size=100, latent_transformer__config__num_attention_heads=3),
        ["latent_transformer"],
    ),
    ("unknown component argument", _with(bytes_decoder__no_such_argument=1), ["bytes_decoder", "no_such_argument"]),
    ("wrong height", _with(image_height=0), ["image_height", "greater than or equal to 8"]),
]


@pytest.mark.parametrize("name,text,needles", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_spec_gives_one_clear_line(tmp_path, capsys, name, text, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    rc = main(["build", str(path)])
    captured = capsys.readouterr()
    assert rc == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("ilt: error: ")
    assert "Traceback" not in captured.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    if name not in (
        "mismatched dimensions",
        "unknown component argument",
        "unknown component",
        "unknown plugin",
        "component in the wrong role",
    ):
        assert str(path) in lines[0]


def test_missing_file_and_preset_names():
    with pytest.raises(SpecError, match="presets: medium, micro, small, tiny"):
        load_spec("no-such-preset")


def test_every_preset_validates():
    for name in ("tiny", "small", "medium"):
        spec = load_spec(name)
        assert spec.name == name
        assert spec.block("latent_transformer") is not None


def test_component_args_pass_through():
    spec = parse_spec(tiny_spec("full"))
    block = spec.block("latent_transformer")
    assert block.component == "hf:causal-lm"
    assert "config" in block.args and "component" not in block.args


@pytest.mark.slow
def test_cli_never_prints_a_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(_with(max_unit_bytes=-1), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "ilt_core.cli", "build", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_spec_variant_switches_one_modality_off_and_overrides_fields():
    from ilt_core.specs.spec import VARIANTS, spec_variant

    assert tuple(VARIANTS) == ("full", "image-only", "bytes-only")
    full = spec_variant("tiny")
    assert full["image_encoder"] and full["bytes_encoder"]
    image_only = spec_variant("tiny", "image-only", max_unit_bytes=8)
    assert image_only["bytes_encoder"] is False and image_only["image_encoder"] == full["image_encoder"]
    assert image_only["max_unit_bytes"] == 8 and full["max_unit_bytes"] != 8
    assert spec_variant("tiny", "bytes-only")["image_encoder"] is False
    parse_spec(image_only)  # still a valid spec
    with pytest.raises(SpecError, match="variant 'text-only': expected one of full, image-only, bytes-only"):
        spec_variant("tiny", "text-only")


def test_a_spec_file_can_start_from_a_preset_or_another_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("base: tiny\nlatent_transformer:\n  config: {num_hidden_layers: 1}\nmax_unit_bytes: 24\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nname: child\nimage_encoder: false\n")
    spec = load_spec(child)
    tiny = load_spec("tiny")
    assert spec.name == "child" and spec.image_encoder is False and spec.max_unit_bytes == 24
    # merged key by key: the preset's other latent config fields survive the one override
    assert spec.latent_transformer.args["config"]["num_hidden_layers"] == 1
    assert (
        spec.latent_transformer.args["config"]["hidden_size"] == tiny.latent_transformer.args["config"]["hidden_size"]
    )
    # a block that names a component replaces the base's block (its arguments belong to that component)
    other = tmp_path / "other.yaml"
    other.write_text("base: tiny\nbytes_decoder: {component: hf:causal-lm, config: {model_type: gpt2, n_layer: 1}}\n")
    assert load_spec(other).bytes_decoder.args == {"config": {"model_type": "gpt2", "n_layer": 1}}


def test_base_errors_are_one_line(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(SpecError, match="includes itself"):
        load_spec(loop)
    missing = tmp_path / "missing.yaml"
    missing.write_text("base: nowhere.yaml\n")
    with pytest.raises(SpecError, match=r"missing.yaml: base: 'nowhere.yaml' is neither a preset"):
        load_spec(missing)


def test_set_overrides_fields_and_is_validated_like_the_file():
    spec = load_spec(
        "tiny", ["latent_transformer.config.num_hidden_layers=4", "image_encoder=false", "max_unit_bytes=16"]
    )
    assert spec.latent_transformer.args["config"]["num_hidden_layers"] == 4
    assert spec.image_encoder is False and spec.max_unit_bytes == 16
    with pytest.raises(SpecError, match=r"--set max_unit_bytes=2.*max_unit_bytes"):
        load_spec("tiny", ["max_unit_bytes=2"])
    with pytest.raises(SpecError, match="expected dotted.path=VALUE"):
        load_spec("tiny", ["latent_transformer.config"])
    with pytest.raises(SpecError, match="image_encoder is False, not a block"):
        load_spec("tiny", ["image_encoder=false", "image_encoder.component=timm:model"])


def test_build_command_takes_set(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_spec("bytes-only")))
    assert main(["build", str(path), "--set", "latent_transformer.config.num_hidden_layers=1"]) == 0
    one = capsys.readouterr().out
    assert main(["build", str(path), "--set", "latent_transformer.config.num_hidden_layers=3"]) == 0
    three = capsys.readouterr().out
    latent = [line for line in (one, three) for line in line.splitlines() if "params latent_transformer" in line]
    assert len(latent) == 2 and latent[0] != latent[1]
    assert main(["build", str(path), "--set", "max_unit_bytes=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_unit_bytes" in err


@pytest.mark.parametrize(
    "override,field",
    [
        ("latent_transformer.config.num_hidden_layers=-3", "latent_transformer.config.num_hidden_layers"),
        ("bytes_decoder.config.hidden_size=0", "bytes_decoder.config.hidden_size"),
        ("bytes_encoder.config.num_attention_heads=0", "bytes_encoder.config.num_attention_heads"),
        ("image_encoder.config.intermediate_size=-1", "image_encoder.config.intermediate_size"),
        ("latent_transformer.config.num_hidden_layers=2.5", "latent_transformer.config.num_hidden_layers"),
        ("latent_transformer.config.num_hidden_layers=true", "latent_transformer.config.num_hidden_layers"),
        ("image_encoder={component: clip:visual, vision_cfg: {layers: 0}}", "image_encoder.vision_cfg.layers"),
        ("image_encoder={component: hf:vision, config: {depths: [1, 0]}}", "image_encoder.config.depths"),
    ],
)
def test_a_size_layer_or_head_count_below_one_is_refused_naming_the_field(override, field, capsys):
    with pytest.raises(SpecError, match=rf"^micro with --set .*: {field}: expected a (list of )?positive integer"):
        load_spec("micro", [override])
    assert main(["build", "micro", "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err and "Traceback" not in err


def test_a_size_left_to_the_backbone_is_no_error():
    spec = load_spec("micro", ["latent_transformer.config.head_dim=null"])
    assert spec.latent_transformer.args["config"]["head_dim"] is None


MIXES = Path(__file__).resolve().parents[1] / "benchmarks" / "mixes"


def test_a_benchmark_mix_is_a_spec_its_bench_block_set_aside():
    from ilt_bench.mixes import load_mix

    mix = load_spec(MIXES / "tiny-clip.yaml")
    assert mix.name == "tiny-clip" and mix.image_encoder.component == "clip:visual"
    assert "bench" not in mix.to_dict()
    # the spec ilt bench trains for that mix
    assert parse_spec(load_mix(MIXES / "tiny-clip.yaml").spec) == mix
    with pytest.raises(SpecError, match=r"nano-baseline-bytes.yaml: baseline: 'bytes' makes this a benchmark baseline"):
        load_spec(MIXES / "nano-baseline-bytes.yaml")
