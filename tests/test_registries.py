"""The three registries: a new direction, transform or optimizer is a registration, and unknown names are clear
errors that list what is registered."""

from __future__ import annotations

import math

import pytest
import torch
from _optim_helpers import backward, clone, small_model

import spectrakit.optim as so
from spectrakit.optim import (
    DIRECTIONS,
    TRANSFORMS,
    Direction,
    Spectra,
    Transform,
    TransformOptions,
    register_direction,
    register_transform,
)


@pytest.fixture
def scratch_registries():
    """Registrations made by a test are removed afterwards."""
    directions, transforms = dict(DIRECTIONS), dict(TRANSFORMS)
    yield
    for registry, saved in ((DIRECTIONS, directions), (TRANSFORMS, transforms)):
        registry.clear()
        registry.update(saved)


def _halve(U, c, options, need_bound):
    return 0.5 * U, torch.linalg.matrix_norm(U.float())


def test_a_registered_transform_is_a_clip_of_spectra_and_of_the_wrapper(scratch_registries):
    register_transform(Transform("halve", ("auto",), uses_threshold=False, rows_capable=True, apply=_halve,
                                 products=lambda q, p, options: 0.0,
                                 vector=lambda u, c, options: (0.5 * u, torch.linalg.vector_norm(u))))
    model, expected = small_model(torch.float64), small_model(torch.float64)
    opt = Spectra(model, lr=0.1, base="momentum", momentum=0.0, nesterov=False, clip="halve", scale="none",
                  weight_decay=0.0)
    backward(model, 0)
    backward(expected, 0)
    opt.step()
    with torch.no_grad():
        for p, q in zip(model.parameters(), expected.parameters()):
            torch.testing.assert_close(p, q - 0.1 * 0.5 * q.grad, rtol=0, atol=1e-15)
    wrapped = so.SpectraWrapper(torch.optim.SGD(clone(model).parameters(), lr=0.1), clip="halve",
                                decoupled_weight_decay=False)
    assert wrapped.defaults["clip"] == "halve"


def test_a_transform_with_state_is_not_a_spectra_clip():
    with pytest.raises(ValueError, match="clip must be None or one of .*'soft'.*got 'normalize_rows'"):
        Spectra(small_model(torch.float32), clip="normalize_rows")


def test_a_registered_direction_is_a_base_with_validated_group_keys(scratch_registries):
    def scaled_gradient(grads, states, group):
        return torch._foreach_mul(grads, group["gain"])

    register_direction(Direction("scaled-gradient", {"gain": 2.0}, scaled_gradient))
    model, expected = small_model(torch.float64), small_model(torch.float64)
    opt = Spectra(model, lr=0.1, base="scaled-gradient", clip=None, weight_decay=0.0)
    assert opt.defaults["gain"] == 2.0 and "scaled-gradient" in DIRECTIONS
    backward(model, 0)
    backward(expected, 0)
    opt.step()
    with torch.no_grad():
        for p, q in zip(model.parameters(), expected.parameters()):
            torch.testing.assert_close(p, q - 0.2 * q.grad, rtol=0, atol=1e-15)


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(ValueError, match=r"base must be one of \('adamw', .*'lion'.*got 'adam'"):
        Spectra(small_model(torch.float32), base="adam")
    with pytest.raises(ValueError, match="unknown optimizer 'spectra-adam'; choose one of: adamw, spectra-adamw"):
        so.create("spectra-adam", small_model(torch.float32))
    with pytest.raises(TypeError, match="register needs a Direction"):
        register_direction("lion")


def test_registering_an_optimizer_makes_it_creatable_by_name():
    entry = so.register("test-spectra-c3", "spectrakit.optim:Spectra", "SPECTRA with c = 3", clip_c=3.0)
    try:
        opt = so.create("test-spectra-c3", small_model(torch.float32), lr=1e-2)
        assert isinstance(opt, Spectra) and opt.defaults["clip_c"] == 3.0 and entry.class_name == "Spectra"
        assert "test-spectra-c3" in so.available()
    finally:
        from spectrakit import registry

        del registry._REGISTRY["test-spectra-c3"]
    with pytest.raises(ValueError, match="target must be an optimizer class or 'module:Class'"):
        so.register("bad", "Spectra", "no module")
    with pytest.raises(ValueError, match="name must be a non-empty string, got ''"):
        so.register("", "spectrakit.optim:Spectra", "no name")


def test_torch_adamw_by_name_decays_matrices_only():
    model = small_model(torch.float32)
    opt = so.create("adamw", model, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    decays = sorted((g["weight_decay"], len(g["params"])) for g in opt.param_groups)
    assert decays == [(0.0, 2), (0.1, 2)] and opt.defaults["betas"] == (0.9, 0.95)


def test_every_transform_reports_flops_that_grow_with_the_matrix():
    for name, transform in TRANSFORMS.items():
        small, large = transform.flops((8, 16), TransformOptions()), transform.flops((16, 32), TransformOptions())
        assert 0 < small < large and math.isfinite(large), name
