"""Networks (wrapper, heads, MRFF, multi-task) and weight transfer, on small random networks."""
from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from nnunet_mgcl.networks.classification import MRFFClassifier, foreground_probability
from nnunet_mgcl.networks.heads import GlobalProjectionHead
from nnunet_mgcl.networks.multitask import MultiTaskUNet
from nnunet_mgcl.networks.wrapper import FeatureUNet
from nnunet_mgcl.settings import FinetuneSettings
from nnunet_mgcl.transfer import adapt_input_channels, load_pretrained


def _unet(in_ch=4, features=(8, 16, 32), residual=False, ds=True):
    common = dict(n_stages=3, features_per_stage=list(features), conv_op=torch.nn.Conv3d, kernel_sizes=3,
                  strides=[1, 2, 2], num_classes=2, n_conv_per_stage_decoder=[1, 1], conv_bias=True,
                  norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True}, nonlin=torch.nn.LeakyReLU,
                  nonlin_kwargs={"inplace": True}, deep_supervision=ds)
    if residual:
        return ResidualEncoderUNet(in_ch, n_blocks_per_stage=[1, 1, 1], **common)
    return PlainConvUNet(in_ch, n_conv_per_stage=[1, 1, 1], **common)


@pytest.mark.parametrize("residual", [False, True])
def test_wrapper_keeps_forward_and_state_dict_of_the_plain_network(residual):
    torch.manual_seed(0)
    plain = _unet(residual=residual)
    wrapped = FeatureUNet(plain)
    x = torch.randn(2, 4, 16, 16, 16)
    assert all(torch.equal(a, b) for a, b in zip(plain(x), wrapped(x)))
    assert list(plain.state_dict()) == list(wrapped.state_dict())
    feats = wrapped.features(x)
    assert [f.shape[1] for f in feats.encoder] == [8, 16, 32]
    assert [f.shape[2:] for f in feats.decoder] == [(8, 8, 8), (16, 16, 16)]
    assert wrapped.decoder_scales == [[2, 2, 2], [1, 1, 1]]
    assert torch.equal(feats.output[0], plain(x)[0])


def test_global_head_separates_scans_that_instance_norm_makes_identical_on_average():
    torch.manual_seed(0)
    head = GlobalProjectionHead(16, 64, 32).eval()  # eval: batch norm with its initial (identity) statistics
    base = torch.randn(2, 16, 4, 4, 4)
    a = torch.nn.functional.instance_norm(base)
    mixed = torch.nn.functional.instance_norm(torch.einsum("ij,bjxyz->bixyz", torch.randn(16, 16), base))
    assert torch.allclose(a.flatten(2).mean(2), mixed.flatten(2).mean(2), atol=1e-5)  # pooled first: identical
    assert not torch.allclose(head(a), head(mixed), atol=1e-3)                         # ours: not


def test_global_head_spreads_nearly_identical_scans_in_training():
    from nnunet_mgcl.losses import is_collapsed, uniformity

    torch.manual_seed(0)
    head = GlobalProjectionHead(16, 64, 32)
    base = torch.randn(1, 16, 4, 4, 4)
    batch = torch.nn.functional.instance_norm(base + 0.01 * torch.randn(4, 16, 4, 4, 4))
    assert is_collapsed(uniformity(head.eval()(batch).detach()))  # initial statistics (identity): collapsed
    z = head.train()(batch).detach()
    assert not is_collapsed(uniformity(z))  # running statistics remove the common part from the first step


def test_global_head_does_not_couple_the_samples_of_a_batch():
    from nnunet_mgcl.networks.heads import RunningNorm

    torch.manual_seed(0)
    head = GlobalProjectionHead(8, 16, 4).train()
    x = torch.randn(2, 8, 3, 3, 3, requires_grad=True)
    head(x)[0].sum().backward()
    assert x.grad[0].abs().sum() > 0 and x.grad[1].abs().sum() == 0  # batch norm would couple them
    norm = RunningNorm(3, momentum=0.5)
    a = torch.tensor([[1.0, 2, 3], [3.0, 4, 7]])
    norm(a)
    assert torch.allclose(norm.running_mean, a.mean(0))  # the first batch sets the statistics
    norm(a + 2)
    assert torch.allclose(norm.running_mean, a.mean(0) + 1)  # then an exponential moving average
    before = norm.running_mean.clone()
    norm.eval()(a + 10)
    assert torch.equal(norm.running_mean, before)  # eval: applied only


def _mrff(ring_width=2):
    torch.manual_seed(0)
    return MRFFClassifier(torch.nn.Conv3d, num_modalities=2, decoder_channels=8, num_classes=2, ring_width=ring_width)


def _lesion_logits(shape, lesion):
    logits = torch.zeros(1, 2, *shape)
    logits[:, 1] = torch.where(lesion, 10.0, -10.0)
    return logits


def test_mrff_lesion_tokens_change_when_only_the_lesion_changes():
    head = _mrff()
    shape = (12, 12, 12)
    lesion = torch.zeros(shape, dtype=torch.bool)
    lesion[3:9, 3:9, 3:9] = True
    x = torch.randn(1, 2, *shape)
    feats = type("F", (), {"decoder": [torch.randn(1, 8, *shape)]})()
    before = head.region_sums(x, _lesion_logits(shape, lesion), feats)
    x2 = x.clone()
    x2[:, 1, 4:8, 4:8, 4:8] += 3.0  # FLAIR-like change strictly inside the lesion (1 voxel margin: conv 3x3)
    after = head.region_sums(x2, _lesion_logits(shape, lesion), feats)
    per_mod = lambda s, region: s["modality"][0, region].reshape(2, -1)  # noqa: E731
    assert not torch.allclose(per_mod(before, 0)[1], per_mod(after, 0)[1])   # lesion token of modality 2 changed
    assert torch.allclose(per_mod(before, 0)[0], per_mod(after, 0)[0])       # modality 1 untouched
    assert torch.allclose(per_mod(before, 1), per_mod(after, 1), atol=1e-5)   # the ring did not change
    # the intensity sums: the lesion's FLAIR-like channel rose by 3 on 64 voxels of the lesion, nothing else
    delta = after["intensity"][0] - before["intensity"][0]
    assert delta[0, 1].item() == pytest.approx(3.0 * 64, rel=1e-3)
    assert torch.allclose(delta[0, 0], torch.tensor(0.0)) and torch.allclose(delta[1], torch.zeros(2), atol=1e-3)
    assert torch.equal(before["mass"], after["mass"])
    assert not torch.allclose(head.fuse(before), head.fuse(after))


def test_mrff_regions_are_lesion_ring_and_brain():
    head = _mrff(ring_width=1)
    shape = (9, 9, 9)
    lesion = torch.zeros(shape, dtype=torch.bool)
    lesion[4, 4, 4] = True
    x = torch.ones(1, 2, *shape)
    x[..., 0] = 0  # outside the brain: one face of the volume
    w = head.region_weights(x, _lesion_logits(shape, lesion))[0]
    assert w[0].sum() == pytest.approx(1.0, abs=0.05)  # soft: exp(-10) leaks from the 728 other voxels
    assert w[1].sum() == pytest.approx(26.0, abs=0.1)  # the 26-neighbourhood ring
    assert w[2].sum() == 9 * 9 * 8


def test_foreground_probability_for_softmax_and_regions():
    logits = torch.tensor([[2.0, 0.0]])[..., None, None, None]
    assert float(foreground_probability(logits, False)) == pytest.approx(1 / (1 + torch.e ** 2))
    assert float(foreground_probability(torch.zeros(1, 3, 1, 1, 1), True)) == pytest.approx(0.5)


@pytest.mark.parametrize("classifier", ["mrff", "pooled"])
def test_multitask_forward_is_plain_by_default_and_stash_matches(classifier):
    torch.manual_seed(0)
    net = MultiTaskUNet(_unet(ds=True), FinetuneSettings(classifier=classifier), num_classes=3, num_modalities=4)
    net.eval()
    x = torch.randn(2, 4, 16, 16, 16)
    seg, logits, _ = net.forward_multitask(x)
    assert logits.shape == (2, 3)
    assert torch.equal(net(x)[0], seg[0])
    net.stash_features = True
    net(x)
    assert torch.allclose(net.classify_stashed(), logits)
    with pytest.raises(RuntimeError, match="no stashed forward"):
        net.classify_stashed()


def test_transfer_loads_encoder_decoder_adapts_channels_and_reports_skips(tmp_path):
    torch.manual_seed(0)
    source = _unet(in_ch=3)
    ckpt = tmp_path / "pretrained.pth"
    torch.save({"network_weights": {f"module.{k}": v for k, v in source.state_dict().items()}}, ckpt)
    target = MultiTaskUNet(_unet(in_ch=4), FinetuneSettings(), num_classes=2, num_modalities=4)
    report = load_pretrained(target, ckpt)
    stem = "encoder.stages.0.0.convs.0.conv.weight"
    assert stem in report.adapted
    assert torch.allclose(target.state_dict()[stem], adapt_input_channels(source.state_dict()[stem], 4))
    deeper = "encoder.stages.1.0.convs.0.conv.weight"
    assert torch.equal(target.state_dict()[deeper], source.state_dict()[deeper])
    assert all(reason == "not part of the pretrained encoder/decoder"
               for k, reason in report.skipped.items() if k.startswith("classifier."))
    assert any(".seg_layers." in k for k in report.skipped)
    assert "tensors loaded" in report.summary() and "skipped" in report.summary()


def test_transfer_skips_shape_mismatches_and_missing_keys(tmp_path):
    source = _unet(features=(4, 8, 16))
    ckpt = tmp_path / "p.pth"
    weights = source.state_dict()
    del weights["encoder.stages.2.0.convs.0.conv.weight"]
    torch.save({"network_weights": weights}, ckpt)
    target = _unet(features=(8, 16, 32))
    report = load_pretrained(target, ckpt)
    assert report.loaded == []
    assert report.skipped["encoder.stages.2.0.convs.0.conv.weight"] == "missing in the checkpoint"
    assert report.skipped["encoder.stages.1.0.convs.0.conv.weight"] == "shape differs"


def test_adapt_input_channels_preserves_response_to_identical_channels():
    w = torch.randn(8, 2, 3, 3, 3)
    x = torch.randn(1, 1, 5, 5, 5)
    ref = torch.nn.functional.conv3d(x.repeat(1, 2, 1, 1, 1), w)
    out = torch.nn.functional.conv3d(x.repeat(1, 4, 1, 1, 1), adapt_input_channels(w, 4))
    assert torch.allclose(ref, out, atol=1e-5)


def test_mrff_head_learns_a_lesion_contrast_of_one_modality():
    """Regression test: the fusion once stayed at a constant output on such data."""
    torch.manual_seed(0)
    head = _mrff()
    n, m, f = 64, 2, 8
    pooled = torch.randn(n, 3, m, f) * 0.2 + torch.randn(n, 1, m, f)  # scan-level offsets shared by regions
    y = torch.randint(0, 2, (n,))
    pooled[:, 0, 1, 0] += torch.where(y == 1, 0.5, -0.5)  # modality 2 brighter in the lesion for class 1
    mass = torch.tensor([50.0, 100.0, 5000.0]).repeat(n, 1)
    sums = {"modality": (pooled * mass[:, :, None, None]).reshape(n, 3, m * f),
            "intensity": (torch.randn(n, 3, m) * 0.2 + torch.randn(n, 1, m)) * mass[..., None],
            "decoder": torch.randn(n, 3, 8) * mass[..., None], "mass": mass}
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    for _ in range(300):
        idx = torch.randint(0, n, (4,))
        loss = torch.nn.functional.cross_entropy(head.fuse({k: v[idx] for k, v in sums.items()}), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        p = torch.softmax(head.fuse(sums), 1)[:, 1]
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y.numpy(), p.numpy()) > 0.9


def test_momentum_encoder_follows_the_online_network_as_an_ema_and_matches_it_when_copied():
    from nnunet_mgcl.networks.contrastive import ContrastiveUNet, MomentumEncoder
    from nnunet_mgcl.settings import PretrainSettings

    torch.manual_seed(0)
    net = ContrastiveUNet(_unet(ds=False), PretrainSettings(global_stages=(-1, -2), local_weight=0.0))
    key = MomentumEncoder(net)
    assert all(not p.requires_grad for p in key.parameters()) and not key.train().training  # always eval
    x = torch.randn(2, 4, 16, 16, 16)
    net.train()
    feats = net.features(x, run_decoder=False)
    for stage, head in net.global_heads.items():
        head(feats.encoder[int(stage)])  # sets the heads' running statistics
    key.update(net, 0.0)  # a plain copy
    net.eval()
    out = key(x)
    assert set(out) == set(net.global_heads)
    for stage, head in net.global_heads.items():
        assert torch.allclose(out[stage], head(net.features(x, run_decoder=False).encoder[int(stage)]), atol=1e-5)
    before = {k: v.clone() for k, v in key.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    key.update(net, 0.9)
    name = "encoder.stages.0.0.convs.0.conv.weight"
    online = dict(net.named_parameters())[name]
    assert torch.allclose(key.state_dict()[name], 0.9 * before[name] + 0.1 * online)
    assert not any(k.startswith("momentum") for k in net.state_dict())  # not part of the transferred network
