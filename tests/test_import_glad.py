"""``glad-edge import-glad`` on small files of exactly the published layouts.

Built in a temp dir: a Stable Diffusion diffusers folder (tiny CLIP text encoder + a CLIP BPE
tokenizer written as vocab.json / merges.txt, tiny vae/ and unet/ via save_pretrained, SD 1.4's
PNDM scheduler config), GLAD's UNet as ``checkpoint-2500/pytorch_model.bin`` (torch.save), the
official DINO backbone ``.pth`` (torch.save, official names; 12 blocks of width 48, 4 heads), a
fine-tuned DINO as a DINO *training* checkpoint (teacher/student/args) and a fine-tuned VAE as an
LDM (CompVis) ``.ckpt`` whose names come from a converter written here, independently of the
importer's, and checked against hand-written LDM names.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel

from edge_runtime.cli import main
from model_export.checkpoint import load_checkpoint
from model_export.dino import DinoViT
from model_export.factory import small_dino, small_unet
from model_export.import_glad import diffusers_vae_key_to_ldm, load_dino_weights, load_glad_unet
from model_export.presets import PRESETS, preset_config

REPO = Path(__file__).resolve().parents[1]
DINO_HEADS = 4
SD14_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.7.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
MERGES = ["p h", "ph o", "pho t", "phot o</w>", "o f</w>", "s k", "sk s</w>"]


# --------------------------------------------------------------------------------------- file builders


def byte_chars() -> list[str]:
    """GPT-2 / CLIP byte -> unicode table (printable bytes map to themselves)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def write_tokenizer(d: Path) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in byte_chars():
            vocab[c + suffix] = len(vocab)
    for merge in MERGES:
        vocab[merge.replace(" ", "")] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    d.mkdir(parents=True)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (d / "special_tokens_map.json").write_text(json.dumps(special))
    (d / "tokenizer_config.json").write_text(json.dumps({
        **special, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer", "do_lower_case": True,
        "errors": "replace", "add_prefix_space": False,
    }))
    return vocab


def tiny_vae() -> AutoencoderKL:
    """Two levels of different widths, so both encoder and decoder have nin_shortcut convs."""
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    ).eval()


def perturbed(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in module.state_dict().items()}


def ldm_name(key: str, levels: int) -> str:
    """diffusers AutoencoderKL name -> latent-diffusion name, by plain substitution (test's own converter)."""
    for a, b in (("conv_norm_out", "norm_out"), ("conv_shortcut", "nin_shortcut"),
                 ("mid_block.attentions.0.group_norm", "mid.attn_1.norm"),
                 ("mid_block.attentions.0.to_q", "mid.attn_1.q"), ("mid_block.attentions.0.to_k", "mid.attn_1.k"),
                 ("mid_block.attentions.0.to_v", "mid.attn_1.v"),
                 ("mid_block.attentions.0.to_out.0", "mid.attn_1.proj_out")):
        key = key.replace(a, b)
    key = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m[1]) + 1}", key)
    key = re.sub(r"down_blocks\.(\d+)\.resnets", r"down.\1.block", key)
    key = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0", r"down.\1.downsample", key)
    key = re.sub(r"up_blocks\.(\d+)\.resnets", lambda m: f"up.{levels - 1 - int(m[1])}.block", key)
    return re.sub(r"up_blocks\.(\d+)\.upsamplers\.0", lambda m: f"up.{levels - 1 - int(m[1])}.upsample", key)


def to_ldm(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        name = ldm_name(k, levels)
        if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", name):
            v = v[:, :, None, None]  # LDM's attention projections are 1x1 convs
        out[name] = v.clone()
    return out


# -------------------------------------------------------------------------------------------- fixture


@dataclass
class Release:
    root: Path
    sd: Path
    unet: Path
    dino: Path
    dino_ft: Path
    vae_ckpt: Path
    unet_state: dict[str, torch.Tensor]
    vae_state: dict[str, torch.Tensor]
    ldm_state: dict[str, torch.Tensor]
    dino_official: DinoViT
    dino_teacher: DinoViT
    text_encoder: CLIPTextModel
    vocab: dict[str, int]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("release")
    sd = root / "stable-diffusion-v1-4"
    vocab = write_tokenizer(sd / "tokenizer")
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )).eval()
    te.save_pretrained(sd / "text_encoder")
    sd_unet = small_unet(cross_attention_dim=32, sample_size=16)
    sd_unet.save_pretrained(sd / "unet")
    sd_vae = tiny_vae()
    sd_vae.save_pretrained(sd / "vae")
    (sd / "scheduler").mkdir()
    (sd / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD14_SCHEDULER))
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))

    unet_state = perturbed(sd_unet, 1)  # GLAD's fine-tuned UNet: same architecture, other weights
    (root / "checkpoint-2500").mkdir()
    torch.save(unet_state, root / "checkpoint-2500" / "pytorch_model.bin")

    official = small_dino(depth=12, embed_dim=48, num_heads=DINO_HEADS, img_size=32)
    torch.save(official.state_dict(), root / "dino_vitbase8_pretrain.pth")
    teacher = small_dino(depth=12, embed_dim=48, num_heads=DINO_HEADS, img_size=32)
    teacher.load_state_dict(perturbed(official, 2))
    student = perturbed(official, 3)
    head = {"head.mlp.0.weight": torch.randn(8, 48), "head.last_layer.weight_g": torch.randn(4, 1)}
    torch.save({
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()}, **head},
        "student": {**{f"module.backbone.{k}": v for k, v in student.items()},
                    **{f"module.{k}": v for k, v in head.items()}},
        "epoch": 7,
        "args": argparse.Namespace(arch="vit_base", patch_size=8, lr=3e-4),
        "dino_loss": {"center": torch.zeros(1, 4)},
    }, root / "dino_finetuned_checkpoint.pth")

    vae_state = perturbed(sd_vae, 4)  # a fine-tuned VAE, saved the DiffAD / LDM way
    ldm_state = to_ldm(vae_state, levels=2)
    torch.save({"state_dict": {**ldm_state, "loss.logvar": torch.zeros(())}}, root / "vae_epoch=000069.ckpt")
    return Release(root, sd, root / "checkpoint-2500" / "pytorch_model.bin", root / "dino_vitbase8_pretrain.pth",
                   root / "dino_finetuned_checkpoint.pth", root / "vae_epoch=000069.ckpt", unet_state, vae_state,
                   ldm_state, official, teacher, te, vocab)


def args_for(r: Release, out: Path, **extra: str | None) -> list[str]:
    opts = {"--sd": str(r.sd), "--unet": str(r.unet), "--dino": str(r.dino), "--preset": "mvtec",
            "--category": "screw", "--out": str(out), "--dino-num-heads": str(DINO_HEADS)}
    opts.update(extra)
    argv = ["import-glad"]
    for k, v in opts.items():
        if v is not None:
            argv += [k, v]
    return argv


def assert_one_error_line(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("glad-edge import-glad: error:")]
    assert len(errors) == 1, stderr
    assert all(line.startswith("import-glad: ") for line in lines if line not in errors), stderr  # progress only
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ tests


def test_cli_import_glad_end_to_end(release: Release, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    argv = args_for(release, out, **{"--dino": str(release.dino_ft), "--dino-adaptive": str(release.dino),
                                     "--vae": str(release.vae_ckpt), "--category": "Screw", "--noise-seed": "7"})
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "edge_runtime.cli", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"wrote checkpoint {out}" in proc.stdout
    assert "[6/6]" in proc.stderr and "checkpoint-3000" in proc.stderr  # stage lines + the preset's note
    assert all(line.startswith("import-glad: ") for line in proc.stderr.splitlines()), proc.stderr  # no noise

    ckpt = load_checkpoint(out)
    assert equal_states(ckpt.unet.state_dict(), release.unet_state)
    assert equal_states(ckpt.vae.state_dict(), release.vae_state)
    # --dino: the fine-tuned DINO (the training checkpoint's teacher) -> dino/;
    # --dino-adaptive: the official weights -> dino_adaptive/
    assert equal_states(ckpt.dino.state_dict(), release.dino_teacher.state_dict())
    assert ckpt.dino_adaptive is not None
    assert equal_states(ckpt.dino_adaptive.state_dict(), release.dino_official.state_dict())
    assert ckpt.dino.config.num_heads == DINO_HEADS and ckpt.dino.config.img_size == 32
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        for got, want in zip(ckpt.dino_adaptive.forward_features(x, [3, 12]),
                             release.dino_official.forward_features(x, [3, 12]), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)

    # prompt embeddings: token ids spelled out, then the text encoder's last_hidden_state
    v = release.vocab
    bos, eos = v["<|startoftext|>"], v["<|endoftext|>"]
    cond_ids = [bos, v["a</w>"], v["photo</w>"], v["of</w>"], v["sks</w>"], eos]
    cond_ids += [eos] * (77 - len(cond_ids))
    uncond_ids = [bos, eos] + [eos] * 75
    with torch.no_grad():
        want_cond = release.text_encoder(torch.tensor([cond_ids]))[0]
        want_uncond = release.text_encoder(torch.tensor([uncond_ids]))[0]
    assert ckpt.cond.shape == (1, 77, 32) and ckpt.uncond.shape == (1, 77, 32)
    torch.testing.assert_close(ckpt.cond, want_cond, rtol=0, atol=0)
    torch.testing.assert_close(ckpt.uncond, want_uncond, rtol=0, atol=0)
    assert not torch.equal(ckpt.cond, ckpt.uncond)

    glad = json.loads((out / "glad.json").read_text())
    assert glad == preset_config("mvtec", "screw", noise_seed=7).model_dump()
    assert glad["denoise_step"] == 750 and glad["input_threshold"] == 0.32 and glad["min_step"] == 350
    assert glad["inference_steps"] == 25 and glad["guidance_scale"] == 9.0 and glad["object_mask"] == "dark"
    assert glad["dino_resolution"] == 512 and glad["resolution"] == 512 and glad["bidirectional"] is False
    assert glad["dino_layers"] == [3, 6, 9, 12] and glad["adaptive_layer"] == 12 and glad["noise_seed"] == 7
    assert glad["category"] == "screw" and glad["preset"] == "mvtec"
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "DDIMScheduler" and sched["beta_schedule"] == "scaled_linear"
    assert not list(tmp_path.glob(".ckpt.partial-*"))


def test_cli_defaults_share_dino_and_keep_sd_vae(release: Release, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ckpt"
    argv = args_for(release, out, **{"--unet": str(release.unet.parent), "--preset": "visa",
                                     "--category": "pcb4", "--dino-adaptive": str(release.dino)})
    assert main(argv) == 0, capsys.readouterr().err
    assert not (out / "dino_adaptive").exists()  # identical to --dino: one DINO for both roles
    ckpt = load_checkpoint(out)
    assert equal_states(ckpt.vae.state_dict(), AutoencoderKL.from_pretrained(release.sd / "vae").state_dict())
    assert equal_states(ckpt.dino.state_dict(), release.dino_official.state_dict())
    c = ckpt.config
    assert (c.denoise_step, c.input_threshold, c.v, c.min_step) == (450, 0.3, 2.0, 200)
    assert (c.inference_steps, c.dino_resolution, c.bidirectional, c.object_mask) == (15, 256, True, None)
    err = capsys.readouterr().err
    assert "fine-tuned DINO (epoch 0)" in err and "fine-tuned VAE" in err  # the preset's notes
    # an existing checkpoint is only replaced with --overwrite
    assert main(argv) == 1
    assert_one_error_line(capsys.readouterr().err, str(out), "--overwrite")
    assert main([*argv, "--overwrite"]) == 0


def test_missing_file_is_one_line(release: Release, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope" / "pytorch_model.bin"
    assert main(args_for(release, tmp_path / "o", **{"--unet": str(missing)})) == 1
    captured = capsys.readouterr()
    assert captured.err == f"glad-edge import-glad: error: {missing}: file not found (GLAD UNet state dict)\n"
    assert captured.out == ""
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("what", ["tokenizer", "vae-config", "dino", "vae"])
def test_missing_inputs(release: Release, tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str) -> None:
    sd = release.sd
    if what in ("tokenizer", "vae-config"):  # a copy of the SD folder lacking one file
        import shutil

        sd = tmp_path / "sd"
        shutil.copytree(release.sd, sd)
        gone = sd / ("tokenizer/merges.txt" if what == "tokenizer" else "vae/config.json")
        gone.unlink()
        extra = {"--sd": str(sd)}
    else:
        gone = tmp_path / f"{what}.pth"
        extra = {"--dino": str(gone)} if what == "dino" else {"--vae": str(gone)}
    assert main(args_for(release, tmp_path / "o", **extra)) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert_one_error_line(captured.err, f"{gone}: file not found")


def test_unet_with_wrong_keys(release: Release, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = dict(release.unet_state)
    state.pop("conv_in.weight")
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "pytorch_model.bin"
    torch.save(state, bad)
    assert main(args_for(release, tmp_path / "o", **{"--unet": str(bad)})) == 1
    assert_one_error_line(capsys.readouterr().err, str(bad), "missing keys [conv_in.weight]",
                          "unexpected keys [extra.weight]")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.partial-*"))


def test_vae_with_wrong_keys(release: Release, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = dict(release.ldm_state)
    state.pop("decoder.up.0.block.0.nin_shortcut.weight")
    state["encoder.down.0.attn.0.q.weight"] = torch.zeros(8, 8, 1, 1)
    bad = tmp_path / "vae.ckpt"
    torch.save({"state_dict": state}, bad)
    assert main(args_for(release, tmp_path / "o", **{"--vae": str(bad)})) == 1
    assert_one_error_line(capsys.readouterr().err, str(bad), "decoder.up.0.block.0.nin_shortcut.weight",
                          "unexpected keys [encoder.down.0.attn.0.q.weight]")


def test_dino_with_wrong_keys(release: Release, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = release.dino_official.state_dict()
    state.pop("blocks.4.mlp.fc2.bias")
    state["blocks.4.ls1.gamma"] = torch.ones(48)
    bad = tmp_path / "dino.pth"
    torch.save(state, bad)
    assert main(args_for(release, tmp_path / "o", **{"--dino-adaptive": str(bad)})) == 1
    assert_one_error_line(capsys.readouterr().err, str(bad), "blocks.4.mlp.fc2.bias", "blocks.4.ls1.gamma")


def test_refuses_pickled_objects(release: Release, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fractions import Fraction

    bad = tmp_path / "pytorch_model.bin"  # e.g. a Lightning checkpoint that pickles its hyper-parameters
    torch.save({"state_dict": release.unet_state, "hparams": Fraction(1, 3)}, bad)
    assert main(args_for(release, tmp_path / "o", **{"--unet": str(bad)})) == 1
    assert_one_error_line(capsys.readouterr().err, str(bad), "weights_only=True", "fractions.Fraction")


# ------------------------------------------------------------------------------- conversion details


def test_ldm_vae_names_match_the_latent_diffusion_layout(release: Release) -> None:
    """Hand-written facts of LDM's Encoder/Decoder (ch=8, ch_mult=(1, 2), num_res_blocks=1)."""
    s = release.ldm_state
    assert s["encoder.conv_in.weight"].shape == (8, 3, 3, 3)
    assert s["encoder.down.0.block.0.conv1.weight"].shape == (8, 8, 3, 3)
    assert "encoder.down.0.block.0.nin_shortcut.weight" not in s
    assert s["encoder.down.1.block.0.nin_shortcut.weight"].shape == (16, 8, 1, 1)
    assert s["encoder.down.0.downsample.conv.weight"].shape == (8, 8, 3, 3)
    assert "encoder.down.1.downsample.conv.weight" not in s  # no downsampling after the last level
    assert s["encoder.mid.block_2.norm2.weight"].shape == (16,)
    assert s["encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    assert s["encoder.mid.attn_1.proj_out.weight"].shape == (16, 16, 1, 1)
    assert s["encoder.norm_out.weight"].shape == (16,)
    assert s["encoder.conv_out.weight"].shape == (8, 16, 3, 3)  # 2 * z_channels (mean, logvar)
    assert s["quant_conv.weight"].shape == (8, 8, 1, 1) and s["post_quant_conv.weight"].shape == (4, 4, 1, 1)
    # LDM's decoder.up is indexed by resolution level: up.1 (16 ch) runs first, up.0 (8 ch) last
    assert s["decoder.up.1.block.1.conv1.weight"].shape == (16, 16, 3, 3)  # num_res_blocks + 1 per level
    assert "decoder.up.1.block.2.conv1.weight" not in s
    assert s["decoder.up.1.upsample.conv.weight"].shape == (16, 16, 3, 3)
    assert "decoder.up.0.upsample.conv.weight" not in s
    assert s["decoder.up.0.block.0.nin_shortcut.weight"].shape == (8, 16, 1, 1)
    assert s["decoder.norm_out.weight"].shape == (8,)
    assert torch.equal(s["decoder.up.1.block.0.conv1.weight"],
                       release.vae_state["decoder.up_blocks.0.resnets.0.conv1.weight"])
    # the importer's own mapping agrees with the test's on every key
    for key in release.vae_state:
        assert diffusers_vae_key_to_ldm(key, 2) == ldm_name(key, 2), key


def test_ldm_vae_inside_a_full_sd_checkpoint(release: Release, tmp_path: Path) -> None:
    from model_export.import_glad import load_vae

    path = tmp_path / "sd-v1-4.ckpt"
    torch.save({"state_dict": {**{f"first_stage_model.{k}": v for k, v in release.ldm_state.items()},
                               "model.diffusion_model.out.0.weight": torch.zeros(2),
                               "cond_stage_model.transformer.x": torch.zeros(1)}}, path)
    vae = load_vae(release.sd / "vae", path)
    assert equal_states(vae.state_dict(), release.vae_state)


def test_vae_already_in_diffusers_names(release: Release, tmp_path: Path) -> None:
    from model_export.import_glad import load_vae

    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {**release.vae_state, "loss.logvar": torch.zeros(())}, "epoch": 3}, path)
    assert equal_states(load_vae(release.sd / "vae", path).state_dict(), release.vae_state)


def test_unet_module_prefix_and_safetensors(release: Release, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "unet.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in release.unet_state.items()}, path)
    unet = load_glad_unet(release.sd / "unet", path)
    assert equal_states(unet.state_dict(), release.unet_state)


def test_dino_head_count_default_and_folder(release: Release, tmp_path: Path) -> None:
    from model_export.dino import save_dino

    assert load_dino_weights(release.dino).config.num_heads == 1  # embed_dim 48 // 64, floored at 1
    assert load_dino_weights(release.dino, 4).config.num_heads == 4
    save_dino(release.dino_official, tmp_path / "dino")
    model = load_dino_weights(tmp_path / "dino")  # a checkpoint dino/ folder carries its own config
    assert model.config.num_heads == DINO_HEADS
    assert equal_states(model.state_dict(), release.dino_official.state_dict())


def test_presets_cover_the_papers_classes() -> None:
    assert {k: len(p.classes) for k, p in PRESETS.items()} == {"mvtec": 15, "mpdd": 6, "visa": 12, "pcbbank": 7}
    transistor = preset_config("mvtec", "transistor")
    assert transistor.bidirectional and transistor.denoise_step == 850 and transistor.input_threshold == 0.5
    assert preset_config("mpdd", "bracket_white").object_mask == "bright"
    assert preset_config("mpdd", "bracket_white").min_step == 200
    assert preset_config("mpdd", "tubes").input_threshold == 0.1
    assert preset_config("visa", "candle").v == 7.0 and preset_config("visa", "candle").inference_steps == 15
    assert preset_config("pcbbank", "pcb6").input_threshold == 0.45
    for name in ("screw", "capsule"):
        assert preset_config("mvtec", name).object_mask == "dark"
    assert preset_config("mvtec", "bottle").object_mask is None


def test_unknown_preset_or_category_lists_names(release: Release, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from edge_runtime.errors import GladEdgeError

    with pytest.raises(GladEdgeError, match="valid presets: mvtec, mpdd, visa, pcbbank"):
        preset_config("btad", "01")
    assert main(args_for(release, tmp_path / "o", **{"--category": "pcb1"})) == 1
    assert_one_error_line(capsys.readouterr().err, "valid categories: carpet, grid", "zipper")
