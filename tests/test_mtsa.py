"""MTSA (SHERL Sec. 3.2, Eqs. (1)-(3)) against hand-computed vectors, a from-formula
reference and the parameter counts of the authors' applications."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sherl_mm.registry import MODELS
from sherl_mm.tuners.mtsa import MTSA, l1norm, redundancy

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


# ---------------------------------------------------------------------------- parameter counts
def test_t14_mdetr_block_count():
    m = MTSA(256, 128, 4)                      # MDETR form is the default variant
    assert sum(p.numel() for p in m.parameters()) == 232_450
    explicit = MTSA(256, 128, 4, down='linear_ln', score='learned', post_mlp=True, up_norm=True, init='xavier')
    assert sum(p.numel() for p in explicit.parameters()) == 232_450


def t5_sherl_count_from_spec(D: int, r: int, L: int) -> int:
    """The T5 variant (docs/tuners.md) as the authors' T5 SHERL uses it: trainable parameters of one T5 stack's SHERL,
    counted from the spec, not from the modules."""
    d = D // r
    down = (D * d + d) + 2 * (d * d + d)      # Eq. 1 per set: fc1 (D→d), fc2 = W' and fc3 = W (d→d), all with bias
    fc_attn = d + 1                           # Linear_{d→1}
    up = d * D + D                            # Linear_{d→D} after the ReLU
    alpha = 1
    final_side_layer_norm = D                 # new T5LayerNorm: a weight, no bias
    return L * down + fc_attn + up + alpha + final_side_layer_norm


T5_BASE_KEPT = [1, 2, 3, 5, 6, 7, 9, 10, 11]          # scripts/ladder_side_tuning_base.sh: blocks 0, 4, 8 dropped


def test_t14_t5_base_count():
    """SHERL on T5-base (r = 8) has 1,907,236 trainable parameters: the real tuners on
    T5 stacks of width 768 and 12 blocks (narrow attention/FFN, tiny vocabulary: MTSA's
    size depends on D and L only, and the stacks are frozen)."""
    from sherl_mm.backbones import HFT5DecoderStack, HFT5EncoderStack
    from sherl_mm.tuners import SHERL
    torch.manual_seed(0)
    config = dict(d_model=768, d_kv=4, d_ff=8, num_layers=12, num_decoder_layers=12, num_heads=1, vocab_size=8)
    mtsa = dict(variant='t5', reduction=8)
    # encoder: [embeddings] + the 9 kept blocks; the guidance / x_last is block 11, no late block
    enc = SHERL(HFT5EncoderStack(config=config), select_layers=['input'] + T5_BASE_KEPT, num_late_layers=0,
                mtsa=mtsa, output_norm='t5')
    # decoder: the authors keep only the selected blocks before insert_layer = 11 (modeling_side_t5.py
    # L1844-1848), whose output (block 10) is the guidance; block 11 is regulated
    dec = SHERL(HFT5DecoderStack(config=config), select_layers=['input'] + [i for i in T5_BASE_KEPT if i < 11],
                num_late_layers=1, mtsa=mtsa, output_norm='t5')
    assert len(enc.selections[0]) == 10 and len(dec.selections[0]) == 9
    assert dec.late_layers == [11]
    spec_enc, spec_dec = t5_sherl_count_from_spec(768, 8, 10), t5_sherl_count_from_spec(768, 8, 9)
    assert spec_enc + spec_dec == 1_907_236                            # the authors' T5-base SHERL (paper: 0.85%)
    counts = [sum(p.numel() for p in t.parameters() if p.requires_grad) for t in (enc, dec)]
    assert counts == [spec_enc, spec_dec]
    assert all(p.numel() == 768 for p in enc.output_norm.parameters())   # weight only, initialised to 1
    assert torch.equal(enc.output_norm.weight, torch.ones(768))

    # the norm replaces the frozen final_layer_norm on the tuned route (eval: no dropout)
    enc.eval(), dec.eval()
    ids, mask = torch.randint(0, 8, (2, 3)), torch.ones(2, 3, dtype=torch.long)
    e = enc(ids, mask)
    rms = e.side * torch.rsqrt(e.side.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.allclose(e.hidden, rms, atol=1e-6)
    frozen_memory = enc.stack.finalize(e.frozen, {})                  # what the frozen decoder blocks read
    d = dec(ids, mask, memory=frozen_memory, memory_attention_mask=mask, late_context=dict(memory=e.hidden))
    (d.hidden.sum() + e.hidden.sum()).backward()
    assert enc.output_norm.weight.grad is not None and dec.output_norm.weight.grad is not None
    assert all(p.grad is None for t in (enc, dec) for p in t.stack.parameters())


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


# ---------------------------------------------------------------------------- reference from the formulas
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


def spec_reference(m: MTSA, feats, x_last):
    """Steps 1-9 of the MTSA module docstring (Eqs. (1)-(3)) written directly as tensor algebra on the module's weights
    (none of its submodules or helpers is called), for the MDETR and T5 variants.

    feats: L tensors (B, K, D_j), the guidance last; x_last: (B, K, D). Returns (B, K, D)."""
    P = dict(m.named_parameters())

    def linear(x, name):                      # Linear_{a→b}, with bias
        return x @ P[f'{name}.weight'].T + P[f'{name}.bias']

    def layer_norm(x, name, eps):             # LN over the last axis, biased variance
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * P[f'{name}.weight'] + P[f'{name}.bias']

    eps = 1e-6                                # ε of both norms, MDETR and T5 variants
    mdetr = m.variant == 'mdetr'
    # 1. unshared down-projections, one per set (guidance included)
    if mdetr:                                 # LN_d(Linear_{D→d} h), LN eps 1e-5
        proj = [layer_norm(linear(h, f'downs.{j}.0'), f'downs.{j}.1', 1e-5) for j, h in enumerate(feats)]
    else:                                     # Eq. 1: F = ReLU(fc1 h), F' = σ(fc3 F) ⊙ (fc2 F + F)
        proj = []
        for j, h in enumerate(feats):
            f = torch.relu(linear(h, f'downs.{j}.fc1'))
            proj.append(torch.sigmoid(linear(f, f'downs.{j}.fc3')) * (linear(f, f'downs.{j}.fc2') + f))
    B, K, d = proj[-1].shape
    L = len(feats)
    # 2. token-wise regrouping: E (BK, L-1, d) shallow sets, e (BK, 1, d) guidance
    E = torch.stack(proj[:-1], dim=2).reshape(B * K, L - 1, d)
    e = proj[-1].reshape(B * K, 1, d)
    # 3. redundancy: ε added to the l2 norm, diagonal included, ReLU on the whole matrix, row sums
    En = E / (torch.sqrt((E ** 2).sum(-1, keepdim=True)) + eps)
    r = torch.relu(En @ En.transpose(1, 2)).sum(-1, keepdim=True)               # (BK, L-1, 1)
    # 4. learned score w_aᵀ(E_i ⊙ e) + b_a
    score = (E * e) @ P['fc_attn.weight'].T + P['fc_attn.bias']                 # (BK, L-1, 1)
    # 5. weights: l1norm over the L-1 sets with +ε in the denominator
    q = torch.relu(score) / r
    w = q / (q.abs().sum(1, keepdim=True) + eps)
    # 6. aggregate (MDETR: LN_d(Linear_{D→d}(ReLU(Linear_{d→D} a))))
    a = (w * E).sum(1, keepdim=True)
    if mdetr:
        a = layer_norm(linear(torch.relu(linear(a, 'mlp.0')), 'mlp.2'), 'mlp.3', 1e-5)
    # 7. residual to the query
    e_new = (a + e).squeeze(1).reshape(B, K, d)
    # 8. up-projection: ReLU then Linear_{d→D} (MDETR: then LN_D)
    up = linear(torch.relu(e_new), 'up.1')
    if mdetr:
        up = layer_norm(up, 'up.2', 1e-5)
    # 9. gate on the original input, T = 0.1
    return up + torch.tanh(P['alpha'] / 0.1) * x_last


@pytest.mark.parametrize('variant', ['mdetr', 't5'])
def test_matches_spec_reference_outputs_and_gradients(variant):
    """The module against the from-spec reference, outputs and the gradients of every
    parameter and input, float64, to 1e-6."""
    torch.manual_seed(3)
    m = MTSA([6, 8, 8, 8, 8], 4, 5, out_channels=8, variant=variant, alpha_init=0.07).double().train()
    with torch.no_grad():                     # T5's N(0, 0.01) init leaves everything near 0: spread the weights
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        m.fc_attn.bias.fill_(0.5)             # some positive scores, else m = 0 and the shallow sets get no gradient
    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(2, 3, w, generator=g, dtype=torch.float64, requires_grad=True) for w in (6, 8, 8, 8, 8)]
    x = torch.randn(2, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    wrt = list(m.parameters()) + feats + [x]
    out, ref = m(feats, x), spec_reference(m, feats, x)
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)
    assert (ref - ref.mean()).abs().max() > 1e-2          # a non-degenerate output
    grads = torch.autograd.grad((out * probe).sum(), wrt)
    grads_ref = torch.autograd.grad((ref * probe).sum(), wrt)
    names = [n for n, _ in m.named_parameters()] + [f'feats[{j}]' for j in range(5)] + ['x_last']
    for name, g_mod, g_ref in zip(names, grads, grads_ref):
        assert torch.allclose(g_mod, g_ref, atol=1e-6, rtol=0), name
    # every parameter takes part (the reference reads all of them)
    assert all(g_ref.abs().sum() > 0 for g_ref in grads_ref[:len(list(m.parameters()))])


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
    (dict(in_channels=8, side_width=4, num_sets=3, down='conv'), r"MTSA: down='conv': must be one of"),
    (dict(in_channels=8, side_width=4, num_sets=3, score='cos'), r"MTSA: score='cos': must be one of"),
    (dict(in_channels=8, side_width=4, num_sets=3, variant='bert'), r"MTSA: variant='bert': must be one of"),
    (dict(in_channels=8, side_width=4, num_sets=3, temperature=0), r'temperature=0: must be a number > 0'),
    (dict(in_channels=8, side_width=4, num_sets=3, reduction=2), 'MTSA takes d as side_width'),
    (dict(in_channels=8, side_width=4, num_sets=3, varaint='t5'),
     r"varaint: unknown option; did you mean 'variant'\?"),
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
