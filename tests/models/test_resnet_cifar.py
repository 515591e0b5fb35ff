import math

import torch
import torch.nn.functional as F

from featdiff.models.resnet_cifar import option_a_shortcut, resnet32


def test_parameter_count_matches_closed_form():
    # stem conv+BN, stage 1 (5 × two 16→16 convs + 2 BNs), stages 2/3 (first block widens), fc.
    def block(cin, cout):
        return 9 * cin * cout + 9 * cout * cout + 4 * cout

    stem = 9 * 3 * 16 + 2 * 16
    stages = 5 * block(16, 16) + block(16, 32) + 4 * block(32, 32) + block(32, 64) + 4 * block(64, 64)
    expected = stem + stages + 64 * 10 + 10
    assert expected == 464_154  # the 0.46 M LDAM/LDMLR quote
    assert sum(p.numel() for p in resnet32(10).parameters()) == expected


def test_option_a_shortcut_subsamples_and_pads_zero_channels_on_both_sides():
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).view(2, 16, 4, 4) + 1.0
    out = option_a_shortcut(x, 32)
    assert out.shape == (2, 32, 2, 2)
    # LDAM: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)) with planes = 32.
    sub = x[:, :, [0, 2]][:, :, :, [0, 2]]
    expected = torch.cat([torch.zeros(2, 8, 2, 2), sub, torch.zeros(2, 8, 2, 2)], dim=1)
    assert torch.equal(out, expected)


def test_shapes_and_forward_is_fc_of_features():
    torch.manual_seed(0)
    model = resnet32(7).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = model.features(x)
        assert feats.shape == (3, model.feature_dim) == (3, 64)
        assert torch.allclose(model(x), F.linear(feats, model.fc.weight, model.fc.bias), atol=1e-6)


def test_features_ldmlr_only_drops_the_stem_relu():
    torch.manual_seed(0)
    model = resnet32(10).eval()
    x = torch.randn(4, 3, 32, 32)

    def manual(stem_relu: bool) -> torch.Tensor:
        out = model.bn1(model.conv1(x))
        if stem_relu:
            out = F.relu(out)
        for stage in (model.layer1, model.layer2, model.layer3):
            for block in stage:
                out = block(out)
        return F.avg_pool2d(out, 8).flatten(1)  # LDMLR's AvgPool2d(8) on the 8×8 map

    with torch.no_grad():
        assert torch.allclose(model.features(x), manual(True), atol=1e-5)
        assert torch.allclose(model.features_ldmlr(x), manual(False), atol=1e-5)
        assert not torch.allclose(model.features(x), model.features_ldmlr(x), atol=1e-3)


def test_conv_and_linear_weights_are_kaiming_normal():
    torch.manual_seed(0)
    model = resnet32(10)
    weight = model.layer3[1].conv1.weight  # 36 864 draws: sampling error of the std is about 0.4 %
    sigma = math.sqrt(2 / (64 * 9))  # He et al.: sqrt(2 / fan_in), fan_in = 64·3·3
    assert abs(weight.std().item() - sigma) < 0.03 * sigma
    assert abs(weight.mean().item()) < 0.05 * sigma
