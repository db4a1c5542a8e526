"""galot-mini's pretraining writes a pipeline folder that loads like Stable Diffusion."""

import torch

from galot_core.t2i import DiffusersT2I
from galot_core.config import PretrainConfig
from galot_core.t2i.embedded import MAX_TOKENS, TEMPLATES, captions_for, pretrain


def test_paper_template_is_not_a_pretraining_caption():
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    caps = {c for per_class in captions_for(names) for c in per_class}
    assert "a realistic photo of a one" not in caps and "a handwritten digit 1" in caps
    assert len(caps) == 10 * 2 * len(TEMPLATES)  # every template with the word and the numeral


def test_pretrain_saves_a_loadable_pipeline(tmp_path, tiny_digits):
    torch.set_num_threads(1)
    cfg = PretrainConfig(vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4, warmup=1)
    info = pretrain(tiny_digits.pool.images[:16], tiny_digits.pool.labels[:16], tiny_digits.class_names,
                    tmp_path / "mini", cfg, progress=False)
    assert info["train_images"] == 16 and (tmp_path / "mini" / "model_index.json").exists()
    assert not (tmp_path / "mini.tmp").exists()
    t2i = DiffusersT2I.from_pretrained(str(tmp_path / "mini"), device="cpu", dtype="fp32")
    emb = t2i.encode(["a realistic photo of a seven"])
    assert emb.shape == (1, MAX_TOKENS, 384)
    images = t2i.generate(emb.repeat(2, 1, 1), num_inference_steps=2, guidance_scale=3.0,
                          generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 32, 32) and 0 <= float(images.min()) and float(images.max()) <= 1
    assert type(t2i.scheduler).__name__ == "DDIMScheduler" and t2i.scheduler.config.timestep_spacing == "trailing"
