"""The project's one FLOP count (scaling_jax.flops), checked against a hand count and used alike by
the bench's MFU, the training log and the sweep's `flops` column."""
import pytest

from scaling_jax.flops import train_flops_per_token
from scaling_jax.models import BertConfig, GPT2Config, GPT2Model, Pretrained, init_model
from scaling_jax.scaling import gpt2_flops_per_token


def test_gpt2_small_at_sequence_1024_matches_the_hand_count():
    """GPT-2 small (d 768, 12 layers, 12 heads, vocab 50257), training FLOPs per token at T = 1024:
    per layer q, k, v, out: 4 x 768 x 768 = 2,359,296; MLP 768 x 3072 twice = 4,718,592; so 12 layers
    are 84,934,656 matmul weights, plus the tied LM head 768 x 50257 = 38,597,376: N = 123,532,032.
    6 N = 741,192,192; attention 12 x 12 layers x 1024 x 768 = 113,246,208; total 854,438,400."""
    config = GPT2Config()  # no weights: the count reads the shapes of jax.eval_shape(init)
    model = Pretrained(config, "causal_lm", None, None, GPT2Model(config, task="causal_lm"), params=None)
    assert model.matmul_params() == 123_532_032
    assert model.flops_per_token(1024) == 854_438_400
    assert gpt2_flops_per_token(50257, 768, 12, 1024) == 854_438_400


def test_bert_token_classification_counts_its_head_and_no_tied_decoder():
    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128)
    model = init_model(cfg, task="token_classification", num_labels=5)
    matmul = 2 * (4 * 64 * 64 + 2 * 64 * 128) + 64 * 5
    assert model.flops_per_token(32) == 6 * matmul + 12 * 2 * 32 * 64
    mlm = init_model(cfg, task="masked_lm")  # transform dense + decoder tied to the word embeddings
    assert mlm.matmul_params() == 2 * (4 * 64 * 64 + 2 * 64 * 128) + 64 * 64 + 1000 * 64


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="seq_len"):
        train_flops_per_token(10, 2, -1, 8)


def test_the_sweep_and_the_training_log_count_the_same_flops_for_every_member():
    """The sweep's `flops` column comes from the family formula, the training log from the built
    model: both are the one count, so they agree member by member."""
    from pathlib import Path

    from scaling_jax.commands.sweep import member_configs
    from scaling_jax.config import load_config
    from scaling_jax.train.build import build_model
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/sweep_cpu.yaml")
    for member in member_configs(cfg):
        m, seq = member.model, member.data.seq_len
        assert build_model(member).flops_per_token(seq) == gpt2_flops_per_token(m.vocab_size, m.d_model, m.n_layers,
                                                                                 seq, m.d_ff or None)
