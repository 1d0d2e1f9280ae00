"""Data sources: composites, MRI, nuclei, registry, caches, missing-source errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from rleseg.data import DataError, SourceMissingError, create_source, list_sources, summarize
from rleseg.data.cache import load_npz, resolve_data_dir, save_npz
from rleseg.data.sources.composites import PRESETS, fashion_object_masks, read_idx

# ----------------------------------------------------------------------------- registry and cache


def test_registry_lists_sources_and_rejects_unknown_names_and_knobs() -> None:
    assert list_sources() == ["composites", "folder", "mri", "nuclei"]
    with pytest.raises(DataError, match=r"unknown source 'coco'.*composites"):
        create_source("coco")
    with pytest.raises(DataError, match=r"bad arguments for source 'composites'.*canvas"):
        create_source("composites", canvass=64)


def test_void_is_none_by_default_and_left_out_of_pixel_counts() -> None:
    from rleseg.data.sources.base import SourceSplit, class_pixel_counts

    assert create_source("composites").ignore_index is None and SourceSplit.ignore_index is None
    semantic = np.array([[0, 1, 255], [2, 255, 1]])
    assert class_pixel_counts(semantic, 3, ignore_index=255).tolist() == [1, 2, 1]
    with pytest.raises(DataError, match=r"class id 255 outside 0\.\.2"):
        class_pixel_counts(semantic, 3)


def test_data_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RLESEG_DATA_DIR", raising=False)
    assert resolve_data_dir() == Path("data_cache")
    monkeypatch.setenv("RLESEG_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir("/elsewhere") == Path("/elsewhere")


def test_damaged_cache_file_names_itself(tmp_path: Path) -> None:
    path = save_npz(tmp_path / "a.npz", x=np.arange(5))
    assert load_npz(path)["x"].tolist() == [0, 1, 2, 3, 4]
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match=r"a\.npz.*prepare again"):
        load_npz(path)


# ----------------------------------------------------------------------------- Fashion-MNIST composites


def test_idx_reader_reads_and_rejects_truncated_files(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    good = tmp_path / "x-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(header + images.tobytes()))
    assert (read_idx(good) == images).all()
    bad = tmp_path / "short-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(header + images.tobytes()[:-5]))
    with pytest.raises(DataError, match=r"short-idx3-ubyte\.gz is truncated"):
        read_idx(bad)


def test_object_masks_threshold_close_and_fill_per_slice() -> None:
    imgs = np.zeros((3, 12, 12), np.uint8)
    imgs[0, 2:10, 2:10] = 200
    imgs[0, 5, 5] = 0  # a hole: filled
    imgs[1, 2:10, 2:10] = 8  # below the threshold: empty
    imgs[2, 0:6, 0:12] = 50  # touches the border: stays as is, does not leak into slice 1
    masks = fashion_object_masks(imgs)
    assert masks[0, 5, 5] and masks[0].sum() == 64
    assert not masks[1].any()
    assert masks[2].sum() == 72


def test_missing_fashion_mnist_names_the_install_command(tmp_path: Path) -> None:
    src = create_source("composites", data_dir=str(tmp_path), raw_dir=str(tmp_path / "nothing"))
    with pytest.raises(SourceMissingError, match=r"apt-get install -y dataset-fashion-mnist"):
        src.prepare()


@pytest.fixture(scope="module")
def composites(data_fashion_dir: Path):
    return create_source(
        "composites",
        data_dir=str(data_fashion_dir),
        canvas=48,
        num_train=20,
        num_val=8,
        num_test=4,
        clip_len=6,
    )


def test_composite_labels_are_exact_and_instances_persist(composites) -> None:
    clip = composites.split("train", video=True).load(3)
    assert clip.image.shape == (6, 48, 48, 3) and clip.image.dtype == np.uint8
    assert (clip.panoptic // 1000 == clip.semantic).all()
    # every instance keeps one class through the clip
    for pid in np.unique(clip.panoptic[clip.panoptic > 0]):
        assert len(np.unique(clip.semantic[clip.panoptic == pid])) == 1
    # objects move: the label maps are not all the same frame
    assert any((clip.panoptic[t] != clip.panoptic[0]).any() for t in range(1, 6))
    # frame 0 of a clip is the image-split scene; any frame range renders the same frames
    assert (composites.split("train").load(3).panoptic[0] == clip.panoptic[0]).all()
    assert (composites.split("train", video=True).load(3, 2, 5).image == clip.image[2:5]).all()


def test_composites_are_deterministic_from_the_seed(composites, data_fashion_dir: Path) -> None:
    a = composites.split("val").load(1)
    b = create_source("composites", data_dir=str(data_fashion_dir), canvas=48, num_val=8).split("val").load(1)
    c = (
        create_source("composites", data_dir=str(data_fashion_dir), canvas=48, num_val=8, seed=1)
        .split("val")
        .load(1)
    )
    assert (a.image == b.image).all() and (a.panoptic == b.panoptic).all()
    assert not (a.image == c.image).all()


def test_composite_renders_are_cached_read_only_and_bounded(composites, monkeypatch) -> None:
    from rleseg.data.sources import composites as module

    split = composites.split("train")
    first = split.load(2)
    assert split.load(2) is first  # the second load comes from memory
    fresh = composites.render("train", 2)
    assert (first.image == fresh.image).all() and (first.panoptic == fresh.panoptic).all()
    with pytest.raises(ValueError, match="read-only"):
        first.semantic[0, 0, 0] = 1  # a cached scene cannot be changed by whoever loaded it
    monkeypatch.setattr(module, "RENDER_CACHE_BYTES", 0)  # over the limit: rendered every time
    uncached = composites.split("train")
    assert uncached.load(2) is not uncached.load(2)


def test_validation_objects_come_from_t10k_only(composites) -> None:
    images, _, _ = composites._bank("val")
    assert len(images) == 10_000 and len(composites._bank("train")[0]) == 60_000
    assert composites._bank("test")[0] is images


def test_composite_presets_and_stuff_labels(data_fashion_dir: Path) -> None:
    src = create_source(
        "composites", data_dir=str(data_fashion_dir), preset="fashion10", stuff_labels=True, canvas=32
    )
    assert src.num_classes == 14 and src.thing_classes == list(range(1, 11))
    clip = src.split("train").load(0)
    stuff = clip.semantic[clip.semantic > 10]
    assert stuff.size and (clip.panoptic[clip.semantic > 10] % 1000 == 0).all()  # stuff has instance 0
    assert PRESETS["fashion3"][1] == (1, 2, 1, 2, 1, 3, 1, 3, 3, 3)
    # a grouped preset relabels the very same scenes: its labels are the ten classes mapped through it
    fine = create_source("composites", data_dir=str(data_fashion_dir), preset="fashion10", canvas=32)
    coarse = create_source("composites", data_dir=str(data_fashion_dir), preset="apparel3", canvas=32)
    assert coarse.class_names == ["background", "clothing", "footwear", "bag"]
    lut = np.array([0, *PRESETS["apparel3"][1]])
    for i in range(3):
        a, b = fine.split("val").load(i), coarse.split("val").load(i)
        assert (a.image == b.image).all() and (lut[a.semantic] == b.semantic).all()
    flat = (
        create_source("composites", data_dir=str(data_fashion_dir), texture=False, canvas=32)
        .split("train")
        .load(0)
    )
    assert flat.image.shape == (1, 32, 32, 3)
    with pytest.raises(DataError, match="unknown composites preset"):
        create_source("composites", preset="fashion5")


# ----------------------------------------------------------------------------- MRI


def test_missing_mri_names_the_install_command(tmp_path: Path) -> None:
    src = create_source("mri", data_dir=str(tmp_path), raw_dir=str(tmp_path))
    with pytest.raises(SourceMissingError, match=r"apt-get install -y mricron-data"):
        _ = src.class_names


@pytest.mark.parametrize(("grouping", "n"), [("aal116", 117), ("aal62", 63), ("lobes", 9)])
def test_mri_groupings(data_mri_dir: Path, grouping: str, n: int) -> None:
    src = create_source("mri", data_dir=str(data_mri_dir), grouping=grouping)
    assert src.num_classes == n and src.class_names[0] == "background"
    clip = src.split("val").load(10)
    assert clip.image.shape == (1, 224, 224, 3) and clip.semantic.max() < n
    assert (clip.panoptic // 1000 == clip.semantic).all()


def test_mri_hemispheres_are_instances_and_slabs_have_a_gap(data_mri_dir: Path) -> None:
    src = create_source(
        "mri", data_dir=str(data_mri_dir), grouping="aal62", split="slab", split_at=80, gap=10
    )
    train, val = src.slices("train"), src.slices("val")
    assert train.max() < 80 and val.min() >= 90
    clip = src.split("val", video=True).load(0, 0, 4)
    assert clip.semantic.shape == (4, 224, 224)
    inst = clip.panoptic % 1000
    cls = int(np.bincount(clip.semantic[inst == 2].ravel()).argmax())  # a right-hemisphere region ...
    assert {1, 2} <= set(np.unique(inst[clip.semantic == cls]).tolist())  # ... whose left half is instance 1


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_mri_interleaved_split_keeps_every_lobe_on_both_sides(data_mri_dir: Path, axis: str) -> None:
    from rleseg.data.sources.mri import AXES

    src = create_source("mri", data_dir=str(data_mri_dir), grouping="lobes", axis=axis)
    assert (src.split_kind, src.slab, src.val_slab, src.gap) == ("interleaved", 8, 8, 4)  # the default
    train, val = src.slices("train"), src.slices("val")
    assert (src.slices("test") == val).all() and not set(train.tolist()) & set(val.tolist())
    # no training slice within `gap` slices of a validation slice
    assert np.abs(train[:, None] - val[None, :]).min() > src.gap
    # every class present along the axis appears in both splits (the lobes slab split loses the cerebellum)
    data = load_npz(src.cache_file)
    semantic = src._grouping()[1][data["atlas"]]
    other = tuple(a for a in range(3) if a != AXES[axis])
    present = np.stack([(semantic == c).any(axis=other) for c in range(1, src.num_classes)])  # C x slices
    assert present.any(axis=1).all()  # all 8 lobes are in the volume
    assert present[:, train].any(axis=1).all(), "a class is missing from train"
    assert present[:, val].any(axis=1).all(), "a class is missing from val"
    # the same through the loaded images, and the clips are one per slab of consecutive slices
    seen = [set(), set()]
    for k, name in enumerate(("train", "val")):
        split = src.split(name)
        for i in range(len(split)):
            seen[k].update(np.unique(split.load(i).semantic).tolist())
    assert seen[0] == seen[1] == set(range(src.num_classes))
    clips = src.split("train", video=True)
    assert len(clips) > 1 and all(1 <= clips.num_frames(i) <= src.slab for i in range(len(clips)))
    assert sum(clips.num_frames(i) for i in range(len(clips))) == len(train)
    assert (np.diff(src.slices("train")[: clips.num_frames(0)]) == 1).all()


def test_mri_split_options_are_checked(data_mri_dir: Path) -> None:
    slab = create_source("mri", data_dir=str(data_mri_dir), grouping="lobes", split="slab")
    assert slab.gap == 10 and slab.slices("val").min() - slab.slices("train").max() == 11
    custom = create_source("mri", data_dir=str(data_mri_dir), slab=4, val_slab=2, gap=2)
    train, val = custom.slices("train"), custom.slices("val")
    first = int(train[0])  # 4 training slices, 2 dropped, 2 validation slices, 2 dropped, ...
    assert train[:5].tolist() == [first, first + 1, first + 2, first + 3, first + 10]
    assert val[:3].tolist() == [first + 6, first + 7, first + 16]
    with pytest.raises(DataError, match="unknown MRI split"):
        create_source("mri", split="halves")
    with pytest.raises(DataError, match="split_at applies to split='slab'"):
        create_source("mri", split_at=80)


# ----------------------------------------------------------------------------- nuclei


def test_missing_nuclei_wheel_names_the_pip_command(tmp_path: Path) -> None:
    src = create_source("nuclei", data_dir=str(tmp_path), download=False)
    with pytest.raises(SourceMissingError, match=r"pip download --no-deps stardist==0\.9\.2"):
        src.prepare()


def test_nuclei_tiles_hold_out_a_quadrant(tmp_path: Path, data_fake_wheel: Path) -> None:
    src = create_source("nuclei", data_dir=str(tmp_path), wheel=str(data_fake_wheel), tile=64, stride=32)
    src.prepare()
    train, val = src.origins("train"), src.origins("val")
    assert len(val) == 16 and (val >= 256).all()  # bottom-right quadrant, non-overlapping 64 tiles
    assert not ((train[:, 0] + 64 > 256) & (train[:, 1] + 64 > 256)).any()
    clip = src.split("train").load(0)
    ids = np.unique(clip.panoptic)
    assert clip.image.shape == (1, 64, 64, 3) and ids[0] == 0 and (ids[1:] // 1000 == 1).all()
    assert (clip.semantic == (clip.panoptic > 0)).all()
    s = summarize(src)
    assert s["splits"]["val"]["sequences"] == 16 and 0 < s["splits"]["train"]["class_pixel_freq"][1] < 1


def test_corrupt_wheel_names_the_file(tmp_path: Path) -> None:
    wheel = tmp_path / "stardist-0.9.2-bad.whl"
    wheel.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"stardist-0\.9\.2-bad\.whl"):
        create_source("nuclei", data_dir=str(tmp_path), wheel=str(wheel)).prepare()
