"""Build a GLAD checkpoint directory (docs/checkpoint.md) from the published release files.

Inputs (``glad-edge import-glad``):

* ``--sd``: the Stable Diffusion 1.4 diffusers folder (``CompVis/stable-diffusion-v1-4``). Read:
  ``text_encoder/`` + ``tokenizer/`` (only to compute the two prompt embeddings: ``cond`` = CLIP
  ``last_hidden_state`` of ``"a photo of sks"``, ``uncond`` = of ``""``, both tokenized as SD's
  pipeline does: padded with the tokenizer's pad token to ``model_max_length`` (77), no attention
  mask), ``unet/config.json`` (architecture only; SD's UNet weights are not read), ``vae/`` (config,
  and weights unless ``--vae``) and ``scheduler/scheduler_config.json``.
* ``--unet``: GLAD's fine-tuned UNet, the ``pytorch_model.bin`` that accelerate's ``save_state`` writes
  in ``checkpoint-N/`` (a diffusers-layout ``UNet2DConditionModel`` state dict); ``.bin``/``.pt``/``.pth``
  (``torch.load(weights_only=True)``) or ``.safetensors``, or a folder holding one of those names.
  A common ``module.`` prefix (DDP) is stripped. Loaded strictly into a UNet built from SD's config.
* ``--dino`` / ``--dino-adaptive``: DINO ViT weights with the official parameter names. Accepted:
  a plain backbone state dict (``dino_vitbase8_pretrain.pth``; GLAD's fine-tuned ``epochN.pth`` from
  ``train_dino.py``, same layout), a DINO *training* checkpoint (a dict with ``"teacher"`` and/or
  ``"student"``: the teacher is used, as DINO's own evaluation does; ``module.`` and ``backbone.``
  prefixes are stripped and the projection-head ``head.*`` keys dropped; its ``args`` entry, an
  ``argparse.Namespace``, is the one non-tensor class allowed while unpickling), a ``.safetensors``
  file, or a ``dino/`` folder of a checkpoint (``config.json`` + ``model.safetensors``).
  The geometry is read from the tensors; the number of attention heads cannot be, so it is
  ``dino_num_heads`` when given, else ``embed_dim // 64`` (the official ViT family: ViT-S 6, ViT-B 12).
* CLI semantics of the two DINOs, named after the checkpoint folders they become:
  ``--dino`` -> ``dino/``, the DINO of the final anomaly map: the official weights, or a class's
  fine-tuned DINO (GLAD fine-tunes it for VisA and PCB-Bank). ``--dino-adaptive`` -> ``dino_adaptive/``,
  the frozen pretrained DINO of the adaptive-step check: give the official weights there exactly when
  ``--dino`` is fine-tuned. Without it (or with weights identical to ``--dino``) no ``dino_adaptive/``
  is written and both roles use ``dino/``, as in the released code where ``dino_frozen`` is a copy of
  the pretrained model.
* ``--vae``: optional fine-tuned VAE in the ORIGINAL latent-diffusion (CompVis ``ldm``) key layout,
  e.g. a DiffAD ``.ckpt``: the tensors may sit under ``"state_dict"``; if any key starts with
  ``first_stage_model.`` (a full LDM / SD checkpoint) only those are kept, prefix stripped; ``loss.*``
  keys (LPIPS / discriminator of the autoencoder training) are dropped. Converted to diffusers'
  ``AutoencoderKL`` names (see ``diffusers_vae_key_to_ldm``) and loaded strictly into a VAE built from
  SD's ``vae/config.json``. A file already in diffusers names (the released ``load_vae`` passes DiffAD's
  ``state_dict`` straight to diffusers' ``load_state_dict``) is recognised and loaded as is, with the
  same ``state_dict`` / ``loss.*`` handling. PyTorch-Lightning checkpoints that pickle other objects (hyper-parameters,
  callbacks) are refused by ``weights_only=True``: save their ``state_dict`` alone first.

Nothing is ever unpickled without ``weights_only=True``. Every bad input ends in one ``GladEdgeError``
line naming the file (and the keys). Stage lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from pydantic import ValidationError
from torch import nn

from edge_runtime.errors import GladEdgeError
from edge_runtime.glad_config import GladConfig, format_validation_error
from model_export.checkpoint import Checkpoint, save_checkpoint
from model_export.dino import (
    DinoViT,
    check_state_dict,
    dino_from_state_dict,
    load_dino,
    raise_key_problems,
    short_list,
)
from model_export.presets import preset_config, preset_notes

PROMPT = "a photo of sks"
UNCOND_PROMPT = ""
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
UNET_FILE_NAMES = (
    "pytorch_model.bin",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
)

M = TypeVar("M", bound=nn.Module)


# ----------------------------------------------------------------------------------------------- files


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise GladEdgeError(f"{path}: file not found ({what})")
    return path


def _require_any(directory: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise GladEdgeError(f"{directory / names[0]}: file not found ({what}; also looked for {', '.join(names[1:])})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_tensor_file(path: Path, extra_safe_globals: tuple[type, ...] = ()) -> Any:
    """``.safetensors`` or a torch file read with ``weights_only=True`` (never a full unpickle)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own SafetensorError / OSError
            raise GladEdgeError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    try:
        with torch.serialization.safe_globals(list(extra_safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            what = found[1] if found else "objects other than tensors"
            raise GladEdgeError(
                f"{path}: refused by torch.load(weights_only=True): the file pickles {what}; save its state "
                "dict alone (or as .safetensors) where you trust the file, and import that"
            ) from None
        raise GladEdgeError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {_first_line(e)})") from None


def _as_state_dict(obj: Any, path: Path, wrappers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensor dict inside ``obj``: ``obj`` itself or the first of ``wrappers`` it holds."""
    if isinstance(obj, Mapping):
        for key in wrappers:
            if isinstance(obj.get(key), Mapping):
                return _as_state_dict(obj[key], path, ())
        bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if obj and not bad:
            return dict(obj)
        if bad and len(bad) < len(obj):
            raise GladEdgeError(f"{path}: not a state dict: non-tensor entries {short_list(sorted(bad))}")
        keys = short_list(sorted(str(k) for k in obj))
        raise GladEdgeError(f"{path}: not a state dict (top-level keys {keys}; expected tensors"
                            + (f" or one of {list(wrappers)}" if wrappers else "") + ")")
    raise GladEdgeError(f"{path}: not a state dict (a {type(obj).__name__})")


def _strip_common_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _as_float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp32 (the reference precision), contiguous, each tensor owning its storage."""
    out = {}
    for k, v in state.items():
        v = v.detach()
        if v.is_floating_point() and v.dtype != torch.float32:
            v = v.float()
        v = v.contiguous()
        if v.untyped_storage().nbytes() != v.numel() * v.element_size():
            v = v.clone()  # a view into a larger (or shared) storage: safetensors refuses to save those
        out[k] = v
    return out


# --------------------------------------------------------------------------------------- model building


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """diffusers / transformers log warnings (ignored config keys, ...) that are no business of ours."""
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as tf_logging

        bars = tf_logging.is_progress_bar_enabled()
        tf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        bars = False
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if bars:
            tf_logging.enable_progress_bar()


def _load_into(build: Callable[[], M], state: dict[str, torch.Tensor], source: Path, config_source: Path) -> M:
    """Build the model without allocating its random init, check ``state`` strictly, adopt its tensors."""
    try:
        with torch.device("meta"):
            model = build()
    except Exception as e:  # a config diffusers cannot build
        raise GladEdgeError(f"{config_source}: cannot build the model ({_first_line(e)})") from None
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # buffers outside the state dict: build for real and copy instead
        model = build()
        model.load_state_dict(state, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------ text


def encode_prompts(text_encoder: nn.Module, tokenizer: Any, prompts: list[str]) -> list[torch.Tensor]:
    """CLIP ``last_hidden_state`` [1, L, D] of each prompt, padded to ``model_max_length`` as SD does."""
    length = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(
                prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            ).input_ids
            out.append(text_encoder(ids, attention_mask=None)[0].float().contiguous())
    return out


def _prompt_embeddings(sd: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import CLIPTextModel, CLIPTokenizer

    te_dir, tok_dir = sd / "text_encoder", sd / "tokenizer"
    try:
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
    except Exception as e:
        raise GladEdgeError(f"{tok_dir}: cannot load the CLIP tokenizer ({_first_line(e)})") from None
    try:
        text_encoder = CLIPTextModel.from_pretrained(te_dir, local_files_only=True, dtype=torch.float32)
    except Exception as e:
        raise GladEdgeError(f"{te_dir}: cannot load the CLIP text encoder ({_first_line(e)})") from None
    cond, uncond = encode_prompts(text_encoder.float().eval(), tokenizer, [PROMPT, UNCOND_PROMPT])
    return cond, uncond


# ------------------------------------------------------------------------------------------------ UNet


def load_glad_unet(sd_unet_dir: Path, path: Path) -> UNet2DConditionModel:
    """GLAD's fine-tuned UNet state dict in a ``UNet2DConditionModel`` built from SD's ``unet/config.json``."""
    if path.is_dir():
        path = _require_any(path, UNET_FILE_NAMES, "GLAD UNet state dict")
    config = _load_diffusers_config(UNet2DConditionModel, sd_unet_dir)
    state = _as_state_dict(load_tensor_file(path), path, ("state_dict",))
    state = _as_float32(_strip_common_prefix(state, "module."))
    return _load_into(lambda: UNet2DConditionModel.from_config(config), state, path, sd_unet_dir / "config.json")


def _load_diffusers_config(cls: type, directory: Path) -> dict:
    try:
        return dict(cls.load_config(directory, local_files_only=True))
    except Exception as e:
        raise GladEdgeError(f"{directory / 'config.json'}: cannot read the config ({_first_line(e)})") from None


# ------------------------------------------------------------------------------------------------- VAE

_LDM_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_LDM_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_RESNET_PARAM = r"(norm1|conv1|norm2|conv2|conv_shortcut)\.(weight|bias)"


def diffusers_vae_key_to_ldm(key: str, levels: int) -> str | None:
    """The latent-diffusion (CompVis) name of a diffusers ``AutoencoderKL`` parameter; None if unknown.

    ``levels`` = len(block_out_channels): LDM numbers the decoder's ``up`` levels from the lowest
    resolution's opposite end (``decoder.up.{levels-1-i}`` is diffusers' ``decoder.up_blocks.{i}``).
    """
    if m := re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)", key):
        return key
    if m := re.fullmatch(r"(quant_conv|post_quant_conv)\.(weight|bias)", key):
        return key
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", key):
        return f"{m[1]}.norm_out.{m[2]}"
    if m := re.fullmatch(rf"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.{_RESNET_PARAM}", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_LDM_RESNET[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(rf"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.{_RESNET_PARAM}", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{_LDM_RESNET[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(rf"(encoder|decoder)\.mid_block\.resnets\.([01])\.{_RESNET_PARAM}", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_LDM_RESNET[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)"
                         r"\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{_LDM_ATTN[m[2]]}.{m[3]}"
    return None


def ldm_vae_state(raw: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """The autoencoder's own tensors: ``first_stage_model.`` selected and stripped, ``loss.*`` dropped."""
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in raw):
        return {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    state = {k: v for k, v in raw.items() if not k.startswith("loss.")}
    return _strip_common_prefix(state, "module.")


def convert_ldm_vae(vae: nn.Module, ldm: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """LDM-named tensors -> ``vae``'s diffusers state dict; errors name keys in the file's own (LDM) layout."""
    levels = len(vae.config.block_out_channels)
    expected = vae.state_dict()
    to_diffusers: dict[str, str] = {}
    for key in expected:
        ldm_key = diffusers_vae_key_to_ldm(key, levels)
        if ldm_key is None or ldm_key in to_diffusers:
            raise RuntimeError(f"no unique latent-diffusion name for the diffusers VAE key {key}")  # our bug
        to_diffusers[ldm_key] = key
    missing = sorted(set(to_diffusers) - set(ldm))
    unexpected = sorted(set(ldm) - set(to_diffusers))
    state, shapes = {}, []
    for ldm_key in sorted(set(ldm) & set(to_diffusers)):
        key, value = to_diffusers[ldm_key], ldm[ldm_key]
        want = tuple(expected[key].shape)
        if tuple(value.shape) != want and value.dim() == 4 and len(want) == 2 and value.shape[2:] == (1, 1):
            value = value.reshape(want)  # 1x1 conv (LDM attention q/k/v/proj_out) -> linear
        if tuple(value.shape) != want:
            shapes.append(f"{ldm_key} {tuple(ldm[ldm_key].shape)} != {want}")
        state[key] = value
    raise_key_problems(source, missing, unexpected, shapes, note=" (latent-diffusion VAE layout)")
    return state


def load_vae(sd_vae_dir: Path, ldm_path: Path | None) -> AutoencoderKL:
    """SD's VAE, or one with the weights of ``ldm_path`` (latent-diffusion or diffusers names)."""
    if ldm_path is None:
        try:
            return AutoencoderKL.from_pretrained(sd_vae_dir, local_files_only=True).float().eval()
        except Exception as e:
            raise GladEdgeError(f"{sd_vae_dir}: cannot load the VAE ({_first_line(e)})") from None
    config = _load_diffusers_config(AutoencoderKL, sd_vae_dir)
    raw = _as_state_dict(load_tensor_file(ldm_path), ldm_path, ("state_dict",))
    state = ldm_vae_state(raw, ldm_path)
    config_path = sd_vae_dir / "config.json"
    if not is_diffusers_vae_layout(state):
        try:
            with torch.device("meta"):
                skeleton = AutoencoderKL.from_config(config)
        except Exception as e:
            raise GladEdgeError(f"{config_path}: cannot build the model ({_first_line(e)})") from None
        state = convert_ldm_vae(skeleton, state, ldm_path)
    return _load_into(lambda: AutoencoderKL.from_config(config), _as_float32(state), ldm_path, config_path)


def is_diffusers_vae_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """True for diffusers ``AutoencoderKL`` names (what the released ``load_vae`` feeds ``load_state_dict``)."""
    return any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.", "encoder.mid_block.")) for k in state)


# ------------------------------------------------------------------------------------------------ DINO


def dino_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The backbone state dict of an official DINO file or a DINO training checkpoint (teacher first)."""
    state = _as_state_dict(obj, path, ("teacher", "student", "state_dict"))
    state = _strip_common_prefix(state, "module.")
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("head.")}
    return state


def load_dino_weights(path: Path, num_heads: int | None = None) -> DinoViT:
    """A ``DinoViT`` from a DINO ``.pth``/``.safetensors`` file or a checkpoint ``dino/`` folder."""
    if path.is_dir():
        model = load_dino(path)
        if num_heads is not None and num_heads != model.config.num_heads:
            raise GladEdgeError(
                f"{path / 'config.json'}: num_heads {model.config.num_heads} differs from the "
                f"requested {num_heads}"
            )
        return model
    state = _as_float32(dino_state(load_tensor_file(path, (argparse.Namespace,)), path))
    overrides = {} if num_heads is None else {"num_heads": num_heads}
    try:
        return dino_from_state_dict(state, path, **overrides)
    except ValueError as e:  # e.g. embed_dim not divisible by the head count
        raise GladEdgeError(f"{path}: {_first_line(e)} (set the head count with --dino-num-heads)") from None


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa
    )


# ---------------------------------------------------------------------------------------------- import


def _check_sd_folder(sd: Path, need_vae_weights: bool) -> None:
    if not sd.is_dir():
        raise GladEdgeError(f"{sd}: file not found (expected the Stable Diffusion 1.4 diffusers folder)")
    _require_file(sd / "text_encoder" / "config.json", "SD text encoder config")
    _require_any(sd / "text_encoder", ("model.safetensors", "pytorch_model.bin"), "SD text encoder weights")
    if not (sd / "tokenizer" / "tokenizer.json").is_file():
        _require_file(sd / "tokenizer" / "vocab.json", "SD CLIP tokenizer vocabulary")
        _require_file(sd / "tokenizer" / "merges.txt", "SD CLIP tokenizer merges")
    _require_file(sd / "unet" / "config.json", "SD UNet config")
    _require_file(sd / "vae" / "config.json", "SD VAE config")
    if need_vae_weights:
        _require_any(sd / "vae", ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                     "SD VAE weights")
    _require_file(sd / "scheduler" / "scheduler_config.json", "SD scheduler config")


def _check_weights_path(path: Path, what: str) -> None:
    if path.is_dir():
        return
    _require_file(path, what)
    if path.suffix not in (*TORCH_SUFFIXES, ".safetensors"):
        raise GladEdgeError(f"{path}: unknown file type {path.suffix!r} for the {what} "
                            f"(expected {', '.join(TORCH_SUFFIXES)} or .safetensors)")


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise GladEdgeError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise GladEdgeError(f"{out}: directory exists and is not empty (use --overwrite to replace it)")
        if not (out / "glad.json").is_file():
            raise GladEdgeError(f"{out}: not a GLAD checkpoint directory (no glad.json); refusing to replace it")


def _say(message: str) -> None:
    print(f"import-glad: {message}", file=sys.stderr, flush=True)


def import_glad(
    *,
    sd: str | Path,
    unet: str | Path,
    dino: str | Path,
    dino_adaptive: str | Path | None = None,
    vae: str | Path | None = None,
    preset: str,
    category: str,
    out: str | Path,
    noise_seed: int = 0,
    dino_num_heads: int | None = None,
    overwrite: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write a GLAD checkpoint directory to ``out`` and return its path (see the module docstring).
    ``overrides``: glad.json fields set over the preset's (e.g. a smaller ``resolution``)."""
    sd, unet, dino, out = Path(sd), Path(unet), Path(dino), Path(out)
    dino_adaptive = Path(dino_adaptive) if dino_adaptive is not None else None
    vae = Path(vae) if vae is not None else None
    start = time.monotonic()

    # everything that can be checked cheaply, before minutes of loading
    config = preset_config(preset, category, noise_seed)
    if overrides:
        try:
            config = GladConfig.model_validate({**config.model_dump(), **overrides})
        except ValidationError as e:
            raise GladEdgeError(f"--set: {format_validation_error(e)}") from None
    _check_sd_folder(sd, need_vae_weights=vae is None)
    _check_weights_path(unet, "GLAD UNet state dict")
    _check_weights_path(dino, "DINO weights")
    if dino_adaptive is not None:
        _check_weights_path(dino_adaptive, "pretrained DINO weights for the adaptive step")
    if vae is not None:
        _check_weights_path(vae, "latent-diffusion VAE")
    _check_out(out, overwrite)
    sched_path = sd / "scheduler" / "scheduler_config.json"
    try:
        scheduler_config = json.loads(sched_path.read_text())
    except json.JSONDecodeError as e:
        raise GladEdgeError(f"{sched_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if scheduler_config.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise GladEdgeError(f"{sched_path}: beta_schedule {scheduler_config['beta_schedule']!r} is not scaled_linear")

    steps = 6
    _say(f"[1/{steps}] preset {config.preset}/{config.category}: T_d {config.denoise_step}, "
         f"N {config.inference_steps}, delta {config.input_threshold}, min_step {config.min_step}, v {config.v}")
    for note in preset_notes(preset, category):
        _say(f"      note: {note}")

    with _quiet_libraries():
        _say(f"[2/{steps}] prompt embeddings of {PROMPT!r} and {UNCOND_PROMPT!r} ({sd / 'text_encoder'})")
        cond, uncond = _prompt_embeddings(sd)

        _say(f"[3/{steps}] UNet {unet} (architecture {sd / 'unet' / 'config.json'})")
        unet_model = load_glad_unet(sd / "unet", unet)
        if cond.shape[-1] != unet_model.config.cross_attention_dim:
            raise GladEdgeError(
                f"{sd / 'text_encoder'}: hidden size {cond.shape[-1]} differs from the UNet "
                f"cross_attention_dim {unet_model.config.cross_attention_dim}"
            )

        _say(f"[4/{steps}] VAE {vae if vae is not None else sd / 'vae'}")
        vae_model = load_vae(sd / "vae", vae)

        _say(f"[5/{steps}] DINO {dino}" + (f" (adaptive step: {dino_adaptive})" if dino_adaptive else ""))
        dino_model = load_dino_weights(dino, dino_num_heads)
        adaptive_model = None
        if dino_adaptive is not None:
            adaptive_model = load_dino_weights(dino_adaptive, dino_num_heads)
            if _same_weights(dino_model, adaptive_model):
                adaptive_model = None
        for name, path, model, layers in (
            ("dino", dino, dino_model, config.dino_layers),
            ("dino_adaptive", dino_adaptive, adaptive_model, [config.adaptive_layer]),
        ):
            if model is not None and max(layers) > model.config.depth:
                raise GladEdgeError(
                    f"{path}: DINO has {model.config.depth} blocks, the preset reads block {max(layers)} "
                    f"for {name} (expected the ViT-B/8 with 12)"
                )

        ckpt = Checkpoint(
            config=config,
            unet=unet_model,
            vae=vae_model,
            cond=cond,
            uncond=uncond,
            dino=dino_model,
            dino_adaptive=adaptive_model,
            scheduler_config=scheduler_config,
        )
        ckpt.validate()

        _say(f"[6/{steps}] writing {out}")
        _write_atomically(ckpt, out)
    _say(f"done in {time.monotonic() - start:.1f} s")
    return out


def _write_atomically(ckpt: Checkpoint, out: Path) -> None:
    """Write next to ``out`` and rename, so a failed import leaves no half-written checkpoint."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        save_checkpoint(ckpt, tmp)
        if out.exists():
            shutil.rmtree(out)  # _check_out allowed it: empty, or a checkpoint with --overwrite
        tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GladEdgeError(f"{out}: cannot write the checkpoint ({e.strerror or _first_line(e)})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
