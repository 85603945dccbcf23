"""The TFRecord feature spec: writer and parser agree, bad samples are refused."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from atn_tf.data import feature_spec
from atn_tf.data.feature_spec import SampleError
from tests import determinism
from tests.fakes import random_sample


def _assert_same(a, b):
    for k in ("sample_id", "database", "subject", "clip", "label", "onset", "apex", "offset", "action_units"):
        assert getattr(a, k) == getattr(b, k), k
    np.testing.assert_array_equal(a.apex_image, b.apex_image)
    np.testing.assert_array_equal(a.flow_seq, b.flow_seq)
    if a.flow_image is None:
        assert b.flow_image is None
    else:
        np.testing.assert_array_equal(a.flow_image, b.flow_image)


@pytest.mark.parametrize("with_flow_image", [True, False])
@pytest.mark.parametrize("action_units", [None, (), (1, 4, 12, 99)])
def test_numpy_round_trip(with_flow_image, action_units):
    s = random_sample(3, steps=7, with_flow_image=with_flow_image, action_units=action_units)
    _assert_same(s, feature_spec.decode_example_np(feature_spec.encode_example(s)))


def test_tf_parser_reads_action_units():
    for aus, has in ((None, 0), ((), 1), ((4, 7), 1)):
        p = feature_spec.parse_example(tf.constant(feature_spec.encode_example(random_sample(1, action_units=aus))))
        assert int(p["has_action_units"]) == has and p["action_units"].numpy().tolist() == list(aus or ())


def test_tf_parser_matches_writer():
    s = random_sample(1, steps=64)
    p = feature_spec.parse_example(tf.constant(feature_spec.encode_example(s)))
    assert p["sample_id"].numpy().decode() == s.sample_id
    assert int(p["label"]) == s.label and int(p["flow_len"]) == 64
    np.testing.assert_array_equal(p["apex_image"].numpy()[..., 0], s.apex_image)
    np.testing.assert_array_equal(p["flow_seq"].numpy(), s.flow_seq)
    np.testing.assert_array_equal(p["flow_image"].numpy(), s.flow_image)


def test_tf_parser_fills_missing_flow_image_with_zeros():
    p = feature_spec.parse_example(tf.constant(feature_spec.encode_example(random_sample(2, with_flow_image=False))))
    assert int(p["has_flow_image"]) == 0 and not p["flow_image"].numpy().any()


def test_encoding_is_deterministic():
    """The same samples encode to the same bytes in this process and in a fresh one."""
    assert feature_spec.encode_example(random_sample(4)) == feature_spec.encode_example(random_sample(4))
    determinism.check_same_across_processes("encoding", "", "")


def test_encoding_determinism_mutant_is_caught():
    """Mutant: the encoding takes a per-process salt (Python's string hash). One process
    agrees with itself, as the old check did; two processes do not."""
    assert determinism.encoding_digest(mutant=True) == determinism.encoding_digest(mutant=True)
    with pytest.raises(AssertionError, match="another process"):
        determinism.check_same_across_processes("encoding", "", "", mutant=True)


@pytest.mark.parametrize("override,match", [
    (dict(label=3), "label"),
    (dict(apex_image=np.zeros((100, 100), np.uint8)), "apex_image"),
    (dict(flow_seq=np.zeros((65, 128), np.float32)), "flow_seq"),
    (dict(flow_seq=np.zeros((0, 128), np.float32)), "flow_seq"),
    (dict(flow_seq=np.full((3, 128), np.nan, np.float32)), "NaN"),
    (dict(apex=40), "outside onset..offset"),
    (dict(flow_image=np.zeros((28, 28), np.uint8)), "flow_image"),
    (dict(action_units=(7, 4)), "action_units"),
    (dict(action_units=(4, 4)), "action_units"),
    (dict(action_units=(0,)), "action_units"),
    (dict(action_units=(100,)), "action_units"),
    (dict(action_units=(4.0,)), "action_units"),
])
def test_bad_samples_refused(override, match):
    with pytest.raises(SampleError, match=match):
        feature_spec.encode_example(random_sample(0, **override))


@settings(max_examples=25, deadline=None)
@given(steps=st.integers(1, 64), label=st.integers(0, 2), seed=st.integers(0, 10_000),
       ids=st.tuples(*[st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=12)] * 3),
       onset=st.integers(-1, 1000))
def test_round_trip_property(steps, label, seed, ids, onset):
    rng = np.random.default_rng(seed)
    s = random_sample(seed % 50, steps=steps, label=label, sample_id=ids[0], subject=ids[1], clip=ids[2],
                      flow_seq=rng.uniform(-1e6, 1e6, (steps, 128)).astype(np.float32),
                      onset=onset, apex=-1, offset=-1)
    _assert_same(s, feature_spec.decode_example_np(feature_spec.encode_example(s)))
