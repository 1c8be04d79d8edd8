"""The paper's models are timm models by name; geometry by keyword."""
import timm
import torch

from structinit.models import create, patch_pos_embed  # registers the paper's models with timm


def test_paper_models_are_registered_with_timm():
    tiny = timm.create_model("vit_tiny_patch2_32")
    small = timm.create_model("vit_small_patch2_32", num_classes=100)
    assert (tiny.embed_dim, len(tiny.blocks), tiny.blocks[0].attn.num_heads) == (192, 12, 3)
    assert (small.embed_dim, small.blocks[0].attn.num_heads, small.num_classes) == (384, 6, 100)
    assert tuple(tiny.patch_embed.grid_size) == (16, 16)
    assert tiny.cls_token is None and tiny.global_pool == "avg" and "pos_embed" in tiny._buffers


def test_geometry_overrides_and_class_token_variant():
    model = create("vit_tiny_patch2_32", img_size=8, patch_size=2, embed_dim=64, depth=2, num_heads=4,
                   pos_embed="learn", global_pool="token", num_classes=10)
    assert model.cls_token is not None and model.pos_embed.shape == (1, 17, 64)
    assert patch_pos_embed(model).shape == (16, 64)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_sincos_table_is_the_timm_2d_embedding():
    model = create("vit_tiny_patch2_32", img_size=8, depth=1)
    expected = timm.layers.build_sincos2d_pos_embed([4, 4], dim=192)
    torch.testing.assert_close(model.pos_embed[0], expected)
