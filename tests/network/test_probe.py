"""The mixing probe reports what each RWKV layer does: exact values for the mixers whose answer is known."""
import pytest
import torch

from nnunet_sss.network import RWKVSSSUNet
from nnunet_sss.network.probe import layer_facts

from network_cases import tiny_kwargs


def _facts(n_dims=2, size=None, **options):
    torch.manual_seed(0)
    network = RWKVSSSUNet(**tiny_kwargs(n_dims, **options))
    size = size or ((20, 12) if n_dims == 2 else (12, 8, 8))
    return network, layer_facts(network, torch.randn(2, 1, *size))


@pytest.mark.parametrize("mixer, spread", [("identity", 1.0), ("mean", 0.0)])
def test_spread_of_the_mixers_with_a_known_answer(mixer, spread):
    _, facts = _facts(wkv_mixer=mixer)
    assert len(facts) == 6 and all(f.mixer == mixer and f.local_channels is None for f in facts)
    for f in facts:
        assert f.spread == pytest.approx(spread, abs=1e-9)


def test_the_wkv_lies_between_and_token_decay_makes_channels_local():
    _, window = _facts(n_dims=3)
    _, token = _facts(n_dims=3, wkv_decay="token", patch_size=(12, 8, 8))
    for a, b in zip(window, token):
        assert 0 < a.spread < 1 and 0 < b.spread < 1
        assert a.local_channels < b.local_channels and b.local_channels > 0.2
    assert sum(b.spread for b in token) > 2 * sum(a.spread for a in window)


def test_layer_scale_shrinks_both_branches_by_its_value():
    _, plain = _facts()
    _, scaled = _facts(layer_scale=1e-2)
    for a, b in zip(plain, scaled):
        assert 0.1 < a.spatial_branch < 2 and 0.01 < a.channel_branch < 2
        assert b.spatial_branch == pytest.approx(1e-2 * a.spatial_branch, rel=0.3)
        assert b.channel_branch == pytest.approx(1e-2 * a.channel_branch, rel=0.3)


def test_coinciding_windows_are_flagged_and_the_network_is_left_as_it_was():
    network, facts = _facts(size=(16, 8))  # the last stage's map (4x2) is inside both windows (8 and 4)
    flagged = [(f.name.split(".blocks")[0], f.window) for f in facts if f.same_window]
    assert flagged == [("encoder.stages.2.1", (4, 2))]
    assert [f.window for f in facts if f.name.startswith("encoder.stages.2")] == [(4, 2), (4, 2)]
    assert network.training and all("mix_tokens" not in vars(m) for m in network.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in network.modules())


def test_a_network_without_rwkv_layers_is_refused():
    with pytest.raises(ValueError, match="no RWKV layer"):
        layer_facts(RWKVSSSUNet(**tiny_kwargs(2, use_rwkv=False)), torch.randn(1, 1, 16, 16))
