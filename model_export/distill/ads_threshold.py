"""The ADS threshold of a student, carried over from its teacher.

The check compares two decodes through the adaptive DINO; a student decodes with its own VAE, looks through
its own DINO and checks at its own (fewer) steps, so its check distances are on another scale than the
teacher's, and the teacher's delta would fire too often or never. The student's delta is the teacher's
scaled by the ratio of a high quantile of the two models' check scores on held-out normal parts (the largest
score over the checks each model's plan runs on a good part): a good part then fires the student's check
about as rarely as it fires the teacher's.
"""

from __future__ import annotations

import numpy as np
import torch

from model_export.checkpoint import Checkpoint
from model_export.distill.data import DistillData
from model_export.distill.pipeline import no_fire_output
from model_export.distill.steps import exact_plan
from model_export.distill.teacher_views import resize_images
from model_export.distill.unet_common import abar_tensor
from model_export.reference import GladReference

QUANTILE = 0.99


@torch.no_grad()
def normal_check_scores(ckpt: Checkpoint, images: torch.Tensor, device: str = "cpu") -> np.ndarray:
    """Per part, the largest ADS score over the checks of the model's exact plan on the path a good part
    takes (``pipeline.no_fire_output``: the check never fires; the switch to the input estimate happens at the
    first step below min_step)."""
    ref = GladReference(ckpt, device=device)
    c = ckpt.config
    abar = abar_tensor(ckpt, torch.device(device))
    steps = exact_plan(c, abar)
    noise = ref.noise_tensor(None)
    out = []
    for x in resize_images(images, c.resolution).to(ref.device):
        scores: list[float] = []
        no_fire_output(lambda x_t, t: ref.guided_eps(x_t, int(t[0])), steps, ref.encode(x[None]), noise,
                       float(abar[c.denoise_step]), c.min_step,
                       on_check=lambda x0_in, x0, s=scores: s.append(ref.adaptive_check(x0_in, x0)[0]))
        out.append(max(scores, default=0.0))
    return np.asarray(out, dtype=np.float64)


def transfer(teacher: Checkpoint, student: Checkpoint, data: DistillData, parts: int = 64, seed: int = 0,
             device: str = "cpu") -> dict[str, float]:
    """Set the student's input_threshold from the teacher's (nothing to do when ADS is off) and return what
    was measured."""
    delta = float(teacher.config.input_threshold)
    if delta <= 0:
        return {"input_threshold": delta}
    gen = torch.Generator().manual_seed(seed)
    images = data.batch(min(parts, len(data.images)), gen)
    t_scores = normal_check_scores(teacher, images, device)
    s_scores = normal_check_scores(student, images, device)
    t_q, s_q = float(np.quantile(t_scores, QUANTILE)), float(np.quantile(s_scores, QUANTILE))
    new = delta * s_q / t_q if t_q > 0 else delta
    student.config = student.config.model_copy(update={"input_threshold": new})
    return {"teacher_input_threshold": delta, "input_threshold": new, "parts": float(len(images)),
            "quantile": QUANTILE, "teacher_score_quantile": t_q, "student_score_quantile": s_q,
            "teacher_fires": float((t_scores > delta).mean()), "student_fires": float((s_scores > new).mean())}


__all__ = ["QUANTILE", "normal_check_scores", "transfer"]
