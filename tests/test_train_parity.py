"""Training parity with PyTorch for every family (BERT, GPT-2, Llama): the gradients of our loss equal
torch autograd's on transformers' model (max |ours - torch| / max |torch| <= 1e-4 per tensor), and
updates of our configured AdamW (`train/optim.make_optimizer`: decay mask, clipping, warmup + cosine
schedule) from the same gradients equal `torch.optim.AdamW` with `clip_grad_norm_` within 1e-6."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import torch
import transformers

from scaling_jax.config import OptimConfig
from scaling_jax.models import hf, load_pretrained
from scaling_jax.train.losses import loss_for_task
from scaling_jax.train.optim import decay_mask, make_optimizer
from scaling_jax.tree import flat_dict, unflat_dict

GRAD_TOL, ADAM_TOL = 1e-4, 1e-6
# Without RoPE, a key bias adds q·b to every logit of a query's row, which softmax cancels: its exact
# gradient is 0 and both sides hold float32 rounding there, so a ratio of the two is noise. Those
# tensors must be at rounding level on both sides instead (<= 1e-6 of the largest gradient). (Llama
# rotates k + b by position, so its k_proj bias has a real gradient, checked like the rest.)
KEY_BIAS = re.compile(r"(attention/self/key|attn/key)/bias$")
VOCAB = 67
CASES = {
    "bert": ("BertForTokenClassification", "token_classification", lambda: transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
        max_position_embeddings=16, num_labels=5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)),
    "gpt2": ("GPT2LMHeadModel", "causal_lm", lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0)),
    "llama": ("LlamaForCausalLM", "causal_lm", lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=False, attention_bias=True,
        pad_token_id=0)),
}
OPTIM = OptimConfig(lr=1e-2, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, warmup_steps=1, schedule="cosine",
                    end_lr_ratio=0.1, clip_norm=0.05)
TOTAL_STEPS, STEPS = 5, 3


def lr_at(step: int) -> float:
    """OPTIM's schedule in closed form: linear warmup from 0 over 1 step, then cosine to 0.1 lr."""
    w = OPTIM.warmup_steps
    if step < w:
        return OPTIM.lr * step / w
    t = (step - w) / (TOTAL_STEPS - w)
    return OPTIM.lr * ((1 - OPTIM.end_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)) + OPTIM.end_lr_ratio)


def setup(name, tmp_path):
    cls, task, make_cfg = CASES[name]
    torch.manual_seed(0)
    model = getattr(transformers, cls)(make_cfg())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(tmp_path / name)
    ours = load_pretrained(tmp_path / name, task=task)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, (3, 9)).astype(np.int32)
    mask = (np.arange(9)[None] < np.array([[9], [6], [4]])).astype(np.int32)
    ids[mask == 0] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if task == "token_classification":
        labels = rng.integers(0, 5, ids.shape).astype(np.int32)
        labels[mask == 0] = -100
        labels[:, 0] = -100
        batch["labels"] = labels
        torch_labels = labels
    else:
        torch_labels = np.where(mask == 1, ids, -100)
    return model, ours, task, batch, torch_labels


def mapping(family, ours, model):
    """{our path: (torch parameter, layout)}, through the family's key table."""
    named = dict(model.named_parameters())
    out = {}
    for path in flat_dict(ours.params):
        key, layout = family.hf_key(path)
        key = key if key in named else key[len(family.prefix):]
        out[path] = (named[key], layout)
    return out


def to_ours(path, tensor, layout):
    return layout.to_ours(path.rsplit("/", 1)[1], tensor.detach().numpy())


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_and_adamw_updates_match_torch(name, tmp_path):
    model, ours, task, batch, torch_labels = setup(name, tmp_path)
    family = hf.family_of(ours.config)
    loss_fn = loss_for_task(task)

    def mean_loss(params):
        total, count, _ = loss_fn(ours.apply(params, batch["input_ids"], batch["attention_mask"]), batch)
        return total / count

    loss, grads = jax.jit(jax.value_and_grad(mean_loss))(ours.params)
    model.train()  # dropout is 0: train mode only so that nothing differs from training
    out = model(torch.tensor(batch["input_ids"], dtype=torch.long),
                attention_mask=torch.tensor(batch["attention_mask"], dtype=torch.long),
                labels=torch.tensor(torch_labels, dtype=torch.long))
    out.loss.backward()
    assert float(loss) == pytest.approx(out.loss.item(), rel=1e-5)
    m = mapping(family, ours, model)
    worst = 0.0
    largest = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads))
    for path, g in flat_dict(grads).items():
        ref = to_ours(path, m[path][0].grad, m[path][1])
        if KEY_BIAS.search(path):
            assert max(np.abs(np.asarray(g)).max(), np.abs(ref).max()) <= 1e-6 * largest, path
            continue
        rel = float(np.abs(np.asarray(g) - ref).max() / max(np.abs(ref).max(), 1e-30))
        worst = max(worst, rel)
        assert rel <= GRAD_TOL, f"{path}: gradient relative error {rel:.3g}"

    # AdamW from the same (torch's) gradients, STEPS updates through warmup and cosine.
    torch_grads = {p.data_ptr(): p.grad.detach().clone() for p in model.parameters()}
    same_grads = unflat_dict({path: jnp.asarray(to_ours(path, m[path][0].grad, m[path][1])) for path in m})
    decay = flat_dict(decay_mask(ours.params))
    by_param: dict[int, set] = {}
    for path, (p, _) in m.items():
        by_param.setdefault(p.data_ptr(), set()).add(decay[path])
    assert all(len(v) == 1 for v in by_param.values())  # fused c_attn: q/k/v agree
    params = list({p.data_ptr(): p for p, _ in m.values()}.values())
    groups = [{"params": [p for p in params if by_param[p.data_ptr()] == {d}], "weight_decay": wd}
              for d, wd in ((True, OPTIM.weight_decay), (False, 0.0))]
    opt = torch.optim.AdamW(groups, lr=OPTIM.lr, betas=(OPTIM.b1, OPTIM.b2), eps=OPTIM.eps)
    tx, _ = make_optimizer(OPTIM, TOTAL_STEPS)
    state, ours_params = tx.init(ours.params), ours.params
    update = jax.jit(lambda g, s, p: tx.update(g, s, p))
    norm = float(optax.tree.norm(same_grads))
    assert norm > OPTIM.clip_norm  # clipping is active
    for step in range(STEPS):
        for p in params:
            p.grad = torch_grads[p.data_ptr()].clone()
        torch.nn.utils.clip_grad_norm_(params, OPTIM.clip_norm)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.step()
        updates, state = update(same_grads, state, ours_params)
        ours_params = optax.apply_updates(ours_params, updates)
        for path, x in flat_dict(ours_params).items():
            err = float(np.abs(np.asarray(x) - to_ours(path, *m[path])).max())
            assert err <= ADAM_TOL, f"step {step} {path}: |ours - torch AdamW| = {err:.3g}"
    print(f"{name}: worst gradient relative error {worst:.3g}")
