"""GPT-2 size families: exact parameter counts against transformers' GPT2LMHeadModel."""
import pytest

from scaling_jax.scaling import gpt2_family, gpt2_flops_per_token, gpt2_member, gpt2_params, width_for_params

CONFIGS = [  # (vocab_size, n_positions, d_model, n_layer, n_head, d_ff)
    (1000, 128, 64, 2, 2, None),
    (517, 64, 96, 3, 3, None),
    (1000, 32, 128, 1, 2, 300),
]


@pytest.mark.parametrize("vocab,positions,d_model,n_layer,n_head,d_ff", CONFIGS)
def test_param_counts_match_transformers_gpt2_lm_head_model(vocab, positions, d_model, n_layer,
                                                            n_head, d_ff):
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=d_model,
                                     n_layer=n_layer, n_head=n_head, n_inner=d_ff)
    model = transformers.GPT2LMHeadModel(config)
    total = sum(p.numel() for p in model.parameters())  # the tied LM head counts once
    embeddings = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    assert gpt2_params(vocab, positions, d_model, n_layer, d_ff) == total
    assert gpt2_params(vocab, positions, d_model, n_layer, d_ff, embeddings=False) == total - embeddings


def test_gpt2_small_has_124m_parameters():
    assert gpt2_params(50257, 1024, 768, 12) == 124_439_808
    assert gpt2_member(768, 12)["params_non_embedding"] == 85_056_000


def test_member_flops_per_token_is_the_project_count():
    member = gpt2_member(256, 4, seq_len=512, vocab_size=1000, n_positions=512)
    matmul = 4 * (4 * 256 * 256 + 2 * 256 * 1024) + 1000 * 256  # q, k, v, o, MLP per layer; the tied LM head
    assert member["flops_per_token"] == 6 * matmul + 12 * 4 * 512 * 256 == gpt2_flops_per_token(1000, 256, 4, 512)


def test_family_keeps_aspect_ratio_and_head_dim():
    family = gpt2_family([512, 128, 256], aspect_ratio=32, head_dim=32, vocab_size=1000,
                         n_positions=256)
    assert [m["d_model"] for m in family] == [128, 256, 512]  # sorted by size
    for m in family:
        assert m["n_layer"] == m["d_model"] // 32
        assert m["n_head"] * 32 == m["d_model"]
        assert m["d_ff"] == 4 * m["d_model"]
        assert set(m) == {"name", "d_model", "n_layer", "n_head", "d_ff", "params",
                          "params_non_embedding", "flops_per_token"}


def test_width_for_params_picks_the_closest_member():
    assert width_for_params(85e6) == 768  # GPT-2 small, non-embedding


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="not a multiple of head_dim"):
        gpt2_member(100, 2)
    with pytest.raises(ValueError, match="d_model must be a positive integer"):
        gpt2_family([0])
    with pytest.raises(ValueError, match="widths is empty"):
        gpt2_family([])
