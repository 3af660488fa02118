"""Packed rows (data/packing.py) against the examples alone: every example's logits within 1e-5 in
float32, and the packed batch's loss and gradients equal to the padded batch's (BERT, GPT-2 and
Llama / Mistral with a window shorter than the rows; token-, sequence- and LM tasks); first-fit decreasing's invariants; length-bucketed eval."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling_jax.data.align import collate
from scaling_jax.data.arrays import ArrayDataset, bucket_lengths
from scaling_jax.data.packing import first_fit_decreasing, pack, segments_from_eos, unpack_rows
from scaling_jax.models import BertConfig, GPT2Config, LlamaConfig, init_model
from scaling_jax.train.losses import loss_for_task

VOCAB, L = 50, 24
BERT = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                  max_position_embeddings=L, type_vocab_size=2, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
GPT2 = GPT2Config(vocab_size=VOCAB, n_positions=L, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                  attn_pdrop=0.0)
LLAMA = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=48, max_position_embeddings=L, tie_word_embeddings=False)
MISTRAL = LlamaConfig(**{**vars(LLAMA), "model_type": "mistral", "sliding_window": 4})
LENGTHS = (7, 3, 11, 5, 9, 2, 13, 6)


def _examples(task, rng=np.random.default_rng(0)):
    out = []
    for n in LENGTHS:
        e = {"input_ids": rng.integers(1, VOCAB, n).astype(np.int32),
             "token_type_ids": (np.arange(n) >= n // 2).astype(np.int32)}
        if task == "token_classification":
            e["labels"] = rng.integers(0, 3, n).astype(np.int32)
            e["labels"][0] = -100
        elif task == "sequence_classification":
            e["label"] = int(rng.integers(0, 3))
        out.append(e)
    return out


def _padded(examples, task):
    B = len(examples)
    b = {"input_ids": np.zeros((B, L), np.int32), "attention_mask": np.zeros((B, L), np.int32),
         "token_type_ids": np.zeros((B, L), np.int32)}
    if task == "token_classification":
        b["labels"] = np.full((B, L), -100, np.int32)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        b["input_ids"][i, :n], b["attention_mask"][i, :n], b["token_type_ids"][i, :n] = (
            e["input_ids"], 1, e["token_type_ids"])
        if task == "token_classification":
            b["labels"][i, :n] = e["labels"]
    if task == "sequence_classification":
        b["labels"] = np.asarray([e["label"] for e in examples], np.int32)
    return b


def _types(model, token_type_ids):
    return None if isinstance(model.config, LlamaConfig) else jnp.asarray(token_type_ids)  # Llama has none


def _batch_apply(model, batch, params=None):
    packed = {k: jnp.asarray(batch[k]) for k in ("positions", "segment_ids", "segment_starts", "segment_ends")
              if k in batch}
    return model.apply(model.params if params is None else params, jnp.asarray(batch["input_ids"]),
                       jnp.asarray(batch["attention_mask"]), _types(model, batch["token_type_ids"]), **packed)


CASES = [(BERT, "token_classification"), (BERT, "sequence_classification"), (GPT2, "causal_lm"),
         (GPT2, "sequence_classification"), (LLAMA, "causal_lm"), (LLAMA, "sequence_classification"),
         (MISTRAL, "causal_lm")]


@pytest.mark.parametrize("config,task", CASES, ids=lambda c: getattr(c, "model_type", c))
def test_packed_rows_give_each_example_its_own_logits_loss_and_gradients(config, task):
    model = init_model(config, task=task, num_labels=3 if "classification" in task else None, seed=4)
    examples = _examples(task)
    rows = pack(examples, L)
    assert len(rows.placement) < len(examples)  # several examples share rows
    got = np.asarray(jax.jit(lambda b: _batch_apply(model, b))(rows.arrays))
    alone = [np.asarray(model.apply(model.params, jnp.asarray(e["input_ids"])[None], None,
                                    _types(model, e["token_type_ids"][None])))[0] for e in examples]
    if task == "sequence_classification":  # one logit row per segment slot, row-major
        for r, placed in enumerate(rows.placement):
            for s, (i, _, _) in enumerate(placed):
                np.testing.assert_allclose(got[r, s], alone[i], atol=1e-5, rtol=0)
    else:
        for i, logits in enumerate(unpack_rows(got, rows.placement, len(examples))):
            np.testing.assert_allclose(logits, alone[i], atol=1e-5, rtol=0)
    # the same loss and gradients as the padded, unpacked batch
    loss_fn = loss_for_task(task)
    padded = _padded(examples, task)

    def mean_loss(params, batch):
        loss_sum, count, _ = loss_fn(_batch_apply(model, batch, params), {k: jnp.asarray(v) for k, v in batch.items()})
        return loss_sum / count, count

    (l_pack, n_pack), g_pack = jax.value_and_grad(mean_loss, has_aux=True)(model.params, rows.arrays)
    (l_pad, n_pad), g_pad = jax.value_and_grad(mean_loss, has_aux=True)(model.params, padded)
    assert float(n_pack) == float(n_pad) > 0
    np.testing.assert_allclose(l_pack, l_pad, rtol=1e-6)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_pad), jax.tree.leaves(g_pack)):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_first_fit_decreasing_places_every_example_once_within_capacity():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 40, 500)
    rows = first_fit_decreasing(lengths, 64)
    placed = sorted(i for r in rows for i in r)
    assert placed == list(range(500))
    assert all(sum(lengths[i] for i in r) <= 64 for r in rows)
    assert len(rows) <= int(np.ceil(lengths.sum() / 64 * 11 / 9)) + 1  # Johnson's bound
    with pytest.raises(ValueError, match="example 1 has length 70"):
        first_fit_decreasing([3, 70], 64)


def test_documents_in_a_window_get_their_own_segments_and_no_cross_document_target():
    eos = 0
    ids = np.array([[5, 6, 0, 7, 8, 9, 0, 4]])
    seg, pos = segments_from_eos(ids, eos)
    assert seg.tolist() == [[1, 1, 1, 2, 2, 2, 2, 3]] and pos.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones_like(ids), "segment_ids": jnp.asarray(seg)}
    _, count, _ = loss_for_task("causal_lm")(jnp.zeros((1, 8, 10)), batch)
    assert float(count) == 7 - 2  # the targets after each EOS start a new document


def test_bucketed_eval_batches_cover_every_example_once_and_cut_to_a_bucket():
    rng = np.random.default_rng(2)
    lens = rng.integers(3, 33, 37)
    mask = (np.arange(32)[None] < lens[:, None]).astype(np.int32)
    ds = ArrayDataset({"input_ids": mask * 7, "attention_mask": mask, "labels": mask - 1})
    assert bucket_lengths(32, 4) == [8, 16, 24, 32] and bucket_lengths(64, 1) == [64]
    seen, widths = [], set()
    for idx, batch in ds.eval_batches(8, buckets=4):
        width = batch["input_ids"].shape[1]
        widths.add(width)
        assert width in (8, 16, 24, 32) and lens[idx].max() <= width and batch["input_ids"].shape[0] == 8
        seen += idx.tolist()
    assert sorted(seen) == list(range(37)) and len(widths) > 1
    assert [b["input_ids"].shape[1] for _, b in ds.eval_batches(8, buckets=1)] == [32] * 5


def test_collate_pads_with_the_given_id():
    from scaling_jax.data.align import Window
    w = Window(0, 0, 1, np.array([3, 4], np.int32), np.array([-100, 1], np.int32), (None, 0))
    assert collate([w], length=4, pad_id=9)["input_ids"].tolist() == [[3, 4, 9, 9]]
