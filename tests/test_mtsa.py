"""MTSA (METHOD.md section 1) against the test vectors of section 6."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sherl_mm.registry import MODELS
from sherl_mm.tuners.mtsa import MTSA, l1norm, mtsa_param_count, redundancy

torch.set_default_dtype(torch.float32)


def rand_feats(L=4, B=2, K=5, D=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, K, D, generator=g, dtype=dtype) for _ in range(L)]


def reference(m: MTSA, feats, x_last):
    """Per-token loop over the authors' formulas (MDETR / T5 token variants)."""
    proj = [down(h) for down, h in zip(m.downs, feats)]
    B, K, d = proj[-1].shape
    out = torch.empty(B, K, d, dtype=proj[-1].dtype)
    for b in range(B):
        for k in range(K):
            E = torch.stack([p[b, k] for p in proj[:-1]])               # (L-1, d)
            e = proj[-1][b, k]
            En = E / (E.norm(dim=1, keepdim=True) + m.eps)
            r = F.relu(En @ En.T).sum(dim=1)
            r = torch.where(r > 0, r, torch.ones_like(r))       # authors: 0/0 for an all-zero set (see redundancy)
            s = (m.fc_attn(E * e).squeeze(-1) if m.fc_attn is not None else (E * e).sum(-1))
            w = F.relu(s) / r
            w = w / (w.abs().sum() + m.eps)
            a = (w[:, None] * E).sum(0)
            if m.mlp is not None:
                a = m.mlp(a)
            out[b, k] = a + e
    return m.up(out) + torch.tanh(m.alpha / m.temperature) * x_last


# ---------------------------------------------------------------------------- T14 parameter counts
def test_t14_mdetr_block_count():
    m = MTSA(256, 128, 4)                      # MDETR form is the default variant
    assert sum(p.numel() for p in m.parameters()) == 232_450
    explicit = MTSA(256, 128, 4, down='linear_ln', score='learned', post_mlp=True, up_norm=True, init='xavier')
    assert sum(p.numel() for p in explicit.parameters()) == 232_450


def test_t14_t5_base_count():
    # encoder MTSA over [emb] + 9 kept layers (L=10), decoder over [emb] + 8 (L=9), both eq1 (768 -> 96), plus the
    # two trainable final_side_layer_norm T5LayerNorm(768) (weight only).
    enc = mtsa_param_count(768, 96, 10, variant='t5')
    dec = mtsa_param_count(768, 96, 9, variant='t5')
    assert enc + dec + 2 * 768 == 1_907_236


def test_registered_in_models():
    m = MODELS.build(dict(type='MTSA', in_channels=16, side_width=8, num_sets=3))
    assert isinstance(m, MTSA)


# ---------------------------------------------------------------------------- Eq. 2 redundancy
def test_t1_orthogonal_sets():
    eps = 1e-6
    E = torch.eye(4, dtype=torch.float64)[None] * torch.tensor([1., 2., 3., .5], dtype=torch.float64)[None, :, None]
    r = redundancy(E, eps).squeeze(-1)
    norms = torch.tensor([1., 2., 3., .5], dtype=torch.float64)
    assert torch.allclose(r[0], (norms / (norms + eps)) ** 2, atol=1e-12)


def test_t2_collinear_and_antiparallel():
    a = torch.randn(6, dtype=torch.float64)
    E = torch.stack([a * 0.5, a * 2, a * 7])[None]
    assert torch.allclose(redundancy(E, 0.0), torch.full((1, 3, 1), 3.0, dtype=torch.float64), atol=1e-12)
    E = torch.stack([a, -a])[None]
    assert torch.allclose(redundancy(E, 0.0), torch.ones(1, 2, 1, dtype=torch.float64), atol=1e-12)


def test_t3_scale_invariance_and_permutation_equivariance():
    E = torch.randn(3, 5, 8, dtype=torch.float64)
    r = redundancy(E, 0.0)
    scales = torch.rand(3, 5, 1, dtype=torch.float64) + 0.1
    assert torch.allclose(redundancy(E * scales, 0.0), r, atol=1e-12)
    perm = torch.randperm(5)
    assert torch.allclose(redundancy(E[:, perm], 0.0), r[:, perm], atol=1e-12)


# ---------------------------------------------------------------------------- weights
def _constant_score_mtsa(d, L, bias, eps=0.0):
    m = MTSA(d, d, L, variant='t5', eps=eps).double()
    with torch.no_grad():
        m.fc_attn.weight.zero_()
        m.fc_attn.bias.fill_(bias)
    return m


def test_t4_cohort_equilibrium():
    m = _constant_score_mtsa(4, 5, 1.0)
    a = torch.tensor([1., 0., 0., 0.], dtype=torch.float64)
    b = torch.tensor([0., 1., 0., 0.], dtype=torch.float64)
    shallow = torch.stack([a, a, a, b])[None]
    guide = torch.ones(1, 1, 4, dtype=torch.float64)
    w = m.weights(shallow, guide).squeeze()
    assert torch.allclose(w, torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2], dtype=torch.float64), atol=1e-12)
    agg = (w[:, None] * shallow[0]).sum(0)
    assert torch.allclose(agg, 0.5 * a + 0.5 * b, atol=1e-12)


@pytest.mark.parametrize('variant', ['t5', 'clipvil', 'vse_bert', 'mdetr'])
def test_t5_nonpositive_scores(variant):
    m = MTSA(8, 8, 4, variant=variant, up_dropout=0.0).double()
    with torch.no_grad():
        m.fc_attn.weight.zero_()
        m.fc_attn.bias.fill_(-1.0)
    feats = rand_feats(D=8)
    proj = m.project(feats)
    shallow = torch.stack(proj[:-1], 2).reshape(-1, 3, 8)
    guide = proj[-1].reshape(-1, 1, 8)
    assert torch.equal(m.weights(shallow, guide), torch.zeros_like(shallow[..., :1]))
    # e' = e (T5, CLIP-ViL, VSE) or MLP(0) + e (MDETR): check through the output with zero gate
    expect_e = proj[-1] if m.mlp is None else proj[-1] + m.mlp(torch.zeros(8, dtype=torch.float64))
    out = m(feats, torch.randn(2, 5, 8, dtype=torch.float64))
    assert torch.allclose(out, m.up(expect_e), atol=1e-12)


def test_t6_weights_sum_to_one():
    m = MTSA(8, 8, 5, variant='t5').double()
    shallow, guide = torch.randn(10, 4, 8, dtype=torch.float64), torch.randn(10, 1, 8, dtype=torch.float64)
    w = m.weights(shallow, guide)
    r = redundancy(shallow, m.eps)
    s = F.relu(m.fc_attn(shallow * guide)) / r
    total = s.abs().sum(1, keepdim=True)
    positive = total.squeeze() > 0
    assert positive.any()
    assert torch.allclose(w.sum(1)[positive], (total / (total + m.eps))[positive].squeeze(-1), atol=1e-12)


# ---------------------------------------------------------------------------- gate
@pytest.mark.parametrize('variant', ['mdetr', 't5', 'clipvil', 'vse_bert'])
def test_t7_alpha_zero_ignores_x_last(variant):
    m = MTSA(8, 4, 3, variant=variant).double().eval()
    feats = rand_feats(L=3, D=8)
    out1 = m(feats, torch.randn(2, 5, 8, dtype=torch.float64))
    out2 = m(feats, torch.randn(2, 5, 8, dtype=torch.float64))
    assert torch.equal(out1, out2)
    if variant == 'mdetr':   # exactly LN_D(...): per-token mean 0, variance ~1
        assert torch.allclose(out1.mean(-1), torch.zeros(2, 5, dtype=torch.float64), atol=1e-9)
        assert torch.allclose(out1.var(-1, unbiased=False), torch.ones(2, 5, dtype=torch.float64), atol=1e-3)


def test_t7_identity_construction():
    m = MTSA(8, 4, 3).double().eval()
    with torch.no_grad():
        m.up[1].weight.zero_()
        m.up[1].bias.zero_()
        m.up[2].bias.zero_()
        m.alpha.fill_(10.0)
    feats = rand_feats(L=3, D=8)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    assert torch.equal(m(feats, x), x)


def test_t8_gate_linearity_and_alpha_gradient():
    m = MTSA(8, 4, 3).double()
    feats = rand_feats(L=3, D=8)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    for alpha in (0.0, 0.03, -0.2, 1.0):
        with torch.no_grad():
            m.alpha.fill_(alpha)
        diff = m(feats, x) - m(feats, torch.zeros_like(x))
        assert torch.allclose(diff, torch.tanh(torch.tensor(alpha / 0.1, dtype=torch.float64)) * x, atol=1e-12)
    with torch.no_grad():
        m.alpha.zero_()
    w = torch.randn(2, 5, 8, dtype=torch.float64)
    (m(feats, x) * w).sum().backward()
    assert torch.allclose(m.alpha.grad, ((x / 0.1) * w).sum().reshape(1), atol=1e-9)


# ---------------------------------------------------------------------------- symmetries
@pytest.mark.parametrize('variant', ['mdetr', 't5', 'vse_bert'])
def test_t9_token_permutation_and_batch_independence(variant):
    m = MTSA(8, 4, 4, variant=variant, up_dropout=0.0, alpha_init=0.05).double().eval()
    feats = rand_feats(D=8)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    out = m(feats, x)
    perm = torch.randperm(5)
    assert torch.allclose(m([f[:, perm] for f in feats], x[:, perm]), out[:, perm], atol=1e-12)
    assert torch.allclose(m([f[:1] for f in feats], x[:1]), out[:1], atol=1e-12)


def test_t10_shallow_set_reordering():
    m = MTSA(8, 4, 4, alpha_init=0.3).double().eval()
    feats = rand_feats(D=8)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    out = m(feats, x)
    perm = [2, 0, 1]
    m2 = MTSA(8, 4, 4).double().eval()
    m2.load_state_dict(m.state_dict())
    m2.downs = nn.ModuleList([m.downs[i] for i in perm] + [m.downs[3]])
    assert torch.allclose(m2([feats[i] for i in perm] + [feats[3]], x), out, atol=1e-12)


def test_t11_t5_zero_projections():
    m = MTSA(8, 4, 3, variant='t5').double()
    with torch.no_grad():
        for down in m.downs:
            for fc in (down.fc2, down.fc3):
                fc.weight.zero_()
                fc.bias.zero_()
    h = torch.randn(2, 5, 8, dtype=torch.float64)
    assert torch.allclose(m.downs[0](h), F.relu(m.downs[0].fc1(h)) / 2, atol=1e-12)
    with torch.no_grad():
        m.up[1].weight.zero_()
        m.up[1].bias.zero_()
    assert torch.equal(m(rand_feats(L=3, D=8), torch.randn(2, 5, 8, dtype=torch.float64)),
                       torch.zeros(2, 5, 8, dtype=torch.float64))


# ---------------------------------------------------------------------------- reference loop (I1-style)
@pytest.mark.parametrize('kwargs', [dict(variant='mdetr'), dict(variant='t5'), dict(variant='clipvil'),
                                    dict(variant='vse_bert', up_dropout=0.0), dict(variant='mdetr', score='dot')])
def test_matches_reference_loop(kwargs):
    m = MTSA([6, 8, 8, 8], 4, 4, out_channels=8, alpha_init=0.07, **kwargs).double().eval()
    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(2, 3, w, generator=g, dtype=torch.float64) for w in (6, 8, 8, 8)]
    x = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    assert torch.allclose(m(feats, x), reference(m, feats, x), atol=1e-10)
    if kwargs.get('score') == 'dot':
        assert m.fc_attn is None


# ---------------------------------------------------------------------------- variants, init, errors
def test_init_modes():
    torch.manual_seed(0)
    m = MTSA(64, 32, 3, variant='t5')
    assert m.downs[0].fc1.bias.abs().max() == 0
    assert abs(m.downs[0].fc1.weight.std().item() - 0.01) < 0.002
    m = MTSA(64, 32, 3, variant='clipvil')
    assert abs(m.up[1].weight.std().item() - 0.02) < 0.004
    m = MTSA(64, 32, 3)   # xavier on matrices, default (non-zero) biases, LN 1/0, alpha 0
    bound = (6 / (64 + 32)) ** 0.5
    assert m.downs[0][0].weight.abs().max() <= bound
    assert m.downs[0][0].bias.abs().max() > 0
    assert torch.equal(m.downs[0][1].weight, torch.ones(32)) and m.alpha.item() == 0
    vse = MTSA(64, 32, 3, variant='vse_bert')
    assert isinstance(vse.up[-1], nn.Dropout) and vse.up[2].eps == 1e-12 and vse.eps == 1e-8


def test_cnn_variant_non_square():
    m = MTSA([4, 8, 12], 6, 3, out_channels=12, variant='cnn').double()
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 4, 12, 8, generator=g, dtype=torch.float64),
             torch.randn(2, 8, 6, 4, generator=g, dtype=torch.float64),
             torch.randn(2, 12, 3, 2, generator=g, dtype=torch.float64)]
    x = torch.randn(2, 12, 3, 2, generator=g, dtype=torch.float64)
    m.eval()
    out = m(feats, x)
    assert out.shape == x.shape
    # row-major roll back: the output at (i, j) depends only on the pooled inputs at (i, j)
    feats2 = [f.clone() for f in feats]
    feats2[2][:, :, 2, 1] += 1.0           # change one guidance position
    changed = (m(feats2, x) - out).abs().sum(1)[0] > 0
    expect = torch.zeros(3, 2, dtype=torch.bool)
    expect[2, 1] = True
    assert torch.equal(changed, expect)
    # pooling with kernel = stride = 4 (12x8 -> 3x2) equals max + avg pool
    pooled = m.downs[0].bn(m.downs[0].conv(F.max_pool2d(feats[0], 4) + F.avg_pool2d(feats[0], 4)))
    assert torch.allclose(m.downs[0](feats[0], (3, 2)), pooled, atol=1e-12)
    # guidance set (kernel 1) gets 2h, as the authors' max + avg pooling with k = 1
    assert torch.allclose(m.downs[2](feats[2], (3, 2)), m.downs[2].bn(m.downs[2].conv(2 * feats[2])), atol=1e-12)
    # up = ReLU(BN(Conv1x1)): non-negative at alpha = 0
    assert (out >= 0).all()


@pytest.mark.parametrize('kwargs, match', [
    (dict(in_channels=8, side_width=4, num_sets=1), 'num_sets'),
    (dict(in_channels=[8, 8], side_width=4, num_sets=3), 'lists 2 widths'),
    (dict(in_channels=8, side_width=4, num_sets=3, down='conv'), 'down must be'),
    (dict(in_channels=8, side_width=4, num_sets=3, score='cos'), 'score must be'),
    (dict(in_channels=8, side_width=4, num_sets=3, variant='bert'), 'variant must be'),
    (dict(in_channels=8, side_width=4, num_sets=3, variant='cnn', post_mlp=True), 'post_mlp'),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MTSA(**kwargs)


def test_bad_inputs():
    m = MTSA(8, 4, 3)
    with pytest.raises(ValueError, match='expects 3 feature sets'):
        m(rand_feats(L=2, D=8, dtype=torch.float32), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match='must be \\(B, K, 8\\)'):
        m(rand_feats(L=3, D=6, dtype=torch.float32), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match='x_last'):
        m(rand_feats(L=3, D=8, dtype=torch.float32), torch.randn(2, 4, 8))


def test_zero_set_does_not_give_nan():
    # eq1 with small d often maps a set to exactly 0 (ReLU); the authors' code divides 0/0 there
    m = MTSA(8, 2, 3, variant='t5').double()
    with torch.no_grad():
        m.downs[0].fc1.bias.fill_(-100.0)           # set 0 is exactly zero everywhere
    out = m(rand_feats(L=3, D=8), torch.randn(2, 5, 8, dtype=torch.float64))
    assert torch.isfinite(out).all()
    E = torch.zeros(1, 2, 4, dtype=torch.float64)
    E[0, 1, 0] = 1.0
    assert redundancy(E, 1e-6).squeeze().tolist() == [1.0, pytest.approx((1 / (1 + 1e-6)) ** 2)]


def test_l1norm_eps_added():
    x = torch.tensor([[0.0, 0.0]])
    assert torch.equal(l1norm(x, 1, 1e-6), x)
