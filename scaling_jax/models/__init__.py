"""Our Flax BERT, GPT-2 and Llama-family models, and their Hugging Face checkpoint import/export."""
from scaling_jax.models.bert import BertConfig, BertModel
from scaling_jax.models.fetch import KNOWN_MODELS, fetch_model
from scaling_jax.models.gpt2 import GPT2Config, GPT2Model
from scaling_jax.models.llama import LlamaConfig, LlamaModel
from scaling_jax.models.hf import (CheckpointError, Pretrained, config_from_hf_dict, init_model, load_pretrained,
                                   load_tokenizer, save_pretrained)

__all__ = ["BertConfig", "BertModel", "GPT2Config", "GPT2Model", "LlamaConfig", "LlamaModel", "CheckpointError", "Pretrained", "KNOWN_MODELS",
           "config_from_hf_dict", "fetch_model", "init_model", "load_pretrained", "load_tokenizer", "save_pretrained"]
