"""Each real loader reads small files written in its dataset's on-disk format; fractions are
stratified and seeded; missing or corrupt data gives a clear error."""
import random

import numpy as np
import pytest
import torch

from structinit import data
from structinit.recipes import recipe
from tests.fake_datasets import CLASSES, WRITERS

MD5_CHECKED = {"cifar10", "cifar100", "svhn", "stl10", "flowers102"}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_loader_reads_the_standard_on_disk_format(name, tmp_path):
    (x_train, y_train), (x_test, y_test) = WRITERS[name](tmp_path, np.random.default_rng(0))
    train, test = data.load_splits(name, str(tmp_path), verify=False)
    assert len(train) == len(y_train) and len(test) == len(y_test)
    assert data.labels_of(train) == y_train.tolist() and data.labels_of(test) == y_test.tolist()
    for i in (0, len(test) - 1):
        img, label = test[i]
        assert label == y_test[i]
        assert np.array_equal(np.asarray(img), x_test[i]), "pixels differ from the written file"


@pytest.mark.parametrize("name", sorted(MD5_CHECKED))
def test_generated_files_fail_the_official_md5_with_a_clear_hint(name, tmp_path):
    WRITERS[name](tmp_path, np.random.default_rng(0))
    with pytest.raises(ValueError, match=rf"dataset='{name}' .*missing or corrupt.*expected .*--no-verify"):
        data.load_splits(name, str(tmp_path), verify=True)


def test_missing_root_names_the_expected_layout(tmp_path):
    with pytest.raises(ValueError, match=r"data_root=.*cifar-10-batches-py"):
        data.load_splits("cifar10", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"data_root=None .*a directory holding"):
        data.load_splits("svhn", None)


def test_corrupt_file_is_a_clear_error(tmp_path):
    WRITERS["cifar10"](tmp_path, np.random.default_rng(0))
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ValueError, match=r"dataset='cifar10' .*missing or corrupt"):
        data.load_splits("cifar10", str(tmp_path), verify=False)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"dataset='imagenet21k' is not allowed: expected one of"):
        data.load_splits("imagenet21k", None)


def test_digits_is_real_offline_and_split_in_fixed_halves():
    train, test = data.load_splits("digits", None)
    assert len(train) + len(test) == 1797 and abs(len(train) - len(test)) <= 1
    assert not set(train.indices) & set(test.indices)


def test_fractions_are_stratified_and_seeded():
    labels = [i % 10 for i in range(1000)]
    tr, val = data.split_indices(labels, fraction=0.1, val_fraction=0.2, seed=3)
    assert len(val) == 200 and len(tr) == 80 and not set(tr) & set(val)
    assert np.bincount([labels[i] for i in tr]).tolist() == [8] * 10  # every class in proportion
    assert data.split_indices(labels, 0.1, 0.2, 3) == (tr, val)
    assert data.split_indices(labels, 0.1, 0.2, 4)[0] != tr


def test_validation_cap_is_a_stratified_seeded_subset_of_the_held_out_share():
    labels = [i % 10 for i in range(2000)]
    tr, full = data.split_indices(labels, fraction=0.5, val_fraction=0.25, seed=3)
    tr_cap, val = data.split_indices(labels, fraction=0.5, val_fraction=0.25, seed=3, val_size=100)
    assert tr_cap == tr and len(full) == 500 and len(val) == 100  # the cap leaves the training share alone
    assert set(val) <= set(full)
    assert np.bincount([labels[i] for i in val]).tolist() == [10] * 10  # every class in proportion
    assert data.split_indices(labels, 0.5, 0.25, 3, val_size=100)[1] == val  # same seed, same subset
    assert data.split_indices(labels, 0.5, 0.25, 4, val_size=100)[1] != val
    assert data.split_indices(labels, 0.5, 0.25, 3, val_size=10_000)[1] == full  # a cap above the share: all


@pytest.mark.slow
def test_the_papers_randaugment_never_asks_pillow_for_zero_bits(tmp_path):
    """timm's PosterizeIncreasing at magnitude 10 is 0 bits, which Pillow 13 refuses: the recipes
    cap the magnitude at 9 (about 1 image in 1,000 crashed a v1_small run before)."""
    WRITERS["cifar10"](tmp_path, np.random.default_rng(2))
    d = data.build("cifar10", str(tmp_path), img_size=None, fraction=1.0, val_fraction=0.0, seed=0,
                   recipe=recipe("v1_small"), verify=False)
    random.seed(0)  # timm's RandAugment draws from Python's RNG
    for _ in range(20):  # 20 x 150 = 3,000 augmented images
        for i in range(len(d.train)):
            d.train[i]


def test_build_applies_timm_transforms_and_dataset_normalisation(tmp_path):
    WRITERS["cifar10"](tmp_path, np.random.default_rng(1))
    r = recipe("v1_small", batch_size=8)
    d = data.build("cifar10", str(tmp_path), img_size=None, fraction=1.0, val_fraction=0.2, seed=0, recipe=r,
                   verify=False)
    assert d.num_classes == 10
    x, y = d.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < CLASSES
    assert len(d.train) == 120 and len(d.val) == 30 and len(d.test) == 30
    raw, _ = data.load_splits("cifar10", str(tmp_path), verify=False)[1][0]
    expected = (torch.tensor(np.asarray(raw)).permute(2, 0, 1) / 255 - torch.tensor(data.DATASETS["cifar10"].mean)[:, None, None]) \
        / torch.tensor(data.DATASETS["cifar10"].std)[:, None, None]
    torch.testing.assert_close(d.test[0][0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_held_out_images_are_validation_images_never_test_ones(tmp_path):
    """`held_out` (what epoch-0 measures, inspect-init and rank read): a fixed seeded draw of
    validation images, none of them a test image or a training image (so none in an init's batch);
    without a validation split, training images from the tail of the permutation whose head
    `init_images` draws. Compared pixel for pixel (the generated images are random: no duplicates)."""
    WRITERS["cifar10"](tmp_path, np.random.default_rng(3))

    def build(val_fraction):
        return data.build("cifar10", str(tmp_path), img_size=None, fraction=1.0, val_fraction=val_fraction, seed=0,
                          recipe=recipe("v1_small"), verify=False)

    def rows(ds):
        return torch.stack([ds[i][0] for i in range(len(ds))]).flatten(1)

    def found(x, pool):  # which images of x are in pool
        return [bool((pool == image.flatten()).all(1).any()) for image in x]

    d = build(0.2)
    x = data.held_out(d, 16, seed=0)
    assert x.shape == (16, 3, 32, 32) and all(found(x, rows(d.val)))
    assert not any(found(x, rows(d.test))) and not any(found(x, data.init_images(d, len(d.train), 0).flatten(1)))
    assert torch.equal(x, data.held_out(d, 16, seed=0)) and not torch.equal(x, data.held_out(d, 16, seed=1))
    assert len(data.held_out(d, 64, seed=0)) == len(d.val) == 30  # at most the split

    d = build(0.0)
    x = data.held_out(d, 16, seed=0)
    train = rows(data.Transformed(d.train.base, d.train.indices, d.val.transform))  # no augmentation
    assert x.shape == (16, 3, 32, 32) and all(found(x, train)) and not any(found(x, rows(d.test)))
    assert not any(found(x, data.init_images(d, len(d.train) - 16, 0).flatten(1)))  # disjoint from an init's batch
