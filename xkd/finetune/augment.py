"""What fine-tuning does to a training batch on the device, after the DALI view ops
(dali_pipelines/labelled.py), and the targets it trains on (docs/method.md §Fine-tuning):

* video: timm's RandomErasing (one box per clip, the same in every frame), then timm's Mixup /
  CutMix over the batch with label smoothing in the targets;
* audio: SpecAugment-style masking (torchaudio's FrequencyMasking / TimeMasking, each mask drawn for
  each clip; masked bins get 0, the dataset mean of the normalised log-mel), then Mixup / CutMix
  if the config asks for it.

Targets are (B, C) float rows: soft one-hot rows for single-label sets (they sum to one), the
multi-hot rows for multi-label sets (mixed, if mixing is on). Every draw comes from the process's
torch, numpy and Python generators, which checkpoints save and restore."""
from __future__ import annotations

import torch

from xkd.finetune.config import AugmentConfig


def multi_hot(label_sets: list[tuple[int, ...]], classes: int, device) -> torch.Tensor:
    """(B, classes) float rows with 1 at each sample's class ids."""
    rows = torch.zeros(len(label_sets), classes, device=device)
    for row, ids in zip(rows, label_sets):
        row[list(ids)] = 1.0
    return rows


class BatchAugment:
    def __init__(self, augment: AugmentConfig, modality: str, num_classes: int, multi_label: bool):
        from timm.data import Mixup

        self.modality, self.num_classes, self.multi_label = modality, num_classes, multi_label
        self.smoothing = augment.label_smoothing
        self.mixup = None
        if augment.mixup > 0 or augment.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=augment.mixup, cutmix_alpha=augment.cutmix, prob=augment.mixup_prob,
                               switch_prob=augment.switch_prob, mode="batch", label_smoothing=self.smoothing,
                               num_classes=num_classes, multi_label=multi_label)
        self.erasing = self.masks = None
        if modality == "video" and augment.random_erasing > 0:
            from timm.data.random_erasing import RandomErasing

            self.erasing = RandomErasing(augment.random_erasing, mode="pixel", max_count=1, device="cpu")
        if modality == "audio":
            from torchaudio.transforms import FrequencyMasking, TimeMasking

            self.masks = ([FrequencyMasking(augment.freq_mask_width, iid_masks=True)] * augment.freq_masks
                          + [TimeMasking(augment.time_mask_width, iid_masks=True)] * augment.time_masks)

    def __call__(self, clips: torch.Tensor, labels: torch.Tensor, label_sets: list[tuple[int, ...]]):
        """(augmented clips, targets (B, num_classes) float). `clips` is changed in place."""
        dense = multi_hot(label_sets, self.num_classes, clips.device) if self.multi_label else labels
        # video (B, C, T, H, W) as images of C x T channels: boxes cut across every frame alike
        images = clips.flatten(1, 2) if self.modality == "video" else clips
        if self.erasing is not None:
            self.erasing.device = images.device
            self.erasing(images)
        for mask in self.masks or ():
            images = mask(images)
        if self.mixup is not None:
            images, targets = self.mixup(images, dense)
        else:
            from timm.data.mixup import mixup_target

            targets = mixup_target(dense, self.num_classes, 1.0, self.smoothing, self.multi_label)
        return images.view(clips.shape), targets
