"""The plugin registry: discovery through entry points, declarations read without importing, clear errors."""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from ilt_core import BuildContext, Component, ILTError, get_registry, hookimpl
from ilt_core.cli import main as cli
from ilt_core.cli.main import main
from ilt_core.plugins.registry import Registry, components_in

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "example_plugin"
BUILT_IN = ["hf:causal-lm", "hf:encoder", "hf:vision", "timm:model", "clip:visual", "freetype:default", "cairo:default"]


@pytest.fixture
def on_path(monkeypatch):
    """Put folders on ``sys.path`` for one test; modules imported from them are forgotten after it."""
    before = set(sys.modules)

    def add(*folders: Path) -> None:
        for folder in folders:
            monkeypatch.syspath_prepend(str(folder))

    yield add
    for name in set(sys.modules) - before:
        if name.startswith(("ilt_example", "broken_plugin")):
            del sys.modules[name]


def _fake_plugin(components):
    module = types.ModuleType("fake_plugin")
    module.ilt_components = hookimpl(lambda: components)
    return module


def _plugin_lines(out: str, address: str) -> str:
    line = next((ln for ln in out.splitlines() if ln.strip().startswith(address + " ")), None)
    assert line is not None, f"{address} not listed:\n{out}"
    return line.rstrip()


def test_every_built_in_component_is_listed_and_its_factory_imports(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for address in BUILT_IN:
        assert _plugin_lines(out, address).endswith("ok")
    assert "- pooling" not in out  # arguments only with --verbose or a NAME
    assert main(["plugins", "--verbose"]) == 0
    out = capsys.readouterr().out
    # each factory's typed arguments, from its signature (and a TypedDict's fields for **kwargs)
    for line in (
        "- pooling: str = 'last'",
        "- name_or_path: str | None",
        "- model_name: str = 'vit_tiny_patch16_224'",
        "- font_family: str = 'sans-serif'",
        "- weight: float = 400.0",
        "- max_width: int = 512",
    ):
        assert line in out, line


def test_built_in_plugins_come_from_entry_points():
    registry = get_registry()
    for name in ("hf", "timm", "clip", "freetype", "cairo"):
        info = registry.plugins[name]
        assert info.distribution == f"ilt-{name}", info
        assert not info.error


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


def test_decorated_factories_are_listed_without_importing_them(on_path):
    """The hook reads ``@component`` from the module's source: the factory module loads only to build."""
    on_path(EXAMPLE)
    import ilt_example

    registry = Registry(load_entry_points=False)
    registry.register(ilt_example, "example", "ilt-example", "0.1.0")
    by_address = {c.address: c for c in registry.components("bytes_encoder")}
    assert sorted(by_address) == ["example:mean-bytes", "example:needs-missing"]
    assert "ilt_example.encoder" not in sys.modules
    mean = by_address["example:mean-bytes"]
    assert mean.factory == "ilt_example.encoder:build" and mean.requires == ("torch",)
    assert mean.description == "Mean of learned byte embeddings, then a linear layer."
    assert by_address["example:needs-missing"].missing == ("ilt_example_missing_dependency",)

    encoder = registry.build("example:mean-bytes", "bytes_encoder", BuildContext(), {"hidden_size": 48})
    assert tuple(encoder(torch.randint(0, 256, (3, 5)), torch.ones(3, 5, dtype=torch.long)).shape) == (3, 48)
    assert mean.arguments() == ["hidden_size: int = 64"]
    with pytest.raises(ILTError, match=r"unknown argument\(s\) width; expected some of: hidden_size"):
        registry.build("example:mean-bytes", "bytes_encoder", BuildContext(), {"width": 3})


def test_a_third_party_plugin_is_found_through_its_entry_point(tmp_path, on_path, capsys):
    """What ``pip install ilt-example`` leaves behind: a .dist-info whose entry point names the module."""
    dist_info = tmp_path / "ilt_example-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: ilt-example\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text("[ilt]\nexample = ilt_example\n")
    on_path(tmp_path, EXAMPLE)
    get_registry.cache_clear()
    try:
        info = get_registry().plugins["example"]
        assert (info.distribution, info.version, info.error) == ("ilt-example", "0.1.0", "")
        assert main(["plugins"]) == 0
        out = capsys.readouterr().out
        assert _plugin_lines(out, "example:mean-bytes").endswith("ok")
        missing = _plugin_lines(out, "example:needs-missing")
        assert "unavailable" in missing and "pip install ilt-example-missing-dependency" in missing
        assert main(["plugins", "example:mean-bytes"]) == 0
        assert "- hidden_size: int = 64" in capsys.readouterr().out
    finally:
        get_registry.cache_clear()


def _write_plugin(folder: Path, factory_source: str) -> types.ModuleType:
    package = folder / "broken_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "factory.py").write_text(textwrap.dedent(factory_source))
    import broken_plugin

    return broken_plugin


def test_a_factory_that_does_not_import_fails_ilt_plugins(tmp_path, on_path, monkeypatch, capsys):
    on_path(tmp_path)
    _write_plugin(
        tmp_path,
        """
        import no_such_module_xyz  # the plugin forgot to declare it
        from ilt_core.plugins.registry import component

        @component("thing", roles=("bytes_encoder",))
        def build(role, context):
            '''A thing.'''
        """,
    )
    registry = Registry(load_entry_points=False)
    registry.register(_fake_plugin(components_in("broken", "broken_plugin.factory")), "broken")
    assert [c.address for c in registry.components()] == ["broken:thing"]
    monkeypatch.setattr(cli, "get_registry", lambda: registry)
    assert main(["plugins"]) == 1
    line = _plugin_lines(capsys.readouterr().out, "broken:thing")
    assert "BROKEN" in line and "broken_plugin.factory:build does not import" in line
    assert "No module named 'no_such_module_xyz'" in line


def test_a_declaration_that_is_not_literal_names_its_line(tmp_path, on_path):
    on_path(tmp_path)
    _write_plugin(
        tmp_path,
        """
        from ilt_core.plugins.registry import component

        @component(make_name(), roles=("bytes_encoder",))
        def build(role, context):
            pass
        """,
    )
    with pytest.raises(ILTError, match=r"factory\.py:4: @component argument 'make_name\(\)' is not a literal"):
        components_in("broken", "broken_plugin.factory")
    factory = tmp_path / "broken_plugin" / "factory.py"
    factory.write_text(factory.read_text().replace("make_name()", "'thing'").replace("bytes_encoder", "byte_encoder"))
    with pytest.raises(ILTError, match=r"factory\.py:4: unknown role\(s\) byte_encoder; roles are: renderer"):
        components_in("broken", "broken_plugin.factory")


def test_typed_dict_arguments_are_documented_and_checked():
    """``**source: Unpack[SourceArgs]`` (PEP 692) lists each field; a name outside them is refused."""
    component = get_registry().get("hf:encoder")
    lines = component.arguments()
    assert lines[0] == "pooling: str = 'mean'"
    assert "name_or_path: str | None" in lines and "pretrained: bool" in lines
    with pytest.raises(
        ILTError, match=r"unknown argument\(s\) hidden_size; expected some of: pooling, length_groups, config"
    ):
        get_registry().build("hf:encoder", "bytes_encoder", BuildContext(), {"hidden_size": 8})
