"""The one error of checkpoint reading, and the helpers that word its messages."""
import re

__all__ = ["ConversionError", "describe_keys", "looks_like_vit", "not_resnet_error"]


class ConversionError(Exception):
    """A checkpoint cannot be read as a ResNet backbone; the message is one line saying what and what to do."""


def describe_keys(keys, n=6):
    """The first ``n`` keys, comma-separated, and how many there are in all when more."""
    keys = list(keys)
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


_VIT_KEYS = re.compile(r"(^|\.)(cls_token|pos_embed|patch_embed|blocks\.\d+\.attn|norm_pre|mask_token)")


def looks_like_vit(keys):
    """Whether any of these tensor names is a Vision Transformer's."""
    return any(_VIT_KEYS.search(k) for k in keys)


def not_resnet_error(where, keys):
    """The error for tensors that are no ResNet at all (naming a Vision Transformer when they are one)."""
    keys = sorted(keys)
    hint = " (these are Vision Transformer tensors)" if looks_like_vit(keys) else ""
    return ConversionError(f"{where} holds no ResNet (no conv1.weight / layer1..4 tensors){hint}; keys seen: "
                           f"{describe_keys(keys)}; only ResNet backbones convert to Detectron2's ResNet")
