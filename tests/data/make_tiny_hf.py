"""A tiny Hugging Face model folder for the `autotp train --llamafactory` tests, written in a second.

    make_tiny_hf.py OUT_DIR

The tokenizer is byte-level with no merges, so the id of every byte is the byte itself (the tests can
write the expected ids of any text by hand), plus the special tokens of LLaMA-Factory's chatml / qwen
and llama3 templates at fixed ids (SPECIALS below; eos <|endoftext|>, bos <|begin_of_text|>). The
model is a LlamaForCausalLM with that vocabulary (263), 2 layers, hidden 32, 4 heads, 2 kv heads,
weights from torch.manual_seed(0), saved as safetensors.
"""
import sys

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]  # ids 256..262


def main(out):
    byte_char = bytes_to_unicode()
    core = Tokenizer(models.BPE(vocab={byte_char[b]: b for b in range(256)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIALS)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>",
                                               bos_token="<|begin_of_text|>")
    assert tok.encode("A\n", add_special_tokens=False) == [65, 10] and tok.convert_tokens_to_ids("<|eot_id|>") == 262
    tok.save_pretrained(out)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      bos_token_id=259, eos_token_id=256, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    main(sys.argv[1])
