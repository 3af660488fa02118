"""A run's set-up shared by train / eval / export / predict: mesh, model, state, compiled steps."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding

from scaling_jax.checkpoint import Checkpointer
from scaling_jax.config import Config, load_config
from scaling_jax.data.dataset import Data
from scaling_jax.data.load import load_data
from scaling_jax.data.tokenizer import load_tokenizer, tokenizer_dir
from scaling_jax.errors import ConfigError, MissingFileError
from scaling_jax.mesh import batch_sharding, check_batch, make_mesh, merge_rules
from scaling_jax.models import save_pretrained
from scaling_jax.models.peft import save_peft_adapter
from scaling_jax.tree import flat_dict
from scaling_jax.train import build
from scaling_jax.train.evaluate import evaluate
from scaling_jax.train.mup import mup_report
from scaling_jax.train.optim import make_optimizer
from scaling_jax.train.state import TrainState
from scaling_jax.train.step import init_state, make_eval_step, make_train_step


@dataclass
class Session:
    cfg: Config
    mesh: Mesh
    rules: dict
    batch_sharding: NamedSharding
    tokenizer: Any
    data: Data | None
    label_names: list[str]
    model: Any
    trainable: build.Trainable
    tx: Any
    schedule: Any
    state: TrainState
    state_sharding: Any
    train_step: Any
    eval_step: Any
    mup: dict | None = None  # muP's learning-rate groups (train/mup.py mup_report); None under SP

    @property
    def abstract_state(self) -> Any:
        """ShapeDtypeStructs carrying the target shardings: what a checkpoint restores into."""
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self.state, self.state_sharding)

    def model_params(self, trained: Any) -> Any:
        """The model's own params from the trained tree (LoRA merged in)."""
        return self.trainable.param_fn(trained)

    def summary(self) -> dict:
        total = build.count_params(self.trainable.tree)
        frozen = self.trainable.report.get("frozen_params", 0)
        opt_bytes = sum(x.nbytes for x in jax.tree.leaves(self.state.opt_state))
        return {"params_total": total, "params_trainable": total - frozen, "opt_state_bytes": int(opt_bytes),
                "flops_per_token": self.model.flops_per_token(self.cfg.data.seq_len),
                "mesh": dict(self.mesh.shape), "devices": jax.device_count(),
                "processes": jax.process_count(), **(self.data.notes if self.data else {}),
                **({"mup": self.mup} if self.mup else {})}


def open_session(cfg: Config, *, with_data: bool = True) -> Session:
    """Builds everything a run needs, with the optimizer state born sharded. Without data, label
    names come from the run directory's labels.json (written by training)."""
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    rules = merge_rules(cfg.mesh.rules)
    check_batch(cfg.data.batch_size // cfg.train.grad_accum, mesh, rules, "data.batch_size / train.grad_accum")
    check_batch(cfg.data.eval_batch_size, mesh, rules, "data.eval_batch_size")
    bsh = batch_sharding(mesh, rules)
    tokenizer = load_tokenizer(tokenizer_dir(cfg))
    data = load_data(cfg, tokenizer) if with_data else None
    labels_file = cfg.run_dir / "labels.json"
    if data is not None:
        label_names = data.label_names
    elif labels_file.is_file():
        label_names = json.loads(labels_file.read_text())
    else:
        label_names = []
    id2label = {i: n for i, n in enumerate(label_names)} or None
    model = build.build_model(cfg, num_labels=len(label_names) or None, id2label=id2label)
    positions = model.config.max_position_embeddings
    if cfg.data.seq_len > positions:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds the {positions} positions of the model "
                          f"(model.pretrained={cfg.model.pretrained or '(none)'}); lower data.seq_len")
    trainable = build.make_trainable(cfg, model)
    mup = None
    if cfg.model.parametrization == "mup":
        mup = mup_report(trainable.tree, build.parametrization_of(cfg), cfg.model.d_model)
    hidden_lr = mup["hidden_lr_multiplier"] if mup else None
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps, freeze_labels=trainable.freeze_labels,
                                  stack_layers=cfg.model.scan_layers, hidden_lr_multiplier=hidden_lr)
    state, state_sh = init_state(trainable.tree, trainable.logical, tx, mesh=mesh, rules=rules,
                                 seed=cfg.train.seed)
    # The state owns the params now: the loaded host copy would be a second one for the whole run.
    model = dataclasses.replace(model, params=jax.eval_shape(lambda t: t, model.params))
    trainable = dataclasses.replace(trainable, tree=jax.eval_shape(lambda t: t, trainable.tree))
    train_step = make_train_step(model, tx, mesh=mesh, state_sharding=state_sh, batch_sharding=bsh,
                                 grad_accum=cfg.train.grad_accum,
                                 skip_nonfinite=cfg.train.nan_policy == "skip", param_fn=trainable.param_fn,
                                 stack_layers=cfg.model.scan_layers)
    eval_step = make_eval_step(model, mesh=mesh, params_sharding=state_sh.params, batch_sharding=bsh,
                               param_fn=trainable.param_fn)
    return Session(cfg, mesh, rules, bsh, tokenizer, data, label_names, model, trainable, tx, schedule,
                   state, state_sh, train_step, eval_step, mup)


def make_checkpointer(cfg: Config, read_only: bool = False):
    return Checkpointer(cfg.run_dir / "checkpoints", read_only=read_only,
                        every=cfg.checkpoint.every or cfg.train.steps,
                        max_to_keep=cfg.checkpoint.max_to_keep,
                        best_k=cfg.checkpoint.best_k if cfg.train.early_stopping_metric else 0,
                        best_metric=cfg.train.early_stopping_metric or "eval/loss",
                        best_mode=cfg.train.early_stopping_mode, async_save=cfg.checkpoint.async_save)


def restore_params(session: Session, which: str = "best") -> tuple[int, Any]:
    """(step, trained tree) from the run's best checkpoint (else latest); an error when there is none."""
    ckpt = make_checkpointer(session.cfg, read_only=True)  # never clean up a live trainer's tmp dirs
    try:
        got = ckpt.restore_best(session.abstract_state) if which == "best" and ckpt.best_k else None
        got = got or ckpt.restore_latest(session.abstract_state)
    finally:
        ckpt.close()
    if got is None:
        raise MissingFileError(f"{session.cfg.run_dir / 'checkpoints'}: no checkpoint to load")
    return got[0], got[1].params


def evaluate_run(cfg: Config) -> dict[str, dict]:
    session = open_session(cfg)
    step, params = restore_params(session)
    out = {}
    for split in ("valid", "test"):
        ds = getattr(session.data, split)
        if ds is not None:
            out[split] = {"from_step": step, **evaluate(session.eval_step, params, ds, cfg, session.data,
                                                         session.batch_sharding)}
    return out


def run_config(run_dir: str | Path, overrides: tuple[str, ...] = ()) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise MissingFileError(f"{run_dir}: not a run directory (no config.yaml)")
    return load_config(path, (f"run.dir={run_dir}", *overrides))


def export_run(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best", peft: bool = False) -> Path:
    """Writes the run's best (or latest) params, LoRA merged, as a Hugging Face directory; with
    `peft`, the LoRA factors alone as a PEFT adapter directory for the run's pretrained base."""
    cfg = run_config(run_dir, ("mesh.data=-1", "mesh.fsdp=1", "mesh.tensor=1"))
    session = open_session(cfg, with_data=False)
    _, trained = restore_params(session, checkpoint)
    if peft:
        if cfg.model.lora_rank <= 0 or not cfg.model.pretrained:
            raise ConfigError("export --peft: the run must be LoRA (model.lora_rank > 0) on a pretrained model")
        labels = session.trainable.freeze_labels
        trained_base = [p for p, v in flat_dict(labels["base"]).items() if v == "train"] if labels else ["all"]
        if trained_base:
            raise ConfigError(f"export --peft: base parameters were trained beside LoRA ({trained_base[:3]}); "
                              f"an adapter cannot carry them: export the merged model")
        save_peft_adapter(session.model, jax.device_get(trained["lora"]), out_dir, rank=cfg.model.lora_rank,
                          alpha=cfg.model.lora_alpha, base_model=session.model.source_dir)
        return Path(out_dir)
    params = jax.device_get(session.model_params(trained))
    save_pretrained(session.model, params, out_dir, tokenizer_dir=tokenizer_dir(cfg))
    return Path(out_dir)
