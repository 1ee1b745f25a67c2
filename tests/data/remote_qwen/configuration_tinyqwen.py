"""Test fixture (written for parity's tests, not taken from any model): the config class of a
remote-code checkpoint in Qwen v1's layout."""
from transformers import PretrainedConfig


class TinyQWenConfig(PretrainedConfig):
    model_type = "qwen"

    def __init__(self, vocab_size=1000, n_embd=64, n_head=4, kv_channels=16, n_layer=2, ffn_hidden_size=344,
                 layer_norm_epsilon=1e-6, rotary_emb_base=10000.0, rotary_pct=1.0, seq_length=64,
                 use_dynamic_ntk=False, use_logn_attn=False, no_bias=True, padded_vocab_size=None, n_positions=128,
                 **kwargs):
        self.vocab_size, self.n_embd, self.n_head, self.kv_channels = vocab_size, n_embd, n_head, kv_channels
        self.n_layer, self.ffn_hidden_size, self.layer_norm_epsilon = n_layer, ffn_hidden_size, layer_norm_epsilon
        self.rotary_emb_base, self.rotary_pct, self.seq_length = rotary_emb_base, rotary_pct, seq_length
        self.use_dynamic_ntk, self.use_logn_attn, self.no_bias = use_dynamic_ntk, use_logn_attn, no_bias
        self.padded_vocab_size, self.n_positions = padded_vocab_size, n_positions
        self.num_hidden_layers, self.hidden_size, self.num_attention_heads = n_layer, n_embd, n_head
        super().__init__(**kwargs)
