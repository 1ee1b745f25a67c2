"""Test fixture (written for parity's tests, not taken from any model): remote modeling code
in Qwen v1's module layout, with the traps real remote code sets for a loader under
transformers 5 --

* an import of ``transformers_stream_generator`` (missing, or broken under transformers 5),
* a call of ``self.get_head_mask`` (removed from ``PreTrainedModel``),
* a non-persistent buffer the forward depends on (``logit_scale``, computed in __init__),
* an ``_init_weights`` that re-initializes every ``c_proj.weight`` below the module it is
  given, loaded or not (as Qwen v1's does).

The numbers are parity's clean-room Qwen v1: loaded right, this model equals it exactly.
"""
import torch
import transformers_stream_generator  # noqa: F401  (a trap: see the docstring)
from transformers import PreTrainedModel

from parity.models.qwen import QWenConfig as CleanConfig
from parity.models.qwen import QWenLMHeadModel as CleanModel
from parity.models.qwen import QWenOutput

from .configuration_tinyqwen import TinyQWenConfig


class TinyQWenLMHeadModel(PreTrainedModel):
    config_class = TinyQWenConfig
    base_model_prefix = "transformer"

    def __init__(self, config):
        super().__init__(config)
        clean = CleanModel(CleanConfig.from_dict(config.to_dict()))
        self.transformer = clean.transformer
        self.lm_head = clean.lm_head
        self.register_buffer("logit_scale", torch.ones(()), persistent=False)
        self.post_init()

    def _init_weights(self, module):
        for name, p in module.named_parameters():
            if name.endswith("c_proj.weight"):
                p.data.normal_(mean=0.0, std=0.02)

    def forward(self, input_ids, past_key_values=None, use_cache=False, attention_mask=None, **kwargs):
        self.get_head_mask(None, self.config.n_layer)
        hidden, presents = self.transformer(input_ids, past_key_values, use_cache)
        return QWenOutput(logits=self.lm_head(hidden) * self.logit_scale, past_key_values=presents)
