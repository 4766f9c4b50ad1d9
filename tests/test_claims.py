"""Loose bounds on the course's claims, measured on the shipped checkpoint (benchmarks/measure_claims.py
measures the same numbers on more images against the real goals)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

import vit_edu
from vit_edu import analysis, data
from vit_edu.train import COURSE_CHECKPOINT, evaluate, pretrained_course_model, read_safetensors_metadata

FRESH_SEED = 777  # neither the training data (seed 0) nor the default test set (seed 1)


@pytest.fixture(scope="module")
def shipped():
    return pretrained_course_model()


def test_shipped_checkpoint_is_small_documented_and_loads(shipped) -> None:
    model, info = shipped
    assert COURSE_CHECKPOINT.stat().st_size < 5 * 2**20
    assert isinstance(model, vit_edu.VisionTransformer) and not model.training
    assert info["classes"] == list(data.SHAPE_CLASSES)
    assert "vit_edu train" in info["command"] and isinstance(info["seed"], int)
    assert 0.0 <= info["test_acc"] <= 1.0
    meta = read_safetensors_metadata(COURSE_CHECKPOINT)
    assert vit_edu.ViTConfig.from_dict(json.loads(meta["config"])) == model.config
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_shipped_checkpoint_accuracy_on_fresh_images(shipped) -> None:
    model, _ = shipped
    ds = data.get_dataset("shapes", split="test", n=1000, seed=FRESH_SEED)
    assert evaluate(model, DataLoader(ds, batch_size=500))["acc"] >= 0.95


def test_rollout_sits_on_the_object(shipped) -> None:
    model, _ = shipped
    ds = data.ShapesDataset(n=200, seed=FRESH_SEED, return_mask=True)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    masks = torch.stack([ds[i][2] for i in range(len(ds))])
    with torch.no_grad():
        _, attentions = model(images, return_attention=True)
    maps = analysis.rollout_cls_map(attentions, model.config.grid_size)
    assert analysis.attention_localization(maps, masks, model.config.patch_size)["mean"] >= 1.5


@pytest.mark.xfail(strict=True, reason="known gap: the shipped model's learned position embeddings show no 2-D "
                   "grid structure (Spearman about +0.04, goal <= -0.5); needs a retrained checkpoint")
def test_learned_position_embeddings_encode_the_grid(shipped) -> None:
    model, _ = shipped
    trained = analysis.similarity_distance_correlation(
        analysis.pos_embed_similarity(model.pos_embed, model.config.grid_size))
    assert trained["spearman"] <= -0.3


def test_random_position_embeddings_have_no_grid_structure() -> None:
    torch.manual_seed(0)
    fresh = vit_edu.create_model("vit_course_patch4_32", num_classes=8)
    random_init = analysis.similarity_distance_correlation(
        analysis.pos_embed_similarity(fresh.pos_embed, fresh.config.grid_size))
    assert abs(random_init["spearman"]) < 0.2
    # the statistic itself can see structure: a smooth 2-D sin-cos table scores strongly negative
    smooth = analysis.similarity_distance_correlation(
        analysis.pos_embed_similarity(vit_edu.sincos_2d_pos_embed(64, (8, 8))[None], (8, 8), num_prefix_tokens=0))
    assert smooth["spearman"] <= -0.5
