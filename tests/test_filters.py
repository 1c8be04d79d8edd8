"""ConvMixer's spatial filters (structinit/inits/filters.py): frozen impulse filters cover
every tap, distinct filters are shared, box filters, and what the filter inits refuse."""

import pytest
import torch

from structinit.inits import InitConfig, apply_init
from structinit.models import create, spatial_filters, vit


def convmixer(**kw):
    return create("convmixer_64_4_p1", **{"embed_dim": 32, "depth": 2, "in_chans": 1, "num_classes": 10, **kw})



def test_frozen_impulse_filters_cover_every_tap_and_are_frozen():
    model = convmixer(kernel_size=5)
    apply_init(model, InitConfig(name="frozen_impulse"), seed=0)
    for conv in spatial_filters(model):
        w = conv.weight.squeeze(1).flatten(1)  # (channels, 25)
        assert not conv.weight.requires_grad and conv.bias.requires_grad
        assert torch.equal(w.sum(1), torch.ones(32)) and torch.equal(w.max(1).values, torch.ones(32))  # one-hot
        assert set(w.argmax(1).tolist()) == set(range(25))  # 32 channels >= 25 taps: all covered



def test_distinct_filters_are_shared_across_channels():
    model = convmixer()
    apply_init(model, InitConfig(name="frozen_random", distinct_filters=4), seed=0)
    w = spatial_filters(model)[0].weight
    assert len({tuple(f.flatten().tolist()) for f in w}) == 4
    torch.testing.assert_close(w[1], w[5])
    assert w.abs().max() <= 1 / 3  # U(+-1/f)



def test_box_filters_are_one_direction_and_learned_filters_train():
    model = convmixer()
    apply_init(model, InitConfig(name="frozen_box"), seed=0)
    assert torch.allclose(spatial_filters(model)[0].weight, torch.full((32, 1, 3, 3), 1 / 9))
    apply_init(model, InitConfig(name="learned"), seed=0)  # the same model: filters trainable again
    assert all(conv.weight.requires_grad for conv in spatial_filters(model))
    from timm.optim import create_optimizer_v2

    apply_init(model, InitConfig(name="frozen_box"), seed=0)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(conv.weight) not in trained for conv in spatial_filters(model))  # frozen: not optimised



def test_filter_inits_refuse_a_vit_and_bad_sharing():
    with pytest.raises(ValueError, match=r"model='VisionTransformer' is not allowed: expected a timm ConvMixer"):
        apply_init(vit(img_size=8, patch_size=2, embed_dim=16, depth=1, num_heads=2), InitConfig(name="learned"))
    with pytest.raises(ValueError, match=r"distinct_filters=40 is not allowed: expected None or an integer in "
                                         r"\[1, embed_dim=32\]"):
        apply_init(convmixer(), InitConfig(name="frozen_random", distinct_filters=40))

