"""Token shapes at every level for both backbones over several resolutions / aspect ratios; input validation."""

from __future__ import annotations

import pytest
import torch

from tests.model.conftest import clip

EXPECTED_GRIDS = {  # (stride, frames per cell) of levels 1..4
    "wan2.2": [(4, 1), (8, 2), (16, 4), (16, 4)],
    "wan2.1": [(2, 1), (4, 2), (8, 4), (8, 4)],
}


@pytest.mark.parametrize(
    "fixture,kind,size",
    [
        ("tiny22", "wan2.2", (5, 32, 32)),  # 1:1
        ("tiny22", "wan2.2", (9, 48, 80)),  # ~16:9
        ("tiny22", "wan2.2", (1, 64, 32)),  # a single frame, 1:2 portrait
        ("tiny21", "wan2.1", (5, 24, 40)),  # 3:5
        ("tiny21", "wan2.1", (9, 32, 16)),  # 2:1 portrait
    ],
)
def test_pyramid_shapes_and_decode_shape(request, fixture, kind, size):
    model = request.getfixturevalue(fixture)
    frames, height, width = size
    assert model.backbone.kind == kind
    assert [(g.stride, g.frames_per_cell) for g in model.lapq.grids] == EXPECTED_GRIDS[kind]
    video = clip(frames, height, width, batch=2)
    pyramid = model.encode(video, ["a", "b"])
    for ids, (stride, per_cell) in zip(pyramid.levels, EXPECTED_GRIDS[kind]):
        assert ids.dtype == torch.int64
        assert tuple(ids.shape) == (2, 1 + (frames - 1) // per_cell, height // stride, width // stride)
        assert ids.unique().numel() > 1  # a random clip uses more than one code
    assert pyramid.video_shape == size
    assert tuple(model.decode(pyramid).shape) == (2, 3, *size)


def test_size_constraints_are_exposed(tiny22, tiny21):
    assert (tiny22.spatial_multiple, tiny22.temporal_multiple) == (16, 4)
    assert (tiny21.spatial_multiple, tiny21.temporal_multiple) == (8, 4)


@pytest.mark.parametrize(
    "shape,message",
    [
        ((1, 3, 6, 32, 32), r"6 frames; the causal VAE needs 1 \+ 4k frames \(e\.g\. 5 or 9\)"),
        ((1, 3, 5, 40, 32), "multiples of 16"),
        ((1, 4, 5, 32, 32), "3 channels"),
        ((3, 5, 32, 32), r"\(B, 3, T, H, W\)"),
    ],
)
def test_bad_inputs_get_clear_errors(tiny22, shape, message):
    with pytest.raises(ValueError, match=message):
        tiny22.encode(torch.zeros(shape), None)


def test_text_must_match_the_batch(tiny22):
    with pytest.raises(ValueError, match="list of 2 strings"):
        tiny22.encode(clip(batch=2), ["only one"])
    with pytest.raises(ValueError, match="float"):
        tiny22.encode(torch.zeros(1, 3, 5, 32, 32, dtype=torch.uint8), ["x"])
