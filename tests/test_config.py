"""The piwsl config section: presets, unknown keys and bad values are errors naming the key."""

from __future__ import annotations

import pytest

from piwsl.config import PRESETS, PIWSLConfig, PIWSLConfigError


def test_defaults_are_the_papers_case_d():
    config = PIWSLConfig.from_dict(None)
    assert (config.c_pitc, config.c_pisc, config.max_displacement) == PRESETS["D"] == (1.2, 0.01, 0.05)
    assert config.pointwise_loss == "mse" and config.direction == "random" and config.atom_fraction == 1.0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_set_the_three_numbers_and_explicit_keys_win(name):
    config = PIWSLConfig.from_dict({"preset": name})
    assert (config.c_pitc, config.c_pisc, config.max_displacement) == PRESETS[name]
    assert PIWSLConfig.from_dict({"preset": name, "c_pitc": 0.5}).c_pitc == 0.5


def test_unknown_keys_are_named():
    with pytest.raises(PIWSLConfigError, match="c_pict.*allowed"):
        PIWSLConfig.from_dict({"c_pict": 1.0})


@pytest.mark.parametrize(
    "section, key",
    [
        ({"max_displacement": 0.0}, "max_displacement"),
        ({"max_displacement": 0.4}, "max_displacement"),
        ({"c_pitc": -1.0}, "c_pitc"),
        ({"c_pisc": "a lot"}, "c_pisc"),
        ({"atom_fraction": 0.0}, "atom_fraction"),
        ({"atom_fraction": 1.1}, "atom_fraction"),
        ({"method": "denoise"}, "method"),
        ({"direction": "sideways"}, "direction"),
        ({"pisc_variant": "eq5"}, "pisc_variant"),
        ({"pointwise_loss": "huber"}, "pointwise_loss"),
        ({"forward_mode": "parallel"}, "forward_mode"),
        ({"warmup_steps": -3}, "warmup_steps"),
        ({"preset": "Z"}, "preset"),
        ({"consistency_form": "simpson"}, "consistency_form"),
        ({"method": "weak_label", "consistency_form": "trapezoid"}, "consistency_form.*weak_label"),
        ({"c_pitc": 0, "c_pisc": 0}, "c_pitc = c_pisc = 0"),
    ],
)
def test_bad_values_name_the_key_and_value(section, key):
    with pytest.raises(PIWSLConfigError, match=key):
        PIWSLConfig.from_dict(section)


def test_presets_and_weak_labels_keep_the_papers_taylor_form_unless_told():
    from piwsl.config import DEFAULT_CONSISTENCY_FORM

    assert PIWSLConfig.from_dict(None).consistency_form == DEFAULT_CONSISTENCY_FORM
    assert PIWSLConfig.from_dict({"preset": "D"}).consistency_form == "taylor"
    assert PIWSLConfig.from_dict({"preset": "D", "consistency_form": "trapezoid"}).consistency_form == "trapezoid"
    assert PIWSLConfig.from_dict({"method": "weak_label"}).consistency_form == "taylor"
    assert PIWSLConfig.from_dict({"consistency_form": "trapezoid"}).consistency_form == "trapezoid"
