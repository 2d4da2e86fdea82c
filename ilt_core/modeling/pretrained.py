"""Saving, loading and uploading an ILT model: the ``save_pretrained`` / ``from_pretrained`` half of ``ILTModel``.

:class:`PretrainedIO` is a mixin of :class:`~ilt_core.modeling.model.ILTModel`: it writes a model as a
self-contained folder, loads one back bit-for-bit (from a folder or a hub repository id; folders of the
previous format too), and uploads one to the hub. The files themselves are :mod:`ilt_core.modeling.checkpoint`'s
job; the model and its forward pass are :mod:`ilt_core.modeling.model`'s.
"""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, TypeVar

import torch
import transformers
import yaml
from torch import nn

from ilt_core.errors import CheckpointError, ILTError
from ilt_core.modeling import checkpoint as ckpt
from ilt_core.modeling.card import model_card
from ilt_core.modeling.config import ILTConfig, renderer_key_differences, renderer_key_json
from ilt_core.modeling.random_state import keeps_random_state
from ilt_core.specs.spec import load_spec

# word-level defaults of ILTModel.generate (generation_config.json); keyword options of ilt_core.generation.generate
GENERATION_DEFAULTS: dict[str, Any] = {
    "max_new_units": 32,
    "num_beams": 1,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": None,
    "top_p": None,
    "length_penalty": 1.0,
    "unit_candidates": 8,
}
# from_pretrained keywords that AutoModel or the hub pass along and that change nothing here
_IGNORED_LOAD_KWARGS = {"trust_remote_code", "force_download", "proxies", "code_revision", "adapter_kwargs"}

_Model = TypeVar("_Model", bound="PretrainedIO")


class PretrainedIO:
    """Saving, loading and hub upload of :class:`~ilt_core.modeling.model.ILTModel` (a mixin it inherits).

    Reads the model's ``config``, ``spec``, ``renderer``, ``processor``, ``bytes_decoder``, ``disabled`` and
    ``generation_defaults``; ``from_pretrained`` builds the class it is called on.
    """

    # ---- saving -------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        max_shard_size: int | str = ckpt.DEFAULT_MAX_SHARD_SIZE,
        state_dict: dict[str, torch.Tensor] | None = None,
        is_main_process: bool = True,
        push_to_hub: bool = False,
        training: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Path:
        """Write the model as a self-contained folder (see :mod:`ilt_core.modeling.checkpoint`); returns the
        first weights file.

        ``config.json`` (the resolved spec), safetensors weights sharded above ``max_shard_size``,
        ``generation_config.json``, ``processor_config.json`` and a model card ``README.md``. ``state_dict``:
        weights to write instead of the module's own (Trainer under FSDP gathers them). ``training``: what the
        model was trained on and its bits-per-byte, for the card (kept in ``config.json``). ``push_to_hub``:
        then upload the folder to ``repo_id`` (keyword) or the folder's name.
        """
        directory = Path(save_directory)
        if not is_main_process:
            return directory / ckpt.WEIGHTS_NAME
        for key in ("safe_serialization", "variant", "save_peft_format", "save_original_format"):
            kwargs.pop(key, None)  # transformers' options that have one answer here: safetensors, no variants
        repo_id = kwargs.pop("repo_id", None)
        token = kwargs.pop("token", None)
        if kwargs:
            raise ILTError(f"save_pretrained: unknown argument(s) {', '.join(sorted(kwargs))}")
        directory.mkdir(parents=True, exist_ok=True)
        config = self.config
        config.disabled = sorted(self.disabled)
        config.renderer_key = renderer_key_json(self.renderer)
        if training:
            config.training = {**config.training, **training}
        spec_yaml = yaml.safe_dump(self.spec.to_dict(), sort_keys=False, allow_unicode=True)
        files = ckpt.save_weights(
            state_dict if state_dict is not None else self.state_dict(),
            directory,
            max_shard_size=max_shard_size,
            metadata={"spec": spec_yaml},  # the spec as built, read by training's resume checks
        )
        ckpt.write_json(directory / ckpt.CONFIG_NAME, config.to_dict())
        ckpt.write_json(directory / ckpt.GENERATION_CONFIG_NAME, self._generation_file())
        ckpt.write_json(directory / ckpt.PROCESSOR_NAME, self._processor_settings())
        ckpt.write_text(directory / ckpt.CARD_NAME, model_card(config, self.parameter_counts()))
        if (directory / ckpt.SPEC_NAME).is_file():  # a format-1 file left by an earlier save in this folder
            (directory / ckpt.SPEC_NAME).unlink()
        if push_to_hub:
            self._upload(directory, repo_id or directory.name, token=token)
        return files[0]

    def _generation_file(self) -> dict[str, Any]:
        byte_config = _generation_config_of(self.bytes_decoder)
        return {
            **self.generation_defaults,
            "bytes_decoder": byte_config.to_diff_dict() if byte_config is not None else {},
            "transformers_version": transformers.__version__,
        }

    def _processor_settings(self) -> dict[str, Any]:
        p, spec = self.processor, self.spec
        return {
            "processor_class": type(p).__name__,
            "max_unit_bytes": p.max_unit_bytes,
            "labels": p.labels,
            "label_bytes": p.label_bytes,
            "max_units": p.max_units,
            "image_height": spec.image_height,
            "max_image_width": spec.max_image_width,
            "renderer": spec.renderer.model_dump(mode="json") if spec.renderer else None,
            "renderer_key": self.config.renderer_key,
        }

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload ILT model",
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str = ckpt.DEFAULT_MAX_SHARD_SIZE,
        **kwargs: Any,
    ) -> Any:
        """Save to a temporary folder and upload it to the hub repository ``repo_id`` (created if needed);
        ``from_pretrained(repo_id)`` loads it. Our model card is kept (transformers' would replace it)."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, max_shard_size=max_shard_size)
            return self._upload(
                Path(tmp), repo_id, token, commit_message, private=private, revision=revision, create_pr=create_pr
            )

    @staticmethod
    def _upload(
        folder: Path,
        repo_id: str,
        token: str | None = None,
        commit_message: str = "Upload ILT model",
        **kwargs: Any,
    ) -> Any:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        private = kwargs.pop("private", None)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, **kwargs)

    # ---- loading ------------------------------------------------------------------------
    @classmethod
    @keeps_random_state  # building the components draws numbers that the loaded weights then replace
    def from_pretrained(
        cls: type[_Model],
        pretrained_model_name_or_path: str | Path,
        *model_args: Any,
        config: ILTConfig | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        subfolder: str = "",
        map_location: str | torch.device = "cpu",
        device_map: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> _Model:
        """Load a folder written by :meth:`save_pretrained`, or a hub repository id, bit-for-bit.

        ``revision``, ``cache_dir``, ``local_files_only`` and ``token`` reach ``huggingface_hub`` for a repository
        id. The components are built from ``config.json`` with empty weights (never from the backbones' own
        sources), then the memory-mapped tensors become the parameters (``load_state_dict(assign=True)``) and
        tied weights are tied again. ``map_location`` / ``device_map`` (one device) and ``dtype`` place the result.
        A folder of the previous format (``spec.yaml``) loads too; see ``ilt convert``.

        Raises:
            CheckpointError: a missing folder, file or shard, another model's ``config.json``, a file whose
                SHA-256 does not match, or weights that do not fit the spec (one line, naming the file).
        """
        if model_args:
            raise ILTError(f"from_pretrained: unexpected positional arguments {model_args!r}")
        for key in list(kwargs):
            if key.startswith("_") or key in _IGNORED_LOAD_KWARGS:
                kwargs.pop(key)
        torch_dtype = kwargs.pop("torch_dtype", None)
        if kwargs:
            raise ILTError(f"from_pretrained: unknown argument(s) {', '.join(sorted(kwargs))}")
        folder = _local_folder(str(pretrained_model_name_or_path), revision, cache_dir, local_files_only, token)
        if subfolder:
            folder = folder / subfolder
        if ckpt.checkpoint_kind(folder) == "old":
            model = cls._from_old_folder(folder)
        else:
            data = ckpt.read_config_dict(folder)
            if config is None:
                config = ILTConfig.from_dict(data)
            tensors, _ = ckpt.read_weights(folder)
            model = cls._build_empty(config, folder / ckpt.CONFIG_NAME)
            ckpt.load_state(model, tensors, str(folder), assign=True)
            model._check_renderer(folder)
            model._read_generation_file(folder)
        _no_meta_left(model, folder)
        device = device_map if device_map is not None else map_location
        if isinstance(device, dict):
            raise ILTError("from_pretrained: device_map must be one device (e.g. 'cuda:0'), not a mapping")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = model.to(device)
        wanted = dtype if dtype is not None else torch_dtype
        if wanted not in (None, "auto"):
            found = getattr(torch, wanted, None) if isinstance(wanted, str) else wanted
            if not isinstance(found, torch.dtype):
                raise ILTError(f"from_pretrained: dtype {wanted!r} is not a torch dtype (float32, bfloat16, float16)")
            model = model.to(found)
        return model.eval()

    @classmethod
    def _build_empty(cls: type[_Model], config: ILTConfig, source: Path) -> _Model:
        """The model of ``config`` with parameters on the meta device (buffers real: plugins' constants).

        A component whose factory cannot build on the meta device is built with real (random) weights instead;
        the loaded tensors replace them all the same.
        """
        from accelerate import init_empty_weights

        try:
            with init_empty_weights(include_buffers=False):
                return cls(config)
        except ILTError:
            pass  # a factory that computes on its weights while building (open_clip moves them): build them real
        try:
            return cls(config)
        except ILTError as exc:
            raise CheckpointError(f"{source}: its spec cannot be built here: {exc}") from None

    @classmethod
    def _from_old_folder(cls: type[_Model], folder: Path) -> _Model:
        """A format-1 folder (``spec.yaml``, spec in the weights' metadata): built from its spec, then loaded."""
        spec, tensors, metadata = ckpt.read_old_checkpoint(folder)
        needs_source = any(isinstance(b, dict) and b.get("pretrained") for b in spec.values())
        try:
            if needs_source:  # its blocks load their weights from the backbones' sources, as in format 1
                model = cls(spec)
            else:
                model = cls._build_empty(ILTConfig(spec=load_spec(spec).to_dict()), folder)
        except ILTError as exc:
            raise CheckpointError(
                f"{folder}: an ilt-checkpoint-1 folder whose spec cannot be built here ({exc}); where its backbones' "
                f"sources are reachable, run `ilt convert {folder} NEW_FOLDER` once to make it self-contained"
            ) from None
        ckpt.load_state(model, tensors, str(folder / ckpt.WEIGHTS_NAME), assign=True)
        for modality in json.loads(metadata.get("disabled", "[]")):
            model.disable(modality)
        return model

    def _check_renderer(self, folder: Path) -> None:
        """Warn when the installed renderer draws other pixels than the one the checkpoint was saved with."""
        saved = self.config.renderer_key
        diffs = renderer_key_differences(saved, renderer_key_json(self.renderer)) if saved else []
        if diffs:
            more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
            warnings.warn(
                f"{folder}: the installed renderer differs from the one this model was saved with "
                f"({'; '.join(diffs[:3])}{more}, saved vs installed): its word images will drift from training's",
                UserWarning,
                stacklevel=3,
            )

    def _read_generation_file(self, folder: Path) -> None:
        path = folder / ckpt.GENERATION_CONFIG_NAME
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CheckpointError(f"{path}: not readable JSON ({exc})") from None
        self.generation_defaults.update({k: data[k] for k in GENERATION_DEFAULTS if k in data})
        byte_config = _generation_config_of(self.bytes_decoder)
        if byte_config is not None and isinstance(data.get("bytes_decoder"), dict):
            byte_config.update(**{k: v for k, v in data["bytes_decoder"].items() if k != "transformers_version"})


def _generation_config_of(component: Any) -> Any | None:
    """The transformers ``GenerationConfig`` of the first backbone inside ``component`` that has one."""
    if not isinstance(component, nn.Module):
        return None
    for module in component.modules():
        found = getattr(module, "generation_config", None)
        if found is not None and hasattr(found, "to_diff_dict"):
            return found
    return None


def _no_meta_left(model: nn.Module, folder: Path) -> None:
    """Fail when a parameter or buffer is still on the meta device (the files did not fill it)."""
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(
            f"{folder}: {len(left)} tensor(s) not filled by the checkpoint's files (e.g. {left[0]}); the weights "
            "do not fit the model its config builds"
        )


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _local_folder(
    name: str, revision: str | None, cache_dir: str | Path | None, local_files_only: bool, token: str | bool | None
) -> Path:
    """``name`` as a local folder, or the hub repository ``name`` fetched into the cache (its snapshot folder)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _REPO_ID.match(name) or name.startswith("."):
        raise CheckpointError(f"{name}: no such checkpoint folder (expected a folder written by save_pretrained)")
    from huggingface_hub import snapshot_download

    try:
        found = snapshot_download(
            name,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            allow_patterns=["*.json", "*.safetensors", "*.md", "*.yaml"],
        )
    except Exception as exc:  # offline, no such repository, gated: huggingface_hub's many error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"{name}: no such checkpoint folder, and the hub repository {name!r} cannot be fetched "
            f"({type(exc).__name__}: {first})"
        ) from None
    return Path(found)


__all__ = ["GENERATION_DEFAULTS", "PretrainedIO"]
