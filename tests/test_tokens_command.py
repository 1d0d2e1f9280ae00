"""``rleseg tokens stats`` and the planning statistics behind it."""

from __future__ import annotations

import argparse
import doctest
import re

import numpy as np
import pytest

import rleseg.tokenizers.grammar
import rleseg.tokenizers.image
import rleseg.tokenizers.panoptic
import rleseg.tokenizers.registry
import rleseg.tokenizers.runs
import rleseg.tokenizers.stats
import rleseg.tokenizers.video
from rleseg import create_tokenizer
from rleseg.cli import main
from rleseg.commands import tokens as tokens_command
from rleseg.tokenizers.stats import DiceAccumulator, format_table, synthetic_masks, token_stats


def table(out: str) -> dict[str, list[str]]:
    """A printed stats table as {row label: [cell per tokenizer]} (cells are separated by 2+ spaces)."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.strip().splitlines()]
    return {"": rows[0]} | {row[0]: row[1:] for row in rows[1:]}


@pytest.mark.parametrize(
    "module",
    [
        rleseg.tokenizers.grammar,
        rleseg.tokenizers.image,
        rleseg.tokenizers.panoptic,
        rleseg.tokenizers.registry,
        rleseg.tokenizers.runs,
        rleseg.tokenizers.stats,
        rleseg.tokenizers.video,
    ],
)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_stats_on_known_masks():
    masks = [np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8), np.eye(8, dtype=np.uint8) * 2]
    tok = create_tokenizer("mc", num_classes=3, shape=(8, 8), max_seq_len=2 + 3 * 8)
    s = token_stats(masks, tok)
    assert s.masks == 3 and s.vocab_size == tok.vocab_size and s.tokens_per_run == 3
    assert s.runs == (8.0, 8.0, 8)  # 0, 8 and 8 runs
    assert s.tokens[2] == 2 + 3 * 8
    assert s.truncated_fraction == 0.0
    assert s.dice_ceiling == 1.0 and s.class_dice == {1: 1.0, 2: 1.0}


def test_dice_ceiling_drops_with_subsampling_and_truncation():
    masks = list(synthetic_masks(6, (64, 64), 3, seed=3))
    full = token_stats(masks, create_tokenizer("lac", num_classes=3, shape=(64, 64)))
    coarse = token_stats(masks, create_tokenizer("lac", num_classes=3, shape=(64, 64), subsample=8))
    assert full.dice_ceiling == 1.0 and 0.5 < coarse.dice_ceiling < 1.0
    short = token_stats(masks, create_tokenizer("lac", num_classes=3, shape=(64, 64), max_seq_len=40))
    assert short.truncated_fraction == 1.0 and short.dice_truncated < short.dice_ceiling == 1.0


def test_dice_skips_classes_absent_from_both():
    acc = DiceAccumulator(3)
    acc.update(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))  # class 2 absent: not counted
    acc.update(np.array([2, 2, 0, 0]), np.array([2, 0, 0, 0]))  # class 1 absent here
    assert acc.per_class() == pytest.approx({1: 2 / 3, 2: 2 / 3})


def test_synthetic_masks_are_seeded_blobs():
    a = list(synthetic_masks(3, (40, 50), 4, seed=7))
    b = list(synthetic_masks(3, (40, 50), 4, seed=7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == (40, 50) and a[0].dtype == np.uint8 and a[0].max() <= 3
    assert 0.3 < np.mean(a[0] > 0) < 0.7  # coverage 0.5
    tok = create_tokenizer("mc", num_classes=4, shape=(40, 50))
    assert tok.num_runs(a[0]) < 0.1 * a[0].size  # blobby, not noise
    clip = next(synthetic_masks(1, (3, 40, 50), 3, seed=1))
    assert clip.shape == (3, 40, 50) and np.array_equal(clip[1][:, 1:], clip[0][:, :-1])  # drifts right
    pan = next(synthetic_masks(1, (40, 50), 3, kind="panoptic"))
    assert set(np.unique(pan % 1000)) <= {0, 1, 2, 3, 4} and pan.max() // 1000 <= 2


def test_format_table_side_by_side():
    masks = list(synthetic_masks(2, (16, 16), 3))
    stats = [token_stats(masks, create_tokenizer(n, num_classes=3, shape=(16, 16))) for n in ("lac", "gap")]
    table = format_table(stats)
    lines = table.splitlines()
    assert lines[0].split() == ["lac", "gap"]
    assert any(line.startswith("vocab size") for line in lines)
    assert "Dice ceiling" in table


def test_cli_synthetic(capsys):
    argv = ["tokens", "stats", "--synthetic", "3", "--shape", "32", "32", "--subsample", "2"]
    argv += ["-t", "lac", "-t", "rowwise", "-t", "tac", "-t", "panoptic", "--max-seq-len", "64"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["lac", "rowwise", "tac", "panoptic"]
    assert "truncated" in out and "runs p50/p95/max" in out


def test_cli_masks_from_npy_npz_and_png(tmp_path, capsys):
    from PIL import Image

    masks = np.stack(list(synthetic_masks(4, (24, 24), 3, seed=2)))
    np.save(tmp_path / "m.npy", masks)
    np.savez(tmp_path / "m.npz", a=masks[:2], b=masks[2])
    (tmp_path / "png").mkdir()
    for i, m in enumerate(masks):
        Image.fromarray(m).save(tmp_path / "png" / f"{i}.png")
    tables = []
    for path in ("m.npy", "m.npz", "png"):
        assert main(["tokens", "stats", "--masks", str(tmp_path / path), "-t", "mc"]) == 0
        tables.append(capsys.readouterr().out)
    assert table(tables[0])["masks"] == ["4"]
    assert tables[0] == tables[2]
    assert table(tables[1])["masks"] == ["3"]  # the .npz holds 2 masks and 1 mask


def test_cli_errors_are_readable(tmp_path, capsys):
    assert main(["tokens", "stats", "--masks", str(tmp_path / "missing.npy")]) == 2
    assert "no such file" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.full((2, 8, 8), 5, np.uint8))
    assert main(["tokens", "stats", "--masks", str(tmp_path / "bad.npy"), "--num-classes", "3"]) == 2
    assert "class id 5 >= num_classes 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tokens", "stats", "--synthetic", "2", "--masks", "x.npy"])  # one source at a time


def test_pluggable_mask_source(capsys):
    def two_squares(args, kind, shape):
        m = np.zeros((16, 16), np.uint8)
        m[2:6, 2:6] = 1
        return [m, m * 2]

    args = argparse.Namespace(
        tokenizer=["mc"],
        num_classes=3,
        subsample=1,
        subsample_method="nearest",
        max_run=None,
        max_seq_len=None,
        truncation="tail",
        shape=(16, 16),
        frames=2,
    )
    assert tokens_command.run(args, source=two_squares) == 0
    out = capsys.readouterr().out
    assert table(out)["runs p50/p95/max"] == ["4 / 4 / 4"]


def test_cli_image_size_and_crop_match_resized_and_cropped_masks(tmp_path, capsys):
    masks = np.stack(list(synthetic_masks(3, (24, 24), 3, seed=4)))
    np.save(tmp_path / "m.npy", masks)
    np.save(tmp_path / "big.npy", masks.repeat(2, axis=1).repeat(2, axis=2))  # nearest 2x = repeat
    np.save(tmp_path / "mid.npy", masks[:, 4:20, 4:20])
    base = ["tokens", "stats", "-t", "mc", "-t", "lac", "--subsample", "2"]
    outs = {}
    for key, extra in {
        "resized": ["--masks", str(tmp_path / "m.npy"), "--image-size", "48", "48"],
        "big": ["--masks", str(tmp_path / "big.npy")],
        "cropped": ["--masks", str(tmp_path / "m.npy"), "--crop", "16", "16"],
        "mid": ["--masks", str(tmp_path / "mid.npy")],
        "both": ["--masks", str(tmp_path / "m.npy"), "--image-size", "48", "48", "--crop", "16", "16"],
        "synthetic": ["--synthetic", "2", "--shape", "40", "40", "--image-size", "20", "20"],
    }.items():
        assert main(base + extra) == 0
        outs[key] = capsys.readouterr().out
    assert outs["resized"] == outs["big"] and outs["cropped"] == outs["mid"]
    assert table(outs["both"])["masks"] == ["3", "3"] and table(outs["synthetic"])["masks"] == ["2", "2"]
    assert main(base + ["--masks", str(tmp_path / "m.npy"), "--crop", "30", "30"]) == 2
    assert "--crop 30 30 is larger than mask 0 (24x24); add --image-size" in capsys.readouterr().err


def test_cli_masks_of_different_sizes_need_image_size(tmp_path, capsys):
    from PIL import Image

    for name, size in (("a", 24), ("b", 32)):
        Image.fromarray(next(synthetic_masks(1, (size, size), 3, seed=1))).save(tmp_path / f"{name}.png")
    assert main(["tokens", "stats", "--masks", str(tmp_path)]) == 2
    assert "mask 1 is 32x32, mask 0 is 24x24; pass --image-size H W" in capsys.readouterr().err
    assert main(["tokens", "stats", "--masks", str(tmp_path), "--image-size", "32", "32"]) == 0
    assert table(capsys.readouterr().out)["masks"] == ["2"]


@pytest.mark.parametrize(
    ("export", "folder"), [("voc_export", "SegmentationClass"), ("labelme_export", "SegmentationClass")]
)
def test_cli_reads_export_masks_with_void(export, folder, request, capsys):
    root = request.getfixturevalue(export)
    argv = ["tokens", "stats", "--masks", str(root / folder), "--num-classes", "4", "-t", "lac"]
    assert main(argv) == 0  # VOC's palette PNGs with 255, labelme's .npy with -1
    rows = table(capsys.readouterr().out)
    assert rows["Dice ceiling"] == ["1.0000"]  # void is encoded as background and not scored
    assert 0.0 < float(rows["void pixels"][0].rstrip("%")) < 50.0
    assert main([*argv, "--image-size", "32", "32", "--subsample", "2"]) == 0
    assert float(table(capsys.readouterr().out)["Dice ceiling"][0]) < 1.0
    if export == "voc_export":
        assert main([*argv, "--ignore-label", "none"]) == 2
        assert "class id 255 >= num_classes 4" in capsys.readouterr().err
    assert main([*argv, "--ignore-label", "2"]) == 2
    assert "--ignore-label 2 is a class id of --num-classes 4" in capsys.readouterr().err


def test_token_stats_leave_void_out_of_the_ceiling():
    mask = np.zeros((8, 8), np.int32)
    mask[2:6, 2:6] = 1
    mask[0, :] = 255
    tok = create_tokenizer("mc", num_classes=2, shape=(8, 8))
    s = token_stats([mask], tok, ignore_index=255)
    assert s.dice_ceiling == 1.0 and s.void_fraction == 8 / 64 and s.runs[0] == 4  # void row: background
    with pytest.raises(ValueError, match="255"):
        token_stats([mask], tok)  # without ignore_index 255 is an unknown class
