"""Learning rates per component: the groups of ``learning_rate_groups`` and of ``ilt train``'s optimizer.

The model is micro bytes-only with three widths (bytes encoder 32, bytes decoder 64, latent 128), so the width rule
gives factors 4 and 2 beside the latent's 1; each ``ilt train`` run is a few steps on a few Hebrew lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers import micro_spec
from transformers import TrainerCallback, get_scheduler

from ilt_core.errors import ILTError
from ilt_core.modeling.model import build_model
from ilt_core.modeling.parameters import decay_parameter_names, learning_rate_groups, width_factors
from ilt_core.training.run import run_training

WORDS = ["הילד", "קורא", "ספר", "חדש", "בבית", "המורה", "כותב", "מכתב", "ארוך", "ליד", "הים", "היום."]
LR = 2e-3


def three_widths() -> dict:
    """micro bytes-only, narrowed so every component has its own width: encoder 32, decoder 64, latent 128."""
    spec = micro_spec("bytes-only")
    spec["bytes_encoder"]["config"].update(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    spec["bytes_decoder"]["config"].update(
        hidden_size=64, num_attention_heads=2, num_key_value_heads=2, intermediate_size=128, num_hidden_layers=1
    )
    spec["latent_transformer"]["config"].update(num_hidden_layers=1)
    return spec


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lr")
    (root / "spec.yaml").write_text(yaml.safe_dump(three_widths(), allow_unicode=True), encoding="utf-8")
    lines = [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(6 + i % 4)) for i in range(24)]
    (root / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"root": root, "spec": root / "spec.yaml", "train": root / "train.txt"}


def train_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--model_spec", str(files["spec"]),
        "--train_file", str(files["train"]),
        "--cache_dir", str(files["root"] / "cache"),
        "--output_dir", str(out),
        "--do_train",
        "--block_size", "16",
        "--per_device_train_batch_size", "4",
        "--learning_rate", str(LR),
        "--lr_scheduler_type", "cosine",
        "--warmup_steps", "2",
        "--max_steps", "4",
        "--weight_decay", "0.1",
        "--save_strategy", "no",
        "--logging_steps", "1",
        "--report_to", "none",
        "--dataloader_pin_memory", "false",
        "--disable_tqdm", "true",
        "--seed", "0",
        *extra,
    ]  # fmt: skip


class RecordGroups(TrainerCallback):
    """The optimizer's groups (name, factor, lr, weight decay) after each step, and before the first."""

    def __init__(self) -> None:
        self.after: dict[int, list[dict]] = {}
        self.first_step: int | None = None
        self.before_first: list[dict] = []
        self.state_before_first: dict = {}

    @staticmethod
    def _groups(optimizer) -> list[dict]:
        return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs) -> None:
        if self.first_step is None:
            self.first_step = state.global_step
            self.before_first = self._groups(optimizer)
            self.state_before_first = {k: v["exp_avg"].clone() for k, v in optimizer.state_dict()["state"].items()}

    def on_step_end(self, args, state, control, optimizer=None, **kwargs) -> None:
        self.after[state.global_step] = self._groups(optimizer)


def scheduled(step: int, kind: str = "cosine", warmup: int = 2, total: int = 4) -> float:
    """transformers' schedule at ``step`` for one parameter at LR: what every factor multiplies."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = get_scheduler(kind, optimizer=opt, num_warmup_steps=warmup, num_training_steps=total)
    for _ in range(step):
        opt.step()
        sched.step()
    return sched.get_last_lr()[0]


# ---- the groups themselves --------------------------------------------------------------------------------------


def test_every_trainable_parameter_is_in_exactly_one_group_at_its_components_factor() -> None:
    model = build_model(three_widths(), seed=0)
    assert width_factors(model) == {"bytes_encoder": 4.0, "bytes_decoder": 2.0}
    frozen = next(iter(model.latent_transformer.parameters()))
    frozen.requires_grad_(False)
    groups = learning_rate_groups(model, LR, "width", weight_decay=0.1)
    placed = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(placed) == sorted(trainable) and len(placed) == len(set(placed))  # each once; the frozen one not
    assert id(frozen) not in placed
    part_of = {id(p): part for part in ("bytes_encoder", "bytes_decoder") for p in getattr(model, part).parameters()}
    decayed = decay_parameter_names(model)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        assert g["lr"] == pytest.approx(LR * g["factor"])
        assert g["factor"] == {"rest": 1.0, "bytes_encoder": 4.0, "bytes_decoder": 2.0}[g["name"]]
        for p in g["params"]:
            assert part_of.get(id(p), "rest") == g["name"]
            assert g["weight_decay"] == (0.1 if names[id(p)] in decayed else 0.0)
    assert groups[0]["name"] == "rest" and groups[0]["weight_decay"] == 0.1  # Trainer logs the first group's rate
    # norms and biases are not decayed, matrices are
    assert "latent_transformer.model.layers.0.mlp.dense_h_to_4h.weight" in {names[id(p)] for p in groups[0]["params"]}
    assert not any("norm" in n or n.endswith("bias") for n in decayed)

    single = learning_rate_groups(model, LR, "none", weight_decay=0.1)
    assert {g["factor"] for g in single} == {1.0} and {g["lr"] for g in single} == {LR} and len(single) == 2
    assert sorted(id(p) for g in single for p in g["params"]) == sorted(trainable)
    with pytest.raises(ValueError, match="expected one of width, none"):
        learning_rate_groups(model, LR, "depth")


def test_decay_rule_is_trainers_on_every_backbone_kind() -> None:
    from transformers import Trainer, TrainingArguments

    model = build_model(micro_spec("full"), seed=0)  # BERT (LayerNorm), ViT, GPT-NeoX / Llama (RMSNorm)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir="/nonexistent", report_to="none"))
    assert decay_parameter_names(model) == set(trainer.get_decay_parameter_names(model))
    assert len(decay_parameter_names(model)) < len(list(model.parameters()))


# ---- ilt train --------------------------------------------------------------------------------------------------


def test_ilt_train_groups_are_the_factors_times_the_scheduled_rate_at_every_step(files, tmp_path) -> None:
    rec = RecordGroups()
    result = run_training(train_args(files, tmp_path / "w"), callbacks=[rec])
    trainer = result.trainer
    expected = learning_rate_groups(
        trainer.model, LR, "width", 0.1, decay_names=trainer.get_decay_parameter_names(trainer.model)
    )
    live = trainer.optimizer.param_groups
    assert [(g["name"], g["weight_decay"]) for g in live] == [(g["name"], g["weight_decay"]) for g in expected]
    assert [[id(p) for p in g["params"]] for g in live] == [[id(p) for p in g["params"]] for g in expected]
    factors = {"rest": 1.0, "bytes_encoder": 4.0, "bytes_decoder": 2.0}
    assert sorted(rec.after) == [1, 2, 3, 4]
    for step, groups in rec.after.items():
        for g in groups:
            assert g["lr"] == pytest.approx(factors[g["name"]] * scheduled(step), rel=1e-6, abs=1e-12), (step, g)
    assert scheduled(2) == pytest.approx(LR)  # the peak, after warm-up: the factors are not a rounding matter
    logged = {h["step"]: h["learning_rate"] for h in result.log_history if "learning_rate" in h}
    # Trainer logs the first group's rate (the peak-rate group's), the one step k trained at: the schedule's k - 1
    assert logged == pytest.approx({step: scheduled(step - 1) for step in (1, 2, 3, 4)})

    # one rate: Trainer's own two groups, every rate the schedule's
    rec_none = RecordGroups()
    run_training(train_args(files, tmp_path / "n", "--lr_scaling", "none"), callbacks=[rec_none])
    for step, groups in rec_none.after.items():
        assert len(groups) == 2 and all(g["lr"] == pytest.approx(scheduled(step)) for g in groups)


def test_resume_restores_the_groups_and_their_state(files, tmp_path) -> None:
    out = tmp_path / "run"
    first = RecordGroups()
    run_training(train_args(files, out, "--save_strategy", "steps", "--save_steps", "2"), callbacks=[first])
    ckpt = out / "checkpoint-2"
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)

    resumed = RecordGroups()
    run_training(train_args(files, out, "--resume_from_checkpoint", str(ckpt)), callbacks=[resumed])
    assert resumed.first_step == 2
    # the groups as they were after step 2: names, factors, rates, decay; and Adam's moments
    keys = ("name", "factor", "lr", "weight_decay")
    assert [{k: g[k] for k in keys} for g in resumed.before_first] == [{k: g[k] for k in keys} for g in first.after[2]]
    assert [g["name"] for g in saved["param_groups"]] == [g["name"] for g in resumed.before_first]
    assert saved["state"].keys() == resumed.state_before_first.keys()
    for k, v in saved["state"].items():
        assert torch.equal(v["exp_avg"], resumed.state_before_first[k])
    for step in (3, 4):  # and the schedule goes on from there, at each group's factor
        assert resumed.after[step] == first.after[step]

    with pytest.raises(ILTError, match="--lr_scaling \\(now none\\)"):
        run_training(
            train_args(files, tmp_path / "other", "--resume_from_checkpoint", str(ckpt), "--lr_scaling", "none")
        )


def test_fused_adamw_takes_the_groups_and_own_group_optimizers_are_refused(files, tmp_path) -> None:
    rec = RecordGroups()
    result = run_training(train_args(files, tmp_path / "f", "--optim", "adamw_torch_fused", "--max_steps", "1"), [rec])
    optimizer = result.trainer.optimizer
    assert optimizer.defaults.get("fused") is True
    factors = {g["name"]: g["factor"] for g in optimizer.param_groups}
    assert factors == {"rest": 1, "bytes_encoder": 4, "bytes_decoder": 2}

    from transformers import TrainingArguments

    from ilt_core.training.trainer import ILTTrainer  # imports Trainer: only here

    model = build_model(three_widths(), seed=0)
    args = TrainingArguments(output_dir=str(tmp_path / "x"), report_to="none")
    # a factory (Muon-like) and a handler that hands its own groups (GaLore, Apollo, LOMO): refused, with the way out
    for cls_and_kwargs in ((lambda: None, {}), (torch.optim.AdamW, {"params": [], "lr": LR})):
        trainer = ILTTrainer(model=model, args=args, optimizer_cls_and_kwargs=cls_and_kwargs)
        with pytest.raises(ILTError, match="pass --lr_scaling none"):
            trainer.create_optimizer()
    # a wrapper whose parameters are not the components' own (FSDP's flat parameters): refused, not one rate silently
    trainer = ILTTrainer(model=model, args=args)
    flat = torch.nn.Module()
    flat.flat_param = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    trainer.accelerator.unwrap_model = lambda wrapped, **kw: model if wrapped is flat else wrapped
    with pytest.raises(ILTError, match="use_orig_params: true"):
        trainer.create_optimizer(flat)
    plain = ILTTrainer(model=model, args=args, lr_scaling="none")
    assert len(plain.create_optimizer().param_groups) == 2
    with pytest.raises(ILTError, match="--lr_scaling depth"):
        ILTTrainer(model=model, args=args, lr_scaling="depth")


def test_lr_scaling_is_in_ilt_train_help_and_a_bad_value_is_a_usage_error(capsys) -> None:
    from ilt_core.training.arguments import _argument_parser, parse_train_args

    text = " ".join(_argument_parser().format_help().split())
    assert "--lr_scaling {width,none}" in text and "x the latent transformer's width / the component's own" in text
    assert "use none with them" in text  # which --optim values are refused
    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(["--model_spec", "micro", "--output_dir", "/nonexistent", "--lr_scaling", "depth"])
    assert exit_info.value.code == 2 and "invalid choice: 'depth'" in capsys.readouterr().err
