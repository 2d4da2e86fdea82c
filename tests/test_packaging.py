"""Packaging: each distribution declares what it imports, plugins require a bounded ilt-core, and ilt-core with one
plugin installs and works alone (no other plugin beside it)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as pip vendors it
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = sorted(p.parent for p in (ROOT / "ilt_plugins").glob("*/pyproject.toml"))
# import name -> the distribution that provides it
PROVIDERS = {
    "torch": "torch",
    "transformers": "transformers",
    "timm": "timm",
    "open_clip": "open-clip-torch",
    "numpy": "numpy",
    "freetype": "freetype-py",
    "uharfbuzz": "uharfbuzz",
    "bidi": "python-bidi",
    "cairo": "pycairo",
    "tokenizers": "tokenizers",
    "matplotlib": "matplotlib",
    "pyarrow": "pyarrow",
    "yaml": "pyyaml",
    "pydantic": "pydantic",
    "safetensors": "safetensors",
    "huggingface_hub": "huggingface-hub",
    "accelerate": "accelerate",
    "datasets": "datasets",
    "regex": "regex",
    "PIL": "pillow",
    "pluggy": "pluggy",
    "tqdm": "tqdm",
    "tensorboard": "tensorboard",
    "gguf": "gguf",
    "lm_eval": "lm-eval",
}


def project(path: Path) -> dict:
    return tomllib.loads((path / "pyproject.toml").read_text(encoding="utf-8"))


def requirements(data: dict, extras: bool = False) -> dict[str, Requirement]:
    reqs = list(data["project"].get("dependencies", []))
    if extras:
        reqs += [r for group in data["project"].get("optional-dependencies", {}).values() for r in group]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def imported_distributions(package: Path) -> set[str]:
    """Distributions of the third-party modules that the package's code imports (anywhere in a file)."""
    found = set()
    for file in package.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in PROVIDERS:
                    found.add(PROVIDERS[top])
    return found


CORE = project(ROOT)
CORE_VERSION = Version(CORE["project"]["version"])


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_plugin_requires_a_bounded_core_that_includes_this_one(plugin):
    reqs = requirements(project(plugin))
    core = reqs.get("ilt-core")
    assert core is not None, f"{plugin}/pyproject.toml: no ilt-core requirement"
    spec = core.specifier
    assert CORE_VERSION in spec and any(s.operator == "<" for s in spec), f"{plugin}: ilt-core {spec} is unbounded"
    for name, req in reqs.items():  # sibling plugins bounded the same way
        if name.startswith("ilt-"):
            assert any(s.operator == "<" for s in req.specifier), f"{plugin}: {name}{req.specifier} is unbounded"


@pytest.mark.parametrize("path", [ROOT, *PLUGINS], ids=lambda p: p.name)
def test_build_system_knows_the_license_string(path):
    data = project(path)
    assert isinstance(data["project"]["license"], str)
    setuptools = next(Requirement(r) for r in data["build-system"]["requires"] if r.startswith("setuptools"))
    assert Version("76") not in setuptools.specifier and Version("77") in setuptools.specifier


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_every_third_party_import_is_declared(plugin):
    declared = set(requirements(project(plugin), extras=True)) | set(requirements(CORE))
    package = next(p for p in plugin.iterdir() if p.name.startswith("ilt_") and p.is_dir() and "egg" not in p.name)
    missing = imported_distributions(package) - declared
    assert not missing, f"{plugin.name} imports {sorted(missing)} without declaring them"


def test_core_declares_what_it_imports_and_nothing_unused():
    declared = set(requirements(CORE))
    used = imported_distributions(ROOT / "ilt_core")
    assert used - declared == set(), sorted(used - declared)
    assert "tqdm" not in declared or "tqdm" in used  # no dependency that nothing imports


def test_hf_plugin_requires_torch_with_enable_gqa():
    torch_req = requirements(project(ROOT / "ilt_plugins" / "hf"))["torch"]
    assert Version("2.4") not in torch_req.specifier and Version("2.5") in torch_req.specifier


def test_core_extras_name_the_plugins():
    extras = CORE["project"]["optional-dependencies"]
    assert {"hf", "freetype", "all", "tensorboard"} <= set(extras)
    assert Requirement(extras["hf"][0]).name == "ilt-hf"
    assert "hf" in Requirement(extras["all"][0]).extras and "freetype" in Requirement(extras["all"][0]).extras


def test_core_and_the_hf_plugin_alone_build_a_model(tmp_path):
    """Install ilt-core and ilt-hf (no dependencies: torch and transformers come from this environment) into a
    folder, then in a fresh interpreter that sees only that folder and the third-party packages, build a spec
    that needs only them."""
    sources = tmp_path / "src"
    shutil.copytree(ROOT / "ilt_core", sources / "core" / "ilt_core", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, sources / "core" / name)
    shutil.copytree(
        ROOT / "ilt_plugins" / "hf", sources / "hf", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--target", str(target), str(sources / "core"), str(sources / "hf")],
        check=True,
        cwd=tmp_path,
    )
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(target)!r}, {sysconfig.get_paths()["purelib"]!r}]  # no .pth: no editable installs
        import importlib.util, torch, ilt_core, ilt_hf
        from ilt_core.modeling.model import build_model
        from ilt_core.plugins.registry import get_registry
        assert ilt_core.__file__.startswith({str(target)!r}) and ilt_hf.__file__.startswith({str(target)!r})
        assert importlib.util.find_spec("ilt_freetype") is None and importlib.util.find_spec("ilt_timm") is None
        small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
        spec = {{
            "image_encoder": False,
            "bytes_encoder": {{"component": "hf:encoder", "config": {{"model_type": "bert", **small}}}},
            "latent_transformer": {{"component": "hf:causal-lm", "config": {{"model_type": "llama", **small}}}},
            "bytes_decoder": {{"component": "hf:causal-lm", "config": {{"model_type": "llama", **small}}}},
        }}
        model = build_model(spec, seed=0).eval()
        with torch.no_grad():
            out = model(**model.processor(["hello world"]).model_inputs())
        print("ok", sorted(p for p, i in get_registry().plugins.items() if not i.error), float(out.loss))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok ['hf']"), done.stdout
