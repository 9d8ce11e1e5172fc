"""Gemma 3's text model as simlab's own modules, for a model built from its cached codes
(`from_codes`): the module tree, parameter names, masks and torch ops, in order, of transformers'
Gemma3ForCausalLM (its logits and hidden states bit for bit: tested), without importing
transformers' modeling stack. `transformers.modeling_utils` and `masking_utils` cost about 1.2 s and
130 MiB at start-up (torch._dynamo, torch.distributed.tensor and scipy.optimize come with them),
more than everything else the embedded model needs to get ready.

Only what simlab calls is here: sdpa attention, causal (not bidirectional) masks, default RoPE,
no 2D attention mask; `supports` says whether a config is one of those, else the caller builds
transformers' own model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.configuration_utils import PreTrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from simlab.models import native, native_attention


@strict(accept_kwargs=True)
@dataclass(repr=False)
class Gemma3TextConfig(PreTrainedConfig):
    """transformers' Gemma3TextConfig: the same fields, defaults and layer types."""

    model_type = "gemma3_text"
    vocab_size: int = 262_208
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131_072
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    bos_token_id: int | None = 2
    tie_word_embeddings: bool = True
    rope_parameters: dict | None = None
    attention_bias: bool = False
    attention_dropout: int | float | None = 0.0
    query_pre_attn_scalar: int = 256
    sliding_window: int | None = 4096
    layer_types: list[str] | None = None
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    use_bidirectional_attention: bool | None = False

    default_theta = {"global": 1_000_000.0, "local": 10_000.0}

    def __post_init__(self, **kwargs):
        self._sliding_window_pattern = kwargs.get("sliding_window_pattern", 6)
        if self.layer_types is None:
            self.layer_types = [
                "sliding_attention" if bool((i + 1) % self._sliding_window_pattern) else "full_attention"
                for i in range(self.num_hidden_layers)
            ]
        super().__post_init__(**kwargs)


def supports(folder: Path) -> bool:
    """Whether the folder's config.json is a Gemma 3 text model this module builds exactly: causal,
    default RoPE given per layer kind, GELU-tanh, no attention softcapping."""
    try:
        raw = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    rope = raw.get("rope_parameters")
    return (
        raw.get("model_type") == "gemma3_text"
        and raw.get("architectures") in (None, ["Gemma3ForCausalLM"])
        and not raw.get("use_bidirectional_attention")
        and raw.get("attn_logit_softcapping") is None
        and raw.get("hidden_activation", "gelu_pytorch_tanh") == "gelu_pytorch_tanh"
        and isinstance(raw.get("layer_types"), list)
        and set(raw["layer_types"]) <= {"full_attention", "sliding_attention"}
        and isinstance(rope, dict)
        and all(
            isinstance(rope.get(kind), dict) and rope[kind].get("rope_type") == "default"
            for kind in set(raw["layer_types"])
        )
    )


def load_config(folder: Path) -> Gemma3TextConfig:
    config = Gemma3TextConfig.from_pretrained(folder)
    config._attn_implementation = "sdpa"
    return config


@dataclass
class GenerationConfig:
    """The generation config's token ids, all that simlab reads of it."""

    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    @classmethod
    def read(cls, folder: Path, config: PreTrainedConfig) -> GenerationConfig:
        try:
            raw = json.loads((Path(folder) / "generation_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = {}
        names = ("bos_token_id", "eos_token_id", "pad_token_id")
        return cls(**{name: raw.get(name, getattr(config, name, None)) for name in names})


# -- masks: what transformers' create_causal_mask / create_sliding_window_causal_mask give sdpa
# attention with no 2D attention mask (None where sdpa's own is_causal does the same)


def _mask(cache, q_length: int, batch: int, device, layer: int, window: int | None):
    if cache is not None:
        q_offset = cache.get_query_offset(layer)
        kv_length, kv_offset = cache.get_mask_sizes(q_length, layer)
    else:
        q_offset, kv_length, kv_offset = 0, q_length, 0
    if window is None or kv_length < window:
        if q_length == 1 or kv_length == q_length or q_offset == 0:
            return None
    q = (torch.arange(q_length, device=device) + q_offset)[None, None, :, None]
    kv = (torch.arange(kv_length, device=device) + kv_offset)[None, None, None, :]
    mask = kv <= q
    if window is not None:
        mask = torch.ones((), dtype=torch.bool, device=device) & (kv > q - window) & mask
    return mask.expand(batch, -1, q_length, kv_length)


def masks_for(config, cache, q_length: int, batch: int, device) -> dict:
    """The full- and sliding-attention masks of a forward over q_length new tokens after `cache`."""
    sliding = list(getattr(cache, "is_sliding", None) or [])
    full = next((i for i, s in enumerate(sliding) if not s), 0)
    out = {"full_attention": _mask(cache, q_length, batch, device, full, None)}
    if "sliding_attention" in config.layer_types:
        first = sliding.index(True) if True in sliding else 0
        out["sliding_attention"] = _mask(cache, q_length, batch, device, first, config.sliding_window)
    return out


# -- modules


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim: int = 1):
    qr, kr = (native.rotary(q, cos, sin), native.rotary(k, cos, sin)) if unsqueeze_dim == 1 else (None, None)
    if qr is not None and kr is not None:  # torch's bits, one call each (models.native.rotary)
        return qr, kr
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class Gemma3TextScaledWordEmbedding(nn.Embedding):
    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int, embed_scale: float):
        # the table as given (uninitialised): nn.Embedding's own normal_ init would go through
        # torch._refs, which imports torch._dynamo (0.8 s) on the meta device
        table = torch.empty(num_embeddings, embedding_dim)
        super().__init__(num_embeddings, embedding_dim, padding_idx, _weight=table)
        self.embed_scale = nn.Buffer(torch.tensor(embed_scale, device="cpu"), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.embed_scale.to(self.weight.dtype)


class GELUTanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate="tanh")


class Gemma3MLP(nn.Module):
    def __init__(self, config: Gemma3TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = GELUTanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Gemma3RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        output = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (output * (1.0 + self.weight.float())).type_as(x)


class Gemma3RotaryEmbedding(nn.Module):
    def __init__(self, config: Gemma3TextConfig):
        super().__init__()
        dim = config.head_dim or config.hidden_size // config.num_attention_heads
        for kind in sorted(set(config.layer_types)):
            base = config.rope_parameters[kind]["rope_theta"]
            inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float, device="cpu") / dim))
            setattr(self, f"{kind}_inv_freq", nn.Buffer(inv_freq, persistent=False))

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str):
        inv_freq = getattr(self, f"{layer_type}_inv_freq")
        freqs = position_ids[..., None].float() * inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * 1.0).to(dtype=x.dtype), (emb.sin() * 1.0).to(dtype=x.dtype)


# the attention function by the config's _attn_implementation (transformers' ALL_ATTENTION_FUNCTIONS):
# "simlab" is models.native_attention.attention; engine.ragged wraps each so rows attend to their own caches
ATTENTION = {"sdpa": sdpa_attention_forward, "simlab": native_attention.attention}


class Gemma3Attention(nn.Module):
    def __init__(self, config: Gemma3TextConfig, layer_idx: int):
        super().__init__()
        self.config = config  # its _attn_implementation picks the attention function at each call
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = config.query_pre_attn_scalar**-0.5
        self.is_causal = True
        bias, width, heads = config.attention_bias, config.hidden_size, config.num_attention_heads
        self.q_proj = nn.Linear(width, heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(width, config.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(width, config.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * self.head_dim, width, bias=bias)
        sliding = config.layer_types[layer_idx] == "sliding_attention"
        self.sliding_window = config.sliding_window if sliding else None
        self.q_norm = Gemma3RMSNorm(config.head_dim, eps=config.rms_norm_eps)
        self.k_norm = Gemma3RMSNorm(config.head_dim, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask, cache, position_ids):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_norm(self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2))
        k = self.k_norm(self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2))
        v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out, _ = ATTENTION[self.config._attn_implementation](
            self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling,
            sliding_window=self.sliding_window, position_ids=position_ids,
        )  # fmt: skip
        return self.o_proj(out.reshape(*input_shape, -1).contiguous())


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config: Gemma3TextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = Gemma3Attention(config, layer_idx)
        self.mlp = Gemma3MLP(config)
        width, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = Gemma3RMSNorm(width, eps=eps)
        self.post_attention_layernorm = Gemma3RMSNorm(width, eps=eps)
        self.pre_feedforward_layernorm = Gemma3RMSNorm(width, eps=eps)
        self.post_feedforward_layernorm = Gemma3RMSNorm(width, eps=eps)

    def forward(self, hidden_states, position_embeddings, attention_mask, cache, position_ids):
        out = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask, cache, position_ids
        )
        hidden_states = hidden_states + self.post_attention_layernorm(out)
        out = self.mlp(self.pre_feedforward_layernorm(hidden_states))
        return hidden_states + self.post_feedforward_layernorm(out)


class Gemma3TextModel(nn.Module):
    def __init__(self, config: Gemma3TextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = Gemma3TextScaledWordEmbedding(
            config.vocab_size, config.hidden_size, config.pad_token_id, embed_scale=config.hidden_size**0.5
        )
        self.layers = nn.ModuleList(Gemma3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = Gemma3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Gemma3RotaryEmbedding(config)

    def forward(self, input_ids, cache, position_ids, hidden_states: list | None):
        config = self.config
        h = self.embed_tokens(input_ids)
        if position_ids is None:
            seen = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(h.shape[1], device=h.device) + seen).unsqueeze(0)
        mask = masks_for(config, cache, h.shape[1], h.shape[0], h.device)
        rotary = {kind: self.rotary_emb(h, position_ids, kind) for kind in set(config.layer_types)}
        for i, layer in enumerate(self.layers[: config.num_hidden_layers]):
            if hidden_states is not None:
                hidden_states.append(h)
            kind = config.layer_types[i]
            h = layer(h, rotary[kind], mask[kind], cache, position_ids)
        h = self.norm(h)
        if hidden_states is not None:
            hidden_states.append(h)  # the last block's output normed, as transformers ties it
        return h


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    past_key_values: object = None
    hidden_states: tuple | None = None

    cache = property(lambda self: self.past_key_values)


class Gemma3ForCausalLM(nn.Module):
    """`model(input_ids=..., cache=..., position_ids=..., use_cache=..., logits_to_keep=...,
    output_hidden_states=...)` as transformers' model answers it (logits, the cache, hidden states)."""

    base_model_prefix = "model"

    def __init__(self, config: Gemma3TextConfig, generation_config: GenerationConfig | None = None):
        super().__init__()
        self.config = config
        self.generation_config = generation_config
        self.model = Gemma3TextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @property
    def base_model(self) -> nn.Module:
        return self.model

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.parameters() if p.is_floating_point()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, module: nn.Module) -> None:
        self.model.embed_tokens = module

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def tie_weights(self) -> None:
        self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        past_key_values=None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool = False,
    ) -> CausalLMOutput:
        if attention_mask is not None:
            raise ValueError("simlab's Gemma 3 takes no 2D attention mask (rows are never padded)")
        cache = cache if cache is not None else past_key_values
        if cache is None and (self.config.use_cache if use_cache is None else use_cache):
            cache = DynamicCache(config=self.config)
        states: list | None = [] if output_hidden_states else None
        h = self.model(input_ids, cache, position_ids, states)
        if isinstance(logits_to_keep, torch.Tensor):  # positions, as transformers takes them
            h = h[:, logits_to_keep, :]
        elif logits_to_keep:
            h = h[:, -logits_to_keep:, :]
        logits = self.lm_head(h)
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return CausalLMOutput(logits, cache, tuple(states) if states is not None else None)


def build(folder: Path) -> Gemma3ForCausalLM:
    """The model from the folder's configs with its weights and embedding on the meta device (to
    be assigned or replaced); RoPE frequencies and the embedding scale are real."""
    config = load_config(folder)
    with torch.device("meta"):
        model = Gemma3ForCausalLM(config, GenerationConfig.read(folder, config))
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval().requires_grad_(False)
