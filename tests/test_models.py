"""Models: shapes and gradients over a backbone matrix, video fusion, causality, weights, fake tensors."""

from __future__ import annotations

import pytest
import timm
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from rleseg.models import (
    BackboneError,
    DenseSegmenter,
    ModelConfigError,
    Pix2Seq,
    create_backbone,
    create_feature_pyramid,
)
from rleseg.models.layers import STEP_ROWS, sincos_at, sincos_position_embedding, step_linear

BACKBONES = ["test_resnet", "test_efficientnet", "test_convnext"]
VOCAB, MAX_LEN = 40, 24


def tiny(**overrides) -> Pix2Seq:
    cfg = dict(
        backbone="test_resnet", feature_stride=8, d_model=32, encoder_layers=2, decoder_layers=2,
        num_heads=4, mlp_dim=64, dropout=0.0,
    )  # fmt: skip
    return Pix2Seq(VOCAB, MAX_LEN, **{**cfg, **overrides})


def images(batch: int = 2, frames: int = 1, size: int = 64) -> torch.Tensor:
    shape = (batch, frames, 3, size, size) if frames > 1 else (batch, 3, size, size)
    return torch.randn(*shape)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("kind", ["image", "sequential", "late"])
def test_pix2seq_forward_backward_shapes(backbone, kind):
    torch.manual_seed(0)
    frames = 1 if kind == "image" else 3
    model = tiny(backbone=backbone, frames=frames, fusion="late" if kind == "late" else "sequential")
    tokens = torch.randint(0, VOCAB, (2, 11))
    logits = model(images(frames=frames), tokens)
    assert logits.shape == (2, 11, VOCAB)
    logits.logsumexp(-1).mean().backward()
    # every trainable part receives a gradient: backbone, projection, encoder (and fusion), decoder
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert model.encoder.backbone.body.feature_info.reduction()[-1] == 8


@pytest.mark.parametrize("backbone", BACKBONES)
def test_dense_forward_backward_shapes(backbone):
    model = DenseSegmenter(num_classes=4, backbone=backbone, decoder_channels=16)
    out = model(images())
    assert out.shape == (2, 4, 64, 64)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    clip = model(images(frames=3))
    assert clip.shape == (2, 3, 4, 64, 64)
    # a clip is segmented frame by frame, with the same weights
    model.eval()
    x = images(frames=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, 1], model(x[:, 1]))


def test_memory_lengths_per_fusion():
    x = images(frames=3)
    assert tiny().encode(images()).shape == (2, 64, 32)  # 64/8 = 8x8 tokens
    assert tiny(frames=3, fusion="sequential").encode(x).shape == (2, 64, 32)
    assert tiny(frames=3, fusion="late").encode(x).shape == (2, 3 * 64, 32)


@pytest.mark.parametrize("fusion", ["sequential", "late"])
def test_video_memory_depends_on_every_frame_and_their_order(fusion):
    torch.manual_seed(0)
    model = tiny(frames=3, fusion=fusion).eval()
    x = images(frames=3)
    with torch.no_grad():
        base = model.encode(x)
        for t in (1, 2):
            changed = x.clone()
            changed[:, t] = torch.randn_like(changed[:, t])
            assert not torch.allclose(model.encode(changed), base, atol=1e-4), f"frame {t} ignored"
        swapped = x[:, [0, 2, 1]]
        assert not torch.allclose(model.encode(swapped), base, atol=1e-4), "frame order ignored"


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = tiny().eval()
    x, tokens = images(), torch.randint(0, VOCAB, (2, 12))
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(x, tokens), model(x, changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_output_embedding_is_the_input_embedding():
    model = tiny()
    assert model.decoder.embed.weight.data_ptr() in {p.data_ptr() for p in model.parameters()}
    with torch.no_grad():
        model.decoder.embed.weight[5].zero_()
        model.decoder.out_bias.zero_()
        logits = model.eval()(images(), torch.zeros(2, 3, dtype=torch.long))
    assert torch.all(logits[..., 5] == 0)  # a zeroed embedding row gives zero logits for that token


def test_image_model_accepts_single_frame_clips_and_rejects_wrong_shapes():
    model = tiny().eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x[:, None]), model.encode(x))
    with pytest.raises(ModelConfigError, match=r"\[B, C, H, W\]"):
        model.encode(images(frames=2))
    with pytest.raises(ModelConfigError, match="3 input channels"):
        model.encode(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ModelConfigError, match="max_seq_len=24"):
        model(x, torch.zeros(2, MAX_LEN + 1, dtype=torch.long))
    with pytest.raises(ModelConfigError, match=r"3-frame video model takes \[B, 3, C, H, W\]"):
        tiny(frames=3).encode(images(frames=2))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(d_model=30), "divisible by num_heads"),
        (dict(fusion="early"), "fusion must be one of"),
        (dict(encoder_layers=0), "encoder_layers"),
        (dict(frames=0), "frames must be"),
    ],
)
def test_bad_model_config_is_a_clear_error(overrides, message):
    with pytest.raises(ModelConfigError, match=message):
        tiny(**overrides)


def test_size_presets():
    model = Pix2Seq.from_preset("tiny", vocab_size=311, max_seq_len=512)
    # the CPU quickstart budget: the 1.7 M-parameter prototype trained to Dice 0.67 in 8 minutes
    assert 1.0e6 < model.num_parameters() < 1.8e6
    assert set(Pix2Seq.size_presets) == {"tiny", "small", "paper"}
    assert Pix2Seq.size_presets["paper"]["d_model"] == 256
    with pytest.raises(ModelConfigError, match="presets are"):
        Pix2Seq.from_preset("huge", vocab_size=10, max_seq_len=10)
    frozen = tiny()
    for p in frozen.backbone.parameters():
        p.requires_grad_(False)
    assert frozen.num_parameters(trainable_only=True) < frozen.num_parameters()


def test_generate_restores_training_mode():
    model = tiny().train()
    model.generate(images(), prompt=2, max_len=4)
    assert model.training
    model.eval().generate(images(), prompt=2, max_len=4)
    assert not model.training


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(BackboneError, match=r"unknown timm backbone 'resnet181'.*'resnet18'"):
        create_backbone("resnet181")


def test_unavailable_feature_stride_lists_the_available_ones():
    with pytest.raises(BackboneError, match=r"reductions \[2, 4, 8, 16, 32\]; feature_stride=12"):
        create_backbone("test_resnet", feature_stride=12)
    with pytest.raises(BackboneError, match=r"reductions \[4, 8, 16, 32\]"):
        create_feature_pyramid("test_convnext", max_stride=2)


@pytest.mark.parametrize(("stride", "channels"), [(4, 32), (8, 48), (16, 192)])
def test_backbone_stride_selects_the_stage_and_drops_deeper_ones(stride, channels):
    bb = create_backbone("test_resnet", feature_stride=stride)
    assert (bb.stride, bb.out_channels) == (stride, channels)
    assert bb(torch.zeros(1, 3, 64, 64)).shape == (1, channels, 64 // stride, 64 // stride)
    full = sum(p.numel() for p in timm.create_model("test_resnet", features_only=True).parameters())
    assert sum(p.numel() for p in bb.parameters()) < full


def test_deep_stride_adds_the_deeper_stages_at_the_feature_stride_resolution():
    torch.manual_seed(0)
    bb = create_backbone("test_resnet", feature_stride=8, deep_stride=32)
    assert (bb.stride, bb.out_channels, len(bb.lateral)) == (8, 48, 2)  # the 16 and 32 maps
    x = torch.randn(2, 3, 64, 64)
    out = bb(x)
    assert out.shape == (2, 48, 8, 8)
    shallow = bb.body(x)[0]
    assert not torch.allclose(out, shallow)  # the deeper maps contribute
    out.sum().backward()
    assert all(p.grad is not None for p in bb.lateral.parameters())
    for proj in bb.lateral:
        torch.nn.init.zeros_(proj.weight)
        torch.nn.init.zeros_(proj.bias)
    with torch.no_grad():
        assert torch.equal(bb(x), shallow)  # ... and only through their projections
    for bad in (8, 12):
        with pytest.raises(BackboneError, match=rf"deep_stride={bad} must be one of them and > feature"):
            create_backbone("test_resnet", feature_stride=8, deep_stride=bad)


def test_feature_pyramid_levels():
    fp = create_feature_pyramid("test_convnext", max_stride=16)
    assert fp.strides == [4, 8, 16]
    shapes = [tuple(f.shape) for f in fp(torch.zeros(1, 3, 64, 64))]
    assert shapes == [(1, c, 64 // s, 64 // s) for c, s in zip(fp.out_channels, fp.strides, strict=True)]


def test_weights_path_loads_a_full_model_state_dict(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("test_resnet")
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    bb = create_backbone("test_resnet", feature_stride=8, weights_path=path)
    report = bb.weights_report
    assert report.missing == [] and report.shape_mismatch == []
    assert any(k.startswith("fc.") for k in report.unexpected)  # the classifier is not part of the backbone
    torch.testing.assert_close(bb.body.conv1[0].weight, source.conv1[0].weight)
    torch.testing.assert_close(bb.body.layer2[0].conv1.weight, source.layer2[0].conv1.weight)


def test_weights_path_finds_the_backbone_inside_a_lightning_checkpoint_and_adapts_in_chans(tmp_path):
    torch.manual_seed(0)
    trained = tiny()
    path = tmp_path / "last.ckpt"
    state = {f"model.{k}": v for k, v in trained.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, path)
    grey = tiny(in_chans=1, weights_path=str(path))
    report = grey.backbone.weights_report
    assert report.prefix == "model.encoder.backbone.body."
    assert report.missing == []
    assert report.adapted == ["conv1.0.weight"]  # RGB stem summed into one channel (timm's adapt_input_conv)
    assert grey.backbone.body.conv1[0].weight.shape[1] == 1
    torch.testing.assert_close(
        grey.backbone.body.layer1[0].conv1.weight, trained.backbone.body.layer1[0].conv1.weight
    )


def test_weights_path_errors(tmp_path):
    with pytest.raises(BackboneError, match="is not a file"):
        create_backbone("test_resnet", weights_path=tmp_path / "missing.pth")
    path = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    with pytest.raises(BackboneError, match="no tensor in .* matches the backbone"):
        create_backbone("test_resnet", weights_path=path)
    with pytest.raises(BackboneError, match="not both"):
        create_backbone("test_resnet", pretrained=True, weights_path=path)


def test_sincos_positions_are_distinct_and_bounded():
    pos = sincos_position_embedding((3, 4, 5), 30)
    assert pos.shape == (60, 30)
    assert pos.abs().max() <= 1.0
    assert torch.cdist(pos, pos).add(torch.eye(60) * 10).min() > 1e-3
    with pytest.raises(ValueError, match="even dim"):
        sincos_position_embedding((2, 2), 7)


def test_sincos_at_grid_points_equals_the_grid_embedding():
    grid = sincos_position_embedding((3, 5), 16)
    coords = torch.tensor([[r, c] for r in range(3) for c in range(5)], dtype=torch.float32)
    torch.testing.assert_close(sincos_at(coords, 16), grid)
    # between grid points it lies between their embeddings (smooth in the coordinate)
    mid = sincos_at(torch.tensor([[1.0, 2.5]]), 16)[0]
    assert torch.dist(mid, grid[7]) < torch.dist(grid[8], grid[7]) and torch.dist(mid, grid[8]) > 0


def test_init_position_tokens_gives_neighbouring_places_neighbouring_embeddings():
    model = tiny()
    before = model.decoder.embed.weight.detach().clone()
    coords = torch.tensor([[r, c] for r in range(4) for c in range(4)], dtype=torch.float32)
    model.decoder.init_position_tokens(10, coords)
    after = model.decoder.embed.weight.detach()
    torch.testing.assert_close(after[:10], before[:10])  # other tokens untouched
    torch.testing.assert_close(after[26:], before[26:])
    starts = after[10:26]
    assert starts.std().item() == pytest.approx(0.02, rel=1e-3)  # the scale of the random init
    # cell (0,0): its right neighbour is closer than the far corner
    assert torch.dist(starts[0], starts[1]) < torch.dist(starts[0], starts[15])
    with pytest.raises(ValueError, match="exceed the vocabulary"):
        model.decoder.init_position_tokens(VOCAB - 3, coords)


def _fake_model_and_loss(kind: str) -> tuple[torch.nn.Module, torch.Tensor]:
    if kind == "dense":
        model: torch.nn.Module = DenseSegmenter(num_classes=4, backbone="test_resnet")
        return model, model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean()
    frames = 1 if kind == "image" else 2
    model = tiny(frames=frames, fusion="late" if kind == "late" else "sequential")
    tokens = torch.randint(0, VOCAB, (2, MAX_LEN))
    logits = model(images(frames=frames), tokens)
    return model, torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())


@pytest.mark.parametrize("kind", ["image", "sequential", "late", "dense"])
def test_forward_backward_under_fake_tensors(kind):
    # the memory estimator builds and runs models under FakeTensorMode: nothing may depend on values
    with FakeTensorMode():
        model, loss = _fake_model_and_loss(kind)
        loss.backward()
        assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_mem_tracker_measures_a_fake_training_step():
    from torch.distributed._tools.mem_tracker import MemTracker

    with FakeTensorMode():
        model = tiny()
        optim = torch.optim.AdamW(model.parameters())
        tracker = MemTracker()
        tracker.track_external(model, optim)
        with tracker:
            tokens = torch.randint(0, VOCAB, (2, MAX_LEN))
            loss = torch.nn.functional.cross_entropy(model(images(), tokens).flatten(0, 1), tokens.flatten())
            loss.backward()
            optim.step()
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    params = sum(p.numel() for p in model.parameters()) * 4
    assert peak > 3 * params  # weights + grads + 2 Adam moments, plus activations


@pytest.mark.parametrize("rows", [1, STEP_ROWS[0], 5, STEP_ROWS[1], STEP_ROWS[1] + 1])
@pytest.mark.parametrize("bias", [True, False])
def test_step_linear_is_the_same_product_as_f_linear(rows: int, bias: bool):
    torch.manual_seed(rows)
    layer = torch.nn.Linear(24, 40, bias=bias)
    x = torch.randn(rows, 1, 24)  # [B, 1, d]: one generation step
    out = step_linear(x, layer.weight, layer.bias)
    assert out.shape == (rows, 1, 40) and out.is_contiguous()
    torch.testing.assert_close(out, layer(x))
    # a non-contiguous input (a transposed view) gives the same
    xt = torch.randn(24, rows).T
    torch.testing.assert_close(step_linear(xt, layer.weight, layer.bias), layer(xt))
