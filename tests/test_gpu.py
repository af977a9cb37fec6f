"""GPU path (run with `pytest -m gpu` on a CUDA machine; skipped elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.methods.diffseg.algorithm import DiffSegOptions
from labeler.methods.diffseg.segmenter import DiffSeg
from labeler.models.backbone import load_backbone
from tests.helpers import flat_regions_image

pytestmark = pytest.mark.gpu


def test_half_precision_unet_keeps_fp32_attention_maps():
    backbone = load_backbone("tiny", device="cuda")
    assert backbone.dtype in (torch.float16, torch.bfloat16)
    image, _ = flat_regions_image(128, 128, "quadrants")
    maps = DiffSeg(backbone).attention_maps([image])
    for probabilities in maps.values():
        assert probabilities.dtype == torch.float32 and probabilities.device.type == "cuda"
        torch.testing.assert_close(
            probabilities.sum(-1), torch.ones_like(probabilities[..., 0]), atol=1e-4, rtol=0
        )


def test_gpu_labels_agree_with_cpu_labels():
    image, _ = flat_regions_image(128, 160, "quadrants")
    options = DiffSegOptions(kl_threshold=0.5)
    on_cpu = DiffSeg(load_backbone("tiny", device="cpu"), options).label([image])[0]
    on_gpu = DiffSeg(load_backbone("tiny", device="cuda", dtype="float32"), options).label([image])[0]
    agreement = np.mean(on_cpu.label_map == on_gpu.label_map)
    assert agreement > 0.99


def test_device_compaction_on_cuda_matches_the_cpu():
    from labeler.methods.device_labels import compact_device_labels  # numpy on the CPU

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(-1, 30, (384, 512), generator=generator)
    confidence = torch.rand(384, 512, generator=generator)
    on_cpu = compact_device_labels(labels, confidence, 768, 1024)
    on_gpu = compact_device_labels(labels.cuda(), confidence.cuda(), 768, 1024)
    np.testing.assert_array_equal(on_gpu.label_map, on_cpu.label_map)
    np.testing.assert_allclose(on_gpu.scores, on_cpu.scores, rtol=1e-12, atol=0)
