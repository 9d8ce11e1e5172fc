"""models.lean.decode_step: each known model's forward as the same ops without the module
machinery, bit for bit the model's own, on simlab's GGUF layers (fused) and on plain float ones."""

import contextlib

import pytest
import torch
from conftest import tiny_llama_style
from test_native import native_copy
from transformers import AutoConfig, AutoModelForCausalLM

from simlab.engine import prefix
from simlab.models import blocks, lean, native, native_attention, quant
from simlab.models.softcap import cap_rows

SHAPE = dict(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
)
# each family as its users' files make it: Qwen2 with q/k/v biases and a sliding layer, Qwen3 with
# q/k norms, Mistral with a window shorter than the test's tokens
FAMILY = {
    "llama": {},
    "mistral": {"sliding_window": 8},
    "qwen2": {
        "use_sliding_window": True,
        "sliding_window": 8,
        "max_window_layers": 1,
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
    },
    "qwen3": {"head_dim": 8},
}


def family_model(kind: str):
    torch.manual_seed(5)
    config = AutoConfig.for_model(kind, **SHAPE, **FAMILY[kind])
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random biases and norm weights, so that a step that skips one fails
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.3)
    return model


def steps_agree(model, steps: int = 20) -> int:
    """How many decode steps the lean step and the model's forward gave the same logits for (each
    is asserted, so a difference fails here). On the kernel (`native_copy`), every layer of every
    step goes through models.blocks' three calls: counted, and asserted."""
    assert lean.steps_lean(model)
    torch.manual_seed(0)
    prompt = torch.randint(3, 300, (2, 5))  # two rows, as siblings decode
    tokens = torch.randint(3, 300, (steps, 2))  # past the tiny models' sliding windows of 8
    kernel = any(isinstance(m, native.NativeLinear) for m in model.modules())
    ran = []
    with counted(ran), torch.inference_mode():
        own, mine = prefix.new_cache(model), prefix.new_cache(model)
        model(input_ids=prompt, cache=own, use_cache=True)
        model(input_ids=prompt, cache=mine, use_cache=True)
        for step in tokens:
            want = model(input_ids=step.unsqueeze(-1), cache=own, use_cache=True).logits
            got = lean.decode_step(model, mine, step.unsqueeze(-1))
            assert torch.equal(got, want)
    assert own.get_seq_length() == mine.get_seq_length() == 5 + steps
    assert len(ran) == (steps * model.config.num_hidden_layers if kernel else 0)
    return steps


@contextlib.contextmanager
def counted(ran: list):
    """Each layer step models.blocks ran (not handed back to the modules), into `ran`."""
    run = blocks.Block.run

    def counting(self, *args):
        out = run(self, *args)
        if out is not None:
            ran.append(out)
        return out

    blocks.Block.run = counting
    try:
        yield
    finally:
        blocks.Block.run = run


def on_the_kernel(model, layers: str):
    if layers.startswith("gguf"):
        if native.library() is None:
            pytest.skip(f"simlab's GGUF kernel is not built here ({native.why()})")
        # mixed: v in another layout than q and k, as a Q4_K_M file's Q6_K v beside Q4_K q and k
        mixed = layers.startswith("gguf-mixed")
        q4 = ("o_proj", "down_proj") + (("q_proj", "k_proj") if mixed else ())
        model = native_copy(model, q4=q4)
        assert lean.fuse(model) and lean.fuse_norms(model)
        fused_qkv = any(hasattr(m, "fused_q_proj_k_proj_v_proj") for m in model.modules())
        assert fused_qkv == (not mixed)
        if layers.endswith("a8"):  # one level of activation codes: the blocks' calls must say so too
            assert quant.round_activations(model, 1) > 0
    return model


@pytest.mark.parametrize("layers", ["float", "gguf", "gguf-a8"])
def test_the_lean_step_is_gemma3s_forward_bit_for_bit(layers, tiny_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_style(tmp_path / "g", "gemma3", tiny_dir)).eval()
    assert steps_agree(on_the_kernel(model, layers)) == 20


@pytest.mark.parametrize("layers", ["float", "gguf", "gguf-mixed", "gguf-a8", "gguf-mixed-a8"])
@pytest.mark.parametrize("kind", sorted(FAMILY))
def test_the_lean_step_is_each_familys_forward_bit_for_bit(kind, layers):
    model = on_the_kernel(family_model(kind), layers)
    if kind == "qwen2":
        assert model.config.layer_types[1] == "sliding_attention"
    assert steps_agree(model) == 20


def gemma2_model():
    """A Gemma 2 whose softcaps bite (attention at 2, logits at 3) and whose window is shorter
    than the test's tokens, on the eager attention transformers gives it."""
    torch.manual_seed(5)
    config = AutoConfig.for_model(
        "gemma2", **SHAPE, head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.3)
    assert model.config._attn_implementation == "eager"
    return model


@pytest.mark.parametrize("layers", ["float", "gguf"])
def test_the_lean_step_is_gemma2s_forward_bit_for_bit(layers):
    assert not lean.steps_lean(gemma2_model())  # transformers' eager attention: its own forward
    model = on_the_kernel(gemma2_model(), layers)
    lean.own_attention(model)  # simlab's attention, which takes the softcap
    cap_rows(model)
    assert model.config._attn_implementation == "simlab" and model.config.final_logit_softcapping is None
    assert steps_agree(model) == 20


def test_gemma2_on_simlabs_attention_is_transformers_eager_to_rounding():
    """The kernel's softcapped attention and the moved logit cap give transformers' eager
    forward's logits; without either cap they would differ by far more than rounding."""
    model = gemma2_model()
    with torch.no_grad():  # scores and logits large enough for the caps to bite
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(40)
        model.model.norm.weight.fill_(60)
    ids = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = model(input_ids=ids).logits
        lean.own_attention(model)
        cap_rows(model)
        got = model(input_ids=ids).logits
        head, model.lm_head = model.lm_head, model.lm_head.head
        uncapped_logits = model(input_ids=ids).logits
        model.lm_head = head
        for layer in model.model.layers:
            layer.self_attn.attn_logit_softcapping = None
        uncapped_attention = model(input_ids=ids).logits
    assert (got - want).abs().max() < 1e-5 * want.abs().max()
    assert (uncapped_logits - want).abs().max() > 0.1
    assert (uncapped_attention - want).abs().max() > 0.1


def test_softcapped_attention_off_the_kernel_is_eager_not_sdpa():
    """Where the kernel does not run (here: bfloat16), softcapped attention falls back to
    transformers' eager attention with sdpa's masks, not to sdpa (which has no softcap)."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    model = gemma2_model()
    attn = model.model.layers[1].self_attn
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 4, 6, 8, generator=gen, dtype=torch.bfloat16) for _ in range(3))
    additive = torch.full((6, 6), torch.finfo(torch.bfloat16).min, dtype=torch.bfloat16).triu(1)
    want, _ = eager_attention_forward(attn, q, k[:, :2], v[:, :2], additive, 0.0, 0.5, 2.0)
    got, _ = native_attention.attention(attn, q, k[:, :2], v[:, :2], None, scaling=0.5, softcap=2.0)
    assert torch.equal(got, want)


def test_other_families_keep_the_models_own_forward(tiny):
    assert not lean.steps_lean(tiny.model)  # the tiny GPT-2


def test_a_steered_block_step_is_the_modules_steered_step():
    """A steering vector added at a block's output: models.blocks' path adds it as the modules'
    path does (the same logits), and it changes them (the add is not skipped)."""
    model = on_the_kernel(family_model("qwen3"), "gguf")
    torch.manual_seed(1)
    prompt, steps = torch.randint(3, 300, (2, 5)), torch.randint(3, 300, (12, 2))
    adds = {1: torch.randn(32) * 3e7}  # (this random model's hidden states reach ~3e7: less rounds away)
    got = {}
    for path in ("blocks", "modules", "unsteered"):
        ran = []
        with counted(ran), torch.inference_mode():
            cache = prefix.new_cache(model)
            model(input_ids=prompt, cache=cache, use_cache=True)
            if path == "modules":
                model.__dict__["_simlab_blocks"] = ((model.config.num_hidden_layers, "simlab"), None)
            got[path] = [
                lean.decode_step(model, cache, step.unsqueeze(-1), {} if path == "unsteered" else adds)
                for step in steps
            ]
            model.__dict__.pop("_simlab_blocks", None)
        assert bool(ran) == (path != "modules")
    assert all(torch.equal(a, b) for a, b in zip(got["blocks"], got["modules"]))
    assert not torch.equal(got["blocks"][-1], got["unsteered"][-1])


def _torch_rotary(x, cos, sin):
    """transformers' Llama rotary, as its modeling module writes it: torch's ops."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos.unsqueeze(1)) + (rotated * sin.unsqueeze(1))


@pytest.mark.parametrize("kind", sorted(FAMILY))
def test_a_family_passes_rotary_gets_torchs_bits_from_one_kernel_call(kind):
    """own_attention points the family's modeling module at simlab's rotary (one kernel call where
    it applies): the bits of transformers' torch ops, for a pass of many tokens and for one."""
    import sys

    from simlab.models import gemma3

    if native.library() is None:
        pytest.skip(f"simlab's GGUF kernel is not built here ({native.why()})")
    model = family_model(kind)
    lean.own_attention(model)
    owner = sys.modules[type(model.model.layers[0].self_attn).__module__]
    assert owner.apply_rotary_pos_emb is gemma3.apply_rotary_pos_emb
    g = torch.Generator().manual_seed(3)
    for b, h, t, d in ((1, 9, 64, 64), (2, 4, 1, 128), (3, 14, 17, 64), (1, 8, 130, 256)):
        q, k = torch.randn(b, h, t, d, generator=g), torch.randn(b, 2, t, d, generator=g)
        cos, sin = (torch.randn(b, t, d, generator=g) for _ in range(2))
        got = owner.apply_rotary_pos_emb(q, k, cos, sin)
        assert torch.equal(got[0], _torch_rotary(q, cos, sin)) and torch.equal(
            got[1], _torch_rotary(k, cos, sin)
        )
