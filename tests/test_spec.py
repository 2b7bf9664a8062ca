"""The store spec: JSON round trip, a stable digest, and clear refusals of bad specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import small_spec
from vsae.errors import ConfigError, SchemaVersionError, TaskDataError
from vsae.store import HookSpec, StoreSpec, bf16_bits_to_float32, float_to_bf16_bits
from vsae.store.dtypes import encode_acts


def test_json_round_trip_and_stable_digest():
    spec = small_spec()
    again = StoreSpec.from_json(spec.to_json())
    assert again == spec and again.digest == spec.digest
    # The digest is part of the on-disk contract: a change here orphans every existing store.
    # If this fails, bump SCHEMA_VERSION and add a migration in vsae/store/spec.py.
    assert spec.digest == "4c6472d8f84915fb12119cc09b85ac21e52cac266ff339df24272ca700766228"
    assert small_spec(seed=1).digest != spec.digest


@pytest.mark.parametrize("name", ["../x", "/abs", "a//b", "mixed/acts", "", "a/./b", "sp ace", "_tasks"])
def test_unsafe_hook_names_are_refused(name):
    with pytest.raises(ConfigError, match="invalid hook name"):
        HookSpec(name, 8)


def test_spec_validation_names_the_problem():
    with pytest.raises(ConfigError, match="gives 4 rows per image, but rows_per_image=3"):
        HookSpec("conv", 8, "magnitude:4", 3)
    with pytest.raises(ConfigError, match="unknown sampler 'magnitude'"):
        HookSpec("conv", 8, "magnitude", 1)
    with pytest.raises(ConfigError, match="dtype 'int8'"):
        small_spec("int8")
    with pytest.raises(ConfigError, match="repeated: \\['a'\\]"):
        StoreSpec("m.w", "random:0", "d", 10, (HookSpec("a", 2), HookSpec("a", 3)))
    with pytest.raises(ConfigError, match="unknown store spec fields \\['colour'\\]"):
        StoreSpec.from_dict({**small_spec().to_dict(), "colour": "red"})
    with pytest.raises(SchemaVersionError, match="schema_version 99"):
        StoreSpec.from_dict({**small_spec().to_dict(), "schema_version": 99})


@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=64))
def test_bf16_rounding_matches_torch(values):
    x = np.array(values, dtype=np.float32)
    ours = float_to_bf16_bits(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    finite = np.isfinite(torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    np.testing.assert_array_equal(ours[finite], theirs[finite])
    np.testing.assert_array_equal(bf16_bits_to_float32(ours)[finite],
                                  torch.from_numpy(x).to(torch.bfloat16).float().numpy()[finite])


def test_torch_bf16_tensors_are_stored_bit_exact():
    t = torch.randn(64, 8).to(torch.bfloat16)
    stored = encode_acts(t.view(torch.int16).numpy(), "bfloat16", "test")
    np.testing.assert_array_equal(bf16_bits_to_float32(stored), t.float().numpy())


def test_non_finite_activations_are_refused():
    with pytest.raises(TaskDataError, match="1 activation values are not finite in float32"):
        encode_acts(np.array([[1.0, np.nan]], np.float32), "float32", "test")
    with pytest.raises(TaskDataError, match="float16 holds up to 65504"):
        encode_acts(np.array([[7e4]], np.float32), "float16", "test")
