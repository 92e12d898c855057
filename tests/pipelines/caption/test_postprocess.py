"""Post-processing: boilerplate stripped, empty/degenerate outputs rejected with a reason."""

from __future__ import annotations

import json

import pytest

from pyratok.pipelines.caption.config import PostprocessConfig, PromptConfig
from pyratok.pipelines.caption.postprocess import Cleaned, Postprocessor, Rejected, parse_fields

POST = Postprocessor(PostprocessConfig(), PromptConfig())


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("The video shows a red kite flying over green hills.", "A red kite flying over green hills."),
        ("In this video, a chef slices onions in a bright kitchen.", "A chef slices onions in a bright kitchen."),
        ("This clip depicts two people walking along a beach at sunset.", "Two people walking along a beach at sunset."),
        ("Sure, here is a detailed description: The video shows a dog running.", "A dog running."),
        ("We see a train crossing a snowy field at dawn.", "A train crossing a snowy field at dawn."),
        ('"A cyclist rides through a rainy alley under neon lights."', "A cyclist rides through a rainy alley under neon lights."),
        ("The video showcases that a surfer rides a big wave.", "A surfer rides a big wave."),
        ("A woman walks\n\nslowly across   the street.", "A woman walks slowly across the street."),
        ("Videography of a calm lake\x00 at dusk.", "Videography of a calm lake at dusk."),
    ],
)
def test_boilerplate_openings_are_stripped(raw, expected):
    out = POST(raw)
    assert isinstance(out, Cleaned), out
    assert out.caption == expected


@pytest.mark.parametrize(
    "raw,reason",
    [
        ("", "empty_output"),
        ("   \n ", "empty_output"),
        ("The video shows", "empty_output"),
        ("A dog.", "too_short"),
        ("A man walks a dog. " + "and then and then " * 6, "repetition_loop"),
        ("The the the the the the the the the", "repetition_loop"),
        ("A city street at night with neon lights " * 5, "repetition_loop"),
    ],
)
def test_degenerate_outputs_are_rejected_with_a_reason(raw, reason):
    out = POST(raw)
    assert isinstance(out, Rejected), out
    assert out.reason == reason
    assert out.detail


def test_a_normal_long_caption_is_not_a_loop():
    text = (
        "A young woman in a yellow raincoat walks along a wet cobblestone street at dusk, holding a black umbrella. "
        "Warm light spills from shop windows on both sides, and reflections shimmer in the puddles as cars pass. "
        "The camera tracks her from behind at walking pace, then slowly rises to reveal the whole street."
    )
    assert isinstance(POST(text), Cleaned)


def test_structured_fields_become_the_caption():
    prompt = PromptConfig(template="structured")
    post = Postprocessor(PostprocessConfig(), prompt)
    fields = {f: f"{f} text about a red kite over the hills" for f in prompt.fields}
    fields["Detailed Description"] = "The video shows a red kite flying over green hills in soft light."
    out = post("```json\n" + json.dumps(fields) + "\n```")
    assert isinstance(out, Cleaned)
    assert out.caption == "A red kite flying over green hills in soft light."
    assert set(out.fields) == set(prompt.fields)
    lines = "Brief Description: a kite\nDetailed Description: A red kite flies over green hills on a windy day."
    assert post(lines).caption.startswith("A red kite")
    bad = post("just some text without fields")
    assert isinstance(bad, Rejected) and bad.reason == "unparseable_fields"


def test_parse_fields_is_case_insensitive_and_ignores_unknown_keys():
    parsed = parse_fields('noise {"detailed description": "x y z", "Other": "q"} trailing', ["Detailed Description"])
    assert parsed == {"Detailed Description": "x y z"}
