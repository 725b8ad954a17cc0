"""What an open_clip model is made of, described for the exports that let later loads skip open_clip: its
text tower for the numpy one (text_tower.py), its image tower when it is the plain ViT vit_tower.py runs,
and whether the checkpoint file holds that tower's tensors as the model has them. Only torch_runtime.py's
first load of a model (the open_clip route) calls these.
"""

from __future__ import annotations

from typing import Any

from . import text_tower, vit_tower


def describe_text_tower(model, tokenizer):
    """(TowerConfig, numpy arrays, the torch tensors they came from) when the text tower is the plain CLIP
    one text_tower.py implements, with open_clip's default tokenizer; else None."""
    import torch
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    if not isinstance(model, CLIP) or model.text_pool_type != "argmax" or model.attn_mask is None:
        return None
    if not isinstance(tokenizer, SimpleTokenizer) or tokenizer.clean_fn is not _clean_lower:
        return None
    if tokenizer.reduction_fn is not None or tokenizer.vocab_size != model.vocab_size:
        return None
    blocks = list(model.transformer.resblocks)
    if not blocks or not all(_plain_block(b, ResidualAttentionBlock, QuickGELU) for b in blocks):
        return None
    norms = [m for b in blocks for m in (b.ln_1, b.ln_2)] + [model.ln_final]
    quick = isinstance(blocks[0].mlp.gelu, QuickGELU)
    if len({n.eps for n in norms}) != 1 or any(isinstance(b.mlp.gelu, QuickGELU) != quick for b in blocks):
        return None
    proj = model.text_projection
    linear = isinstance(proj, torch.nn.Linear)
    tensors: dict[str, Any] = {
        "token_embedding": model.token_embedding.weight,
        "positional_embedding": model.positional_embedding,
        "ln_final.w": model.ln_final.weight,
        "ln_final.b": model.ln_final.bias,
        "projection": proj.weight.T if linear else proj,
    }
    if linear and proj.bias is not None:
        tensors["projection.b"] = proj.bias
    for i, b in enumerate(blocks):
        parts = [b.ln_1.weight, b.ln_1.bias, b.attn.in_proj_weight.T, b.attn.in_proj_bias, b.attn.out_proj.weight.T]
        parts += [b.attn.out_proj.bias, b.ln_2.weight, b.ln_2.bias, b.mlp.c_fc.weight.T, b.mlp.c_fc.bias]
        parts += [b.mlp.c_proj.weight.T, b.mlp.c_proj.bias]
        tensors.update({f"{i}.{name}": t for name, t in zip(text_tower.BLOCK, parts)})
    config = text_tower.TowerConfig(
        width=model.transformer.width,
        heads=blocks[0].attn.num_heads,
        layers=len(blocks),
        context_length=model.context_length,
        output_dim=int(proj.weight.shape[0] if linear else proj.shape[1]),
        eps=float(norms[0].eps),
        activation="quick_gelu" if quick else "gelu",
        projection_bias="projection.b" in tensors,
    )
    arrays = {name: t.detach().float().cpu().numpy() for name, t in tensors.items()}
    return config, arrays, list(tensors.values())


def _plain_block(block, block_type, quick_gelu_type) -> bool:
    import torch

    attn, act = getattr(block, "attn", None), getattr(getattr(block, "mlp", None), "gelu", None)
    plain_act = isinstance(act, quick_gelu_type) or (isinstance(act, torch.nn.GELU) and act.approximate == "none")
    return (
        type(block) is block_type
        and isinstance(block.ls_1, torch.nn.Identity)
        and isinstance(block.ls_2, torch.nn.Identity)
        and not hasattr(block, "ln_1_kv")
        and isinstance(attn, torch.nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and attn.in_proj_bias is not None
        and attn.batch_first
        and plain_act
        and all(isinstance(n, torch.nn.LayerNorm) and n.elementwise_affine for n in (block.ln_1, block.ln_2))
    )


# ---------------------------------------------------------------------------------------------- image export


def describe_image_tower(model) -> vit_tower.VitConfig | None:
    """The tower's shape and preprocessing when `model.visual` is the plain ViT vit_tower.py implements."""
    import torch
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock, VisionTransformer

    v: Any = getattr(model, "visual", None)
    if type(v) is not VisionTransformer or getattr(v, "attn_pool", None) is not None or v.pool_type != "tok":
        return None
    if v.final_ln_after_pool or v.output_tokens or not isinstance(v.patch_dropout, torch.nn.Identity):
        return None
    if not isinstance(v.ln_pre, torch.nn.LayerNorm) or v.proj is None or v.conv1.bias is not None:
        return None
    size, patch = tuple(v.image_size), tuple(v.patch_size)
    if size[0] != size[1] or patch[0] != patch[1] or tuple(v.conv1.stride) != patch:
        return None
    blocks = list(v.transformer.resblocks)
    if not blocks or not all(_plain_block(b, ResidualAttentionBlock, QuickGELU) for b in blocks):
        return None
    norms = [v.ln_pre, v.ln_post] + [n for b in blocks for n in (b.ln_1, b.ln_2)]
    quick = [isinstance(b.mlp.gelu, QuickGELU) for b in blocks]
    if len({n.eps for n in norms}) != 1 or len(set(quick)) != 1:
        return None
    cfg = dict(v.preprocess_cfg)
    if cfg.get("resize_mode", "shortest") != "shortest" or cfg.get("mode", "RGB") != "RGB":
        return None
    if cfg.get("interpolation", "bicubic") not in ("bicubic", "bilinear"):
        return None
    return vit_tower.VitConfig(
        image_size=int(size[0]),
        patch_size=int(patch[0]),
        width=int(v.transformer.width),
        layers=len(blocks),
        heads=int(blocks[0].attn.num_heads),
        output_dim=int(v.proj.shape[1]),
        eps=float(norms[0].eps),
        quick_gelu=quick[0],
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
        bicubic=cfg.get("interpolation", "bicubic") == "bicubic",
    )


def own_tensors(model, config: vit_tower.VitConfig, fp32: bool = True) -> dict[str, Any] | None:
    """The loaded model's image tensors under vit_tower's names (as fp32 copies, or `fp32=False` the
    tensors themselves), or None when one is missing. The model is open_clip's or a plain-torch tower,
    whose parameter names stand "__" for "."."""
    visual = model.visual
    found = {name.replace("__", "."): t for name, t in [*visual.named_parameters(), *visual.named_buffers()]}
    names = config.keys(prefix="")
    if not all(name in found for name in names):
        return None
    return {name: found[name].detach().float() if fp32 else found[name] for name in names}


def file_holds(checkpoint: str, config: vit_tower.VitConfig, own: dict[str, Any]) -> bool:
    """Whether the file holds these tensors under open_clip's names, as a later load will read them:
    same shapes, and the same values at samples spread over each (reading every value would page in a
    second copy of the tower; open_clip's conversions at load transpose, split or rescale whole tensors)."""
    import torch

    weights = vit_tower.load_weights(config, checkpoint, convert=False)
    if weights is None:
        return False
    for name, tensor in own.items():
        stored = weights[name]
        if stored.shape != tensor.shape:
            return False
        step = max(1, stored.numel() // 64)
        if not torch.equal(stored.flatten()[::step].float(), tensor.flatten()[::step]):
            return False
    return True
