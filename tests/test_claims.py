"""The course's claims about the shipped checkpoint, measured on images it never saw (seed 777: neither the
training data nor the default test set). The bounds are the course's goals where the measured value clears
them by a margin that another CPU's last bits cannot erase (benchmarks/measure_claims.py measures on more
images); a retrained checkpoint that loses one of the paper's Fig. 7 findings fails here."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import vit_edu
from vit_edu.explain import analysis
from vit_edu.training import COURSE_CHECKPOINT, data, evaluate, pretrained_course_model, read_safetensors_metadata

FRESH_SEED = 777


@pytest.fixture(scope="module")
def shipped():
    return pretrained_course_model()


@pytest.fixture(scope="module")
def learned(shipped):
    """what_the_model_learned for the shipped model and for the same architecture at random init."""
    model, info = shipped
    ds = data.ShapesDataset(n=300, seed=FRESH_SEED, return_mask=True, palette=info["palette"])
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    masks = torch.stack([ds[i][2] for i in range(len(ds))])
    torch.manual_seed(0)
    fresh = vit_edu.VisionTransformer(model.config)  # same architecture and init scheme, before training
    return analysis.what_the_model_learned(model, images, masks), analysis.what_the_model_learned(fresh, images, masks)


def test_shipped_checkpoint_is_a_plain_vit_small_documented_and_loads(shipped) -> None:
    model, info = shipped
    c = model.config
    # the paper's plain ViT: patch embedding, class token read out, learned 1-D position table, no CNN stem
    assert c.hybrid_layers is None and c.class_token and c.pool == "cls" and c.pos_embedding == "learned"
    assert COURSE_CHECKPOINT.stat().st_size < 5 * 2**20
    assert isinstance(model, vit_edu.VisionTransformer) and not model.training
    assert info["classes"] == list(data.SHAPE_CLASSES)
    assert "vit_edu train" in info["command"] and isinstance(info["seed"], int)
    assert info["train_config"]["fresh_data"] is True
    assert 0.0 <= info["test_acc"] <= 1.0
    meta = read_safetensors_metadata(COURSE_CHECKPOINT)
    assert vit_edu.ViTConfig.from_dict(json.loads(meta["config"])) == model.config
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _recipe(command: str) -> dict[str, str]:
    """The training flags of a `vit_edu train` command line, without where the run and the export were written."""
    words = shlex.split(command.replace("\\\n", " "))
    words = words[words.index("train") + 1:]
    flags, i = {}, 0
    while i < len(words):
        takes_value = i + 1 < len(words) and not words[i + 1].startswith("--")
        flags[words[i]] = words[i + 1] if takes_value else ""
        i += 2 if takes_value else 1
    return {k: v for k, v in flags.items() if k not in ("--out-dir", "--export")}


def test_shipped_checkpoint_was_made_by_the_documented_command(shipped) -> None:
    """docs/training.md's command is the one recorded in the file: the checkpoint is reproducible from the docs."""
    _, info = shipped
    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    section = doc.split("## The shipped checkpoint", 1)[1]
    documented = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    assert _recipe(documented) == _recipe(info["command"])
    assert info["train_config"]["weight_init"] == "jax" == shipped[0].config.weight_init


def test_shipped_checkpoint_accuracy_on_fresh_images(shipped) -> None:
    model, info = shipped
    assert info["palette"] == "mottled"  # its images: a faint object under patch-sized blotches (docs/training.md)
    ds = data.get_dataset("shapes", split="test", n=3000, seed=FRESH_SEED, palette=info["palette"])
    assert evaluate(model, DataLoader(ds, batch_size=500))["acc"] >= 0.98  # 98.77 % here; 98.53 % on 10,000


def test_rollout_sits_on_the_object(learned) -> None:
    trained, random_init = learned
    assert trained["localization"] >= 2.5  # the course's goal; measured 3.72 (benchmarks/measure_claims.py)
    assert abs(random_init["localization"] - 1.0) < 0.15


def test_learned_position_embeddings_encode_the_grid(learned) -> None:
    """Fig. 7 centre: closer patches have more similar position embeddings."""
    trained, random_init = learned
    assert trained["spearman"] <= -0.6  # the course's goal; measured -0.887
    assert abs(random_init["spearman"]) < 0.2


def test_a_local_first_layer_head_and_distance_rising_with_depth(learned) -> None:
    """Fig. 7 right: a first-layer head attends locally (mean attention distance at most 0.6x that of uniform
    attention; measured 0.37) and the mean over the heads grows from the first layer to the last (0.76 -> 0.97),
    where at random initialization every head attends about uniformly."""
    trained, random_init = learned
    assert trained["distance"]["first_layer_min"] <= 0.6 and trained["distance"]["rising"]
    assert trained["distance"]["layer_mean"][-1] > trained["distance"]["layer_mean"][0] + 0.1
    assert random_init["distance"]["first_layer_min"] > 0.97


def test_patch_filters_are_smooth_unlike_random_init(learned) -> None:
    """Fig. 7 left: the principal components of the trained filters are smooth patterns, random ones are not."""
    trained, random_init = learned
    assert abs(random_init["smoothness"]) < 0.2
    assert trained["smoothness"] > random_init["smoothness"] + 0.2
    assert trained["variance_top"] > random_init["variance_top"]


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
