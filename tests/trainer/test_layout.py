"""The trainer's house rules, read from the source: each model family in one folder, the shared
code in `trainer/core/`, and no family reaching into another (import cycles anywhere in the
project are checked by tests/core/test_architecture.py).

Two modules compose families, and say so here: the CompVis importer writes model folders of the
autoencoder and diffusion families, so it builds their models (it imports their model and options
modules, never their training code); `trainer.generate` writes a pool from any generator's folder,
so it calls each generator family's sampler.
"""

from __future__ import annotations

import inspect

import pytest

import trainer

FAMILIES = ("autoencoder", "diffusion", "stylegan2", "classifier", "compvis")
COMPOSERS = {
    "compvis": {
        "trainer.autoencoder.model",
        "trainer.autoencoder.options",
        "trainer.diffusion.denoising",
        "trainer.diffusion.ldm",
        "trainer.diffusion.options",
    },
    "generate": {"trainer.diffusion.ldm", "trainer.stylegan2.sampling"},
}


def group(module: str) -> str:
    """`core`, a family's name, or (for the modules beside them) the module's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "trainer"


def test_every_module_lives_in_core_or_a_family(import_graph) -> None:
    flat = sorted(
        name for name in import_graph(trainer) if name.count(".") == 1 and group(name) not in FAMILIES
    )
    assert flat == ["trainer.core", "trainer.generate"], "only core/, the families and generate"


def test_core_imports_no_family(import_graph) -> None:
    offences = [
        f"{module} imports {target}"
        for module, targets in import_graph(trainer).items()
        if group(module) == "core"
        for target in targets
        if group(target) != "core"
    ]
    assert not offences


def test_no_family_imports_another(import_graph) -> None:
    crossings = [
        f"{module} imports {target}"
        for module, targets in import_graph(trainer).items()
        for target in targets
        if group(target) not in ("core", group(module)) and target not in COMPOSERS.get(group(module), ())
    ]
    assert not crossings


FRONT_DOORS = [
    ("trainer.autoencoder.train", "train_autoencoder", "AutoencoderSettings"),
    ("trainer.diffusion.ldm", "train_ldm", "LDMSettings"),
    ("trainer.diffusion.sd_finetune", "train_sd_finetune", "SDFinetuneSettings"),
    ("trainer.stylegan2.train", "train_stylegan2", "StyleGAN2Settings"),
    ("trainer.classifier.experiment", "train_classifier", "ClassifierSettings"),
]


@pytest.mark.parametrize(
    ("module", "name", "settings"), FRONT_DOORS, ids=[name for _, name, _ in FRONT_DOORS]
)
def test_front_doors_take_one_frozen_settings_object(module: str, name: str, settings: str) -> None:
    import dataclasses
    import importlib

    loaded = importlib.import_module(module)
    parameters = inspect.signature(getattr(loaded, name)).parameters
    assert list(parameters)[-2:] == ["out", "settings"]
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in parameters.values())
    settings_class = getattr(loaded, settings)
    assert dataclasses.is_dataclass(settings_class) and settings_class.__dataclass_params__.frozen
    assert "options" in {field.name for field in dataclasses.fields(settings_class)}
