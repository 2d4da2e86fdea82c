"""An example third-party plugin: ``example:mean-bytes`` (a bytes encoder) and a component whose
dependency is missing on purpose, to show how the registry reports it."""

from ilt_core import Component, hookimpl


@hookimpl
def ilt_components():
    return [
        Component(
            plugin="example",
            name="mean-bytes",
            roles=("bytes_encoder",),
            factory="ilt_example.encoder:build",
            requires=("torch",),
            install="pip install ilt-example",
            description="mean of learned byte embeddings",
        ),
        Component(
            plugin="example",
            name="needs-missing",
            roles=("bytes_encoder",),
            factory="ilt_example.encoder:build",
            requires=("ilt_example_missing_dependency",),
            install="pip install ilt-example-missing-dependency",
            description="stays listed, marked unavailable",
        ),
    ]
