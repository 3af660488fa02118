"""Data: task readers (CoNLL NER, datasets files, LM text), label alignment, arrays and sampling."""
