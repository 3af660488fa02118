"""The PyTorch peer of `configs/ner.yaml` for `scaling-jax bench --finetune`: transformers' own
fine-tune of the same MiniLM-L6 on the same WNUT-17 files, as people run it: dynamic padding,
AdamW 5e-5 with linear decay, batch 32, labels on each word's first piece, test entity F1
(seqeval, default mode) after every epoch. Prints one JSON line per epoch:
{"epoch", "time": unix seconds, "test_f1"}.

    python -m scaling_jax.commands.ner_torch_peer MODEL_DIR TRAIN.conll TEST.conll [--epochs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time


def read_conll(path: str) -> list[tuple[list[str], list[str]]]:
    sentences, words, tags = [], [], []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line:
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        words.append(parts[0])
        tags.append(parts[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model_dir")
    p.add_argument("train")
    p.add_argument("test")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import torch
    from seqeval.metrics import f1_score
    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    train, test = read_conll(args.train), read_conll(args.test)
    labels = ["O"] + sorted({t for _, tags in train + test for t in tags} - {"O"})
    label_id = {t: i for i, t in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    model = AutoModelForTokenClassification.from_pretrained(args.model_dir, num_labels=len(labels),
                                                            local_files_only=True)

    def encode(sentences):
        out = []
        for words, tags in sentences:
            enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=512)
            seen, lab = set(), []
            for w in enc.word_ids():
                lab.append(-100 if w is None or w in seen else label_id[tags[w]])
                if w is not None:
                    seen.add(w)
            out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                        "token_type_ids": enc["token_type_ids"], "labels": lab, "word_ids": enc.word_ids()})
        return out

    train_enc, test_enc = encode(train), encode(test)
    collate = DataCollatorForTokenClassification(tokenizer)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "word_ids"} for r in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    steps = args.epochs * -(-len(train_enc) // args.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = list(range(len(train_enc)))
        random.shuffle(order)
        for start in range(0, len(order), args.batch_size):
            batch = collate(strip([train_enc[i] for i in order[start:start + args.batch_size]]))
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        pred_tags = []
        with torch.no_grad():
            for start in range(0, len(test_enc), 64):
                rows = test_enc[start:start + 64]
                logits = model(**{k: v for k, v in collate(strip(rows)).items() if k != "labels"}).logits
                for r, row in enumerate(rows):
                    ids = logits[r].argmax(-1).tolist()
                    first = {}
                    for pos, w in enumerate(row["word_ids"]):
                        if w is not None and w not in first:
                            first[w] = ids[pos]
                    n = len(test[start + r][0])
                    pred_tags.append([labels[first[w]] if w in first else "O" for w in range(n)])
        f1 = f1_score([tags for _, tags in test], pred_tags)
        print(json.dumps({"epoch": epoch, "time": time.time(), "test_f1": float(f1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
