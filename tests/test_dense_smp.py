"""The dense baseline's architectures: rleseg's FPN (the default) and segmentation-models-pytorch's."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rleseg.models import ModelConfigError
from rleseg.models.dense import DenseSegmenter, SmpDenseSegmenter, build_dense_model

QUICKSTART = {"channels": [32, 64, 128, 256], "stem_width": 16}  # experiments/dense_quickstart.yaml
# the smp 0.6 architectures that build and run on resnet10t at feature_stride 8 (encoder_depth 3), 64x64
SMP_AT_STRIDE_8 = [
    "unet",
    "unetplusplus",
    "manet",
    "linknet",
    "smp_fpn",
    "pspnet",
    "deeplabv3",
    "deeplabv3plus",
    "pan",
    "upernet",
    "segformer",
]


def _smp():
    return pytest.importorskip(
        "segmentation_models_pytorch", reason="segmentation-models-pytorch not installed (rleseg[smp])"
    )


@pytest.mark.parametrize("arch", ["fpn", "FPN"])
def test_default_arch_is_the_dense_segmenter_unchanged(arch):
    kwargs = dict(num_classes=4, backbone="resnet10t", feature_stride=8, decoder_channels=64)
    torch.manual_seed(0)
    built = build_dense_model(arch, backbone_kwargs=QUICKSTART, **kwargs)
    torch.manual_seed(0)
    direct = DenseSegmenter(backbone_kwargs=QUICKSTART, **kwargs)
    assert type(built) is DenseSegmenter
    assert built.num_parameters() == direct.num_parameters()
    a, b = built.state_dict(), direct.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_importing_rleseg_does_not_import_smp():
    code = "import sys, rleseg, rleseg.models; assert 'segmentation_models_pytorch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("arch", ["unet", "smp_fpn", "DeepLabV3Plus"])
def test_smp_arch_without_smp_says_how_to_install_it(monkeypatch, arch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # import fails
    with pytest.raises(ModelConfigError, match=r"pip install 'rleseg\[smp\]'"):
        build_dense_model(arch, num_classes=4, backbone="resnet10t")


def test_unknown_arch_lists_the_known_ones(monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    with pytest.raises(ModelConfigError, match="unknown dense arch 'fnp'.*'fpn'.*'unet'"):
        build_dense_model("fnp", num_classes=4, backbone="resnet10t")


def test_smp_unet_on_the_quickstart_backbone_forward_backward():
    _smp()
    model = build_dense_model("Unet", num_classes=4, backbone="resnet10t", backbone_kwargs=QUICKSTART)
    assert isinstance(model, SmpDenseSegmenter) and model.arch == "unet"
    # the same timm encoder, cut at the same stage, as the FPN's (backbone_kwargs reach timm)
    fpn = DenseSegmenter(num_classes=4, backbone="resnet10t", backbone_kwargs=QUICKSTART)
    assert list(model.model.encoder.model.state_dict()) == list(fpn.backbone.body.state_dict())
    images = torch.randn(2, 3, 64, 64)
    logits = model(images)
    assert logits.shape == (2, 4, 64, 64)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    clip = build_dense_model("unet", num_classes=4, backbone="resnet10t", frames=2)
    assert clip(torch.randn(1, 2, 3, 64, 64)).shape == (1, 2, 4, 64, 64)


@pytest.mark.parametrize("arch", SMP_AT_STRIDE_8)
def test_smp_archs_give_logits_at_the_input_size(arch):
    _smp()
    model = build_dense_model(arch, num_classes=3, backbone="resnet10t", backbone_kwargs=QUICKSTART)
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3, 64, 64)
    logits.sum().backward()


def test_smp_input_size_rule_is_a_clear_error():
    _smp()
    model = build_dense_model("unetplusplus", num_classes=3, backbone="resnet10t")
    with pytest.raises(ValueError, match="divisible by 8 .*got 60x60: pad or crop to 64x64"):
        model(torch.zeros(1, 3, 60, 60))
    # Unet interpolates its skips: any size
    unet = build_dense_model("unet", num_classes=3, backbone="resnet10t")
    assert unet(torch.zeros(1, 3, 60, 60)).shape == (1, 3, 60, 60)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"arch": "dpt"}, "smp could not build arch 'dpt'.*encoder_depth=3"),
        ({"feature_stride": 6}, "feature_stride must be 2, 4, 8, 16 or 32"),
        ({"arch_kwargs": {"encoder_depth": 5}}, r"arch_kwargs may not set \['encoder_depth'\]"),
        ({"decoder_channels": [64, 32]}, "one width per decoder stage.*3 for encoder_depth=3"),
    ],
)
def test_bad_smp_config_is_a_clear_error(overrides, message):
    _smp()
    kwargs = {"arch": "unet", "num_classes": 3, "backbone": "resnet10t", **overrides}
    with pytest.raises(ModelConfigError, match=message):
        build_dense_model(**kwargs)


def test_pretrained_smp_encoder_offline_is_a_one_line_error(monkeypatch):
    smp = _smp()

    def offline(*args, **kwargs):
        raise OSError("cannot find the requested files in the local cache\nsecond line")

    monkeypatch.setattr(smp, "create_model", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelConfigError) as info:
        build_dense_model("unet", num_classes=3, backbone="resnet10t", pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert "HF_HUB_OFFLINE is set" in message and "weights_path" in message


def test_weights_path_loads_into_the_smp_encoder(tmp_path):
    _smp()
    import timm

    source = timm.create_model("resnet10t", **QUICKSTART)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = build_dense_model(
        "unet",
        num_classes=3,
        backbone="resnet10t",
        backbone_kwargs=QUICKSTART,
        weights_path=tmp_path / "w.pth",
    )
    assert model.weights_report is not None and not model.weights_report.missing
    assert torch.equal(model.model.encoder.model.state_dict()["conv1.0.weight"], source.conv1[0].weight)


def test_smp_unet_runs_under_fake_tensors():
    # the memory estimator builds and runs models under FakeTensorMode: nothing may depend on values
    _smp()
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = build_dense_model("unet", num_classes=3, backbone="resnet10t")
        model(torch.randn(2, 3, 64, 64)).sum().backward()
        assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
