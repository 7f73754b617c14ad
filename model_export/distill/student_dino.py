"""Student DINO: a narrower, shallower ViT whose per-layer linear heads reproduce the teacher's features.

``StudentDino`` (model_export/dino.py) answers ``forward_features(images, teacher_layers)`` with features of
the teacher's width on the teacher's layer numbers, so GladReference, the ``dino`` / ``dino_adaptive``
graphs and the runtime use it as they use the teacher. Training minimises 1 - cosine similarity between
student and teacher features (scoring compares L2-normalised features, so the direction is what counts):

- the scoring role: glad.json ``dino_layers`` on ImageNet-normalised images at ``dino_resolution``;
- the adaptive role: ``adaptive_layer`` on raw decoder outputs at ``resolution`` (what the ADS check feeds);

each on normal images and on reconstructions (teacher decodes of the teacher's x0 predictions of noised
latents). When the student works at a lower resolution than the teacher (resolution technique), the
teacher still sees its own resolution and its feature grid is area-averaged to the student's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from model_export.checkpoint import Checkpoint
from model_export.dino import DinoViT, StudentDino, StudentDinoConfig
from model_export.distill.anomalies import with_anomalies
from model_export.distill.data import DistillData
from model_export.distill.harness import TrainSettings, train
from model_export.distill.teacher_views import TeacherViews, imagenet_normalise, resize_images

NAME = "student_dino"
EVAL_SEED = 7_654_321


# Edge recipe defaults, relative to the teacher: ViT-B/8 (768 wide, 12 blocks) -> 192 wide, 4 blocks, 3 heads of
# 64 (a quarter of ViT-S/8's cost per token); at MVTec geometry it costs under 2 % of the part's FLOPs.
DEFAULT_WIDTH_RATIO = 0.25
DEFAULT_DEPTH_RATIO = 1 / 3
HEAD_DIM = 64
MIN_WIDTH = 32
MIN_DEPTH = 2


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width_ratio: float = Field(DEFAULT_WIDTH_RATIO, gt=0.0, le=4.0, description="student width / teacher width")
    depth_ratio: float = Field(DEFAULT_DEPTH_RATIO, gt=0.0, le=4.0, description="student blocks / teacher blocks")
    embed_dim: int | None = Field(None, gt=0, description="student width (overrides width_ratio)")
    depth: int | None = Field(None, gt=0, description="student blocks (overrides depth_ratio)")
    num_heads: int | None = Field(None, gt=0, description="attention heads (default: width / 64, at least 1)")
    mlp_ratio: float = Field(4.0, gt=0)
    recon_fraction: float = Field(0.5, ge=0.0, le=1.0,
                                  description="share of training images that are teacher reconstructions")
    anomaly_fraction: float = Field(0.0, ge=0.0, le=1.0,
                                    description="share of training images with a pseudo anomaly drawn on them "
                                                "(before the reconstructions are made)")
    map_weight: float = Field(0.0, ge=0.0, le=100.0,
                              description="weight of the anomaly-map loss: the student's per-patch cosine-min "
                                          "distances between a part and its reconstruction against the teacher's")
    adaptive: bool = Field(True, description="also replace a separate dino_adaptive by its own student")
    eval_batch: int = Field(8, gt=0, description="held-out images for the before/after measurements")

    def geometry(self, teacher_dim: int, teacher_depth: int) -> tuple[int, int, int]:
        """(width, depth, heads) of the student of a teacher this wide and deep."""
        heads = self.num_heads
        width = self.embed_dim or max(MIN_WIDTH, round(teacher_dim * self.width_ratio))
        if heads is None:
            heads = max(1, width // HEAD_DIM)
        width = max(heads, width // heads * heads)  # a multiple of the head count
        depth = self.depth or max(MIN_DEPTH, round(teacher_depth * self.depth_ratio))
        return width, depth, heads


def layer_map(layers: list[int], teacher_depth: int, depth: int) -> dict[int, int]:
    """Teacher layer l -> student block ceil(l * depth / teacher_depth): the same relative depth."""
    return {layer: max(1, min(depth, math.ceil(layer * depth / teacher_depth))) for layer in sorted(set(layers))}


def make_student(teacher: DinoViT, layers: list[int], options: Options, seed: int = 0) -> StudentDino:
    tc = teacher.config
    width, depth, heads = options.geometry(teacher.feature_dim, teacher.num_layers)
    config = StudentDinoConfig(
        kind="student", patch_size=tc.patch_size, embed_dim=width, depth=depth, num_heads=heads,
        mlp_ratio=options.mlp_ratio, img_size=tc.img_size, layer_norm_eps=tc.layer_norm_eps,
        teacher_embed_dim=teacher.feature_dim, teacher_depth=teacher.num_layers,
        layer_map=layer_map(layers, teacher.num_layers, depth),
    )
    torch.manual_seed(seed)
    model = StudentDino(config)
    with torch.no_grad():
        model.cls_token.normal_(0, 0.02)
        model.pos_embed.normal_(0, 0.02)
    return model


FeatureFn = Callable[[torch.Tensor, list[int]], list[torch.Tensor]]  # (images, layers) -> per-layer tokens


def pool_tokens(feats: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, g*g, D] tokens area-averaged to a grid x grid patch grid (identity when the grid matches)."""
    b, n, d = feats.shape
    g = math.isqrt(n)
    if g == grid:
        return feats
    x = F.adaptive_avg_pool2d(feats.transpose(1, 2).reshape(b, d, g, g), grid)
    return x.reshape(b, d, grid * grid).transpose(1, 2)


class Features(torch.nn.Module):
    """``forward`` = the student's ``forward_features``: the harness may wrap the trained module in
    DistributedDataParallel, which synchronises gradients only for what runs through ``forward``."""

    def __init__(self, dino: StudentDino) -> None:
        super().__init__()
        self.dino = dino

    def forward(self, images: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        return self.dino.forward_features(images, layers)


def cosine_loss(student: FeatureFn, teacher: DinoViT, x_student: torch.Tensor, x_teacher: torch.Tensor,
                layers: list[int]) -> torch.Tensor:
    """Mean over layers and tokens of 1 - cos(student, teacher) features; ``student`` maps (images, layers) to
    features (``Features``, possibly wrapped, or a ViT's ``forward_features``); gradients reach it only."""
    grid = x_student.shape[-1] // teacher.config.patch_size
    with torch.no_grad():
        targets = [pool_tokens(f, grid) for f in teacher.forward_features(x_teacher, layers)]
    outs = student(x_student, layers)
    losses = [(1 - F.cosine_similarity(o, t, dim=-1)).mean() for o, t in zip(outs, targets, strict=True)]
    return torch.stack(losses).mean()


def patch_distances(feats_a: torch.Tensor, feats_b: torch.Tensor) -> torch.Tensor:
    """Per-patch min_j (1 - cos(a_i, b_j)) for [B, P, D] features: the distance the score and the ADS map sum."""
    a, b = F.normalize(feats_a, dim=-1), F.normalize(feats_b, dim=-1)
    return 1 - (a @ b.transpose(1, 2)).max(dim=-1).values


def map_loss(student: torch.nn.Module, teacher: DinoViT, pair_student: tuple[torch.Tensor, torch.Tensor],
             pair_teacher: tuple[torch.Tensor, torch.Tensor], layers: list[int]) -> torch.Tensor:
    """Mean absolute difference of the per-patch distances part -> reconstruction, student against teacher,
    over ``layers``: the anomaly map itself, not only the features it is made of."""
    grid = pair_student[0].shape[-1] // teacher.config.patch_size
    with torch.no_grad():
        ta, tb = ([pool_tokens(f, grid) for f in teacher.forward_features(x, layers)] for x in pair_teacher)
        targets = [patch_distances(a, b) for a, b in zip(ta, tb, strict=True)]
    sa, sb = (student(x, layers) for x in pair_student)
    losses = [(patch_distances(a, b) - t).abs().mean() for a, b, t in zip(sa, sb, targets, strict=True)]
    return torch.stack(losses).mean()


class _Batches:
    """Training inputs for both roles at the student's and the teacher's resolutions."""

    def __init__(self, teacher: Checkpoint, student: Checkpoint, data: DistillData, views: TeacherViews,
                 recon_fraction: float, anomaly_fraction: float = 0.0) -> None:
        self.t, self.s = teacher.config, student.config
        self.data, self.views, self.recon_fraction = data, views, recon_fraction
        self.anomaly_fraction = anomaly_fraction

    def parts(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Parts at the teacher's resolution in [-1, 1]: normal, or for ``anomaly_fraction`` with a pseudo anomaly."""
        x = resize_images(self.data.batch(n, gen), self.t.resolution).to(self.views.device)
        return with_anomalies(x, self.anomaly_fraction, gen)

    def images(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Parts and reconstructions at the teacher's resolution, in [-1, 1]."""
        x = self.parts(n, gen)
        k = int(math.floor(self.recon_fraction * n + 0.5))
        if k:
            z = self.views.encode(x[:k])
            x = torch.cat([self.views.decode(self.views.x0_predictions(z, gen)), x[k:]])
        return x

    def pairs(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Parts and teacher reconstructions of them."""
        x = self.parts(n, gen)
        return x, self.views.decode(self.views.x0_predictions(self.views.encode(x), gen))

    def scoring(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (imagenet_normalise(resize_images(x, self.s.dino_resolution)),
                imagenet_normalise(resize_images(x, self.t.dino_resolution)))

    def adaptive(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return resize_images(x, self.s.resolution), x


def apply(teacher: Checkpoint, student: Checkpoint, data: DistillData, settings: TrainSettings, work_dir: Path,
          options: Options) -> dict[str, float]:
    """Replace ``student.dino`` (and a separate ``dino_adaptive``) by distilled students."""
    views = TeacherViews(teacher, device=settings.device)
    batches = _Batches(teacher, student, data, views, options.recon_fraction, options.anomaly_fraction)
    c = teacher.config
    shared = teacher.dino_adaptive is None
    # (name, teacher ViT, roles with their layers)
    jobs: list[tuple[str, DinoViT, list[tuple[str, list[int]]]]] = []
    scoring = [("scoring", list(c.dino_layers))]
    adaptive = [("adaptive", [c.adaptive_layer])]
    jobs.append(("dino", teacher.dino, scoring + adaptive if shared else scoring))
    if not shared and options.adaptive:
        assert teacher.dino_adaptive is not None
        jobs.append(("dino_adaptive", teacher.dino_adaptive, adaptive))

    measurements: dict[str, float] = {}
    for name, teacher_vit, roles in jobs:
        teacher_vit = teacher_vit.to(views.device).eval()
        layers = sorted({layer for _, ls in roles for layer in ls})
        model = Features(make_student(teacher_vit, layers, options, seed=settings.seed).to(views.device))

        def role_loss(model: torch.nn.Module, x: torch.Tensor, roles: list[tuple[str, list[int]]] = roles,
                      teacher_vit: DinoViT = teacher_vit) -> torch.Tensor:
            parts = []
            for role, ls in roles:
                xs, xt = batches.scoring(x) if role == "scoring" else batches.adaptive(x)
                parts.append(cosine_loss(model, teacher_vit, xs, xt, ls))
            return torch.stack(parts).mean()

        def role_map_loss(model: torch.nn.Module, pair: tuple[torch.Tensor, torch.Tensor],
                          roles: list[tuple[str, list[int]]] = roles, teacher_vit: DinoViT = teacher_vit
                          ) -> torch.Tensor:
            parts = []
            for role, ls in roles:
                view = batches.scoring if role == "scoring" else batches.adaptive
                (a_s, a_t), (b_s, b_t) = view(pair[0]), view(pair[1])
                parts.append(map_loss(model, teacher_vit, (a_s, b_s), (a_t, b_t), ls))
            return torch.stack(parts).mean()

        def evaluate(model: torch.nn.Module, role_loss=role_loss) -> float:  # noqa: ANN001
            gen = torch.Generator().manual_seed(EVAL_SEED)
            x = batches.images(options.eval_batch, gen)
            with torch.no_grad():
                return float(role_loss(model.eval(), x))

        def loss_fn(model: torch.nn.Module, gen: torch.Generator, role_loss=role_loss,  # noqa: ANN001
                    role_map_loss=role_map_loss) -> torch.Tensor:  # noqa: ANN001
            loss = role_loss(model, batches.images(settings.batch, gen))
            if options.map_weight > 0:
                loss = loss + options.map_weight * role_map_loss(model, batches.pairs(settings.batch, gen))
            return loss

        before = evaluate(model)
        model = train(f"{NAME}_{name}", model, loss_fn, settings, work_dir)
        measurements[f"{name}_cosine_loss_untrained"] = before
        measurements[f"{name}_cosine_loss"] = evaluate(model)
        measurements[f"{name}_params"] = float(sum(p.numel() for p in model.parameters()))
        measurements[f"{name}_teacher_params"] = float(sum(p.numel() for p in teacher_vit.parameters()))
        setattr(student, name, model.dino.cpu().eval())
    return measurements
