"""The plugin registry: discovery through entry points, clear errors, a third-party plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ilt_core import BuildContext, Component, ILTError, get_registry, hookimpl
from ilt_core.cli.main import main
from ilt_core.plugins.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
BUILT_IN = ["hf:causal-lm", "hf:encoder", "hf:vision", "timm:model", "clip:visual", "freetype:default", "cairo:default"]


def test_every_built_in_component_is_listed(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for address in BUILT_IN:
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(address + " ")), None)
        assert line is not None, f"{address} not listed:\n{out}"
        assert line.rstrip().endswith("ok"), line


def test_built_in_plugins_come_from_entry_points():
    registry = get_registry()
    for name in ("hf", "timm", "clip", "freetype", "cairo"):
        info = registry.plugins[name]
        assert info.distribution == f"ilt-{name}", info
        assert not info.error


def _fake_plugin(components):
    module = types.ModuleType("fake_plugin")
    module.ilt_components = hookimpl(lambda: components)
    return module


def test_unknown_component_lists_the_choices():
    registry = get_registry()
    with pytest.raises(ILTError) as err:
        registry.get("hf:no-such-thing", "latent_transformer", where="spec.yaml: latent_transformer.component")
    msg = str(err.value)
    assert "spec.yaml: latent_transformer.component" in msg and "hf:causal-lm" in msg
    with pytest.raises(ILTError, match="no plugin 'nope' is installed"):
        registry.get("nope:thing")
    with pytest.raises(ILTError, match="not of the form 'plugin:name'"):
        registry.get("causal-lm")
    with pytest.raises(ILTError, match="cannot be a image_encoder"):
        registry.get("hf:causal-lm", "image_encoder")


def test_missing_dependency_is_listed_not_fatal():
    registry = Registry(load_entry_points=False)
    missing = Component(
        "fake",
        "heavy",
        ("bytes_encoder",),
        "json:dumps",
        requires=("no_such_module_xyz",),
        install="pip install heavy-thing",
    )
    registry.register(_fake_plugin([missing]), "fake")
    (component,) = registry.components("bytes_encoder")
    assert component.available is False and component.missing == ("no_such_module_xyz",)
    with pytest.raises(ILTError, match="pip install heavy-thing"):
        registry.build("fake:heavy", "bytes_encoder", BuildContext(), {})


def test_component_of_another_plugin_is_refused():
    registry = Registry(load_entry_points=False)
    stray = Component("other", "x", ("renderer",), "json:dumps")
    registry.register(_fake_plugin([stray]), "fake")
    assert registry.components() == []
    assert "does not belong" in registry.plugins["fake"].error


@pytest.mark.slow
def test_external_plugin_installs_and_is_discovered(tmp_path):
    """A third party adds a component with one package and one entry point; the core is untouched."""
    target = tmp_path / "site"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(target),
    ]
    subprocess.run([*pip, str(ROOT / "tests" / "example_plugin")], check=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    listed = subprocess.run(
        [sys.executable, "-m", "ilt_core.cli", "plugins"], env=env, capture_output=True, text=True, check=True
    )
    lines = listed.stdout.splitlines()
    assert any(ln.strip().startswith("example:mean-bytes") and ln.rstrip().endswith("ok") for ln in lines), (
        listed.stdout
    )
    missing = next(ln for ln in lines if ln.strip().startswith("example:needs-missing"))
    assert "unavailable" in missing and "pip install ilt-example-missing-dependency" in missing
    code = (
        "import torch; from ilt_core import get_registry, BuildContext;"
        "enc = get_registry().build('example:mean-bytes', 'bytes_encoder', BuildContext(), {'hidden_size': 48});"
        "print(tuple(enc(torch.randint(0, 256, (3, 5)), torch.ones(3, 5, dtype=torch.long)).shape))"
    )
    built = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert built.stdout.strip() == "(3, 48)"
