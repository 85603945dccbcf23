"""A re-creation of the seed's Caffe data layer (`ReadImageAndPointData_Layer`), for timing.

The seed fed its network from a Python layer configured by `param_str` (see
`seed_repo/caffe/*/train.prototxt`; the copy in ../shared/reference keeps only its parameter
parsing, the rest follows the complete file in the public ACII19-Apex-Time-Network
repository). What it does, re-created here without Caffe:

* setup: read the text list `<image> <label>` (shuffled), read the whole flow text file
  (`<name>` line, then `sequence_length` lines of `pointdim` space-separated numbers with a
  leading space, zero rows at the front) into a dict name -> float32 [T, D];
* forward, one sample at a time: `cv2.imread` the apex image (gray), cast to float32,
  parse the label from the list line, look the sequence up by `<db>-<subject>-<clip>`
  (the first three '-' fields of the image name), move its non-zero rows to the end,
  resize every channel with `cv2.resize` into a float64 C x H x W array, crop (centre or
  one of four corners; none at crop 0), subtract the mean and scale, then augment in
  Python — mirror (per channel), rotation by a random whole degree in 0..max with
  `cv2.getRotationMatrix2D` + `cv2.warpAffine`, colour shift by a random 0..max grey levels,
  each with probability p — and copy into the batch arrays (image N x C x H x W, label
  N x 1, sequence T x N x D, continuation indicator T x N); wrap around and reshuffle at
  the end of the list.

Differences, all in the seed's favour or neutral for timing: the seed read `probability`
while its prototxts set `probability_value`, so it never augmented, and its mirror indexed
the wrong axis (`aug_img[:, :, k]`, which would have raised on a gray image); here the
augmentation runs with p = 0.5 and mirrors each channel, so both loaders do the work the
recipe asks for (the flow sequence is not mirrored: the seed had no such step). Image names
here are the MEGC2019 release's `<sample_id>.jpg`; the sequence key drops the extension.
"""

from __future__ import annotations

import math
import os
import random

import cv2
import numpy as np


class SeedLoader:
    def __init__(self, source: str, sourcepoint: str, root_folder: str = "", batch_size: int = 16,
                 state: str = "train", color: bool = False, shuffle: bool = True, new_height: int = 224,
                 new_width: int = 224, crop_height: int = 0, crop_width: int = 0,
                 sequence_length: int = 64, pointdim: int = 128, mean_value: float = 0.0,
                 scale: float = 1.0, probability: float = 0.5, mirror: bool = True, rotation: bool = True,
                 maxrotation: int = 5, colorshift: bool = True, maxcolorshift: int = 10, seed: int = 0):
        self.source, self.sourcepoint, self.root_folder = source, sourcepoint, root_folder
        self.batch_size, self.state, self.color, self.shuffle = batch_size, state, color, shuffle
        self.new_height, self.new_width = new_height, new_width
        self.crop_height, self.crop_width = crop_height, crop_width
        self.sequence_length, self.pointdim = sequence_length, pointdim
        self.mean_value, self.scale = mean_value, scale
        self.probability, self.mirror, self.rotation, self.maxrotation = probability, mirror, rotation, maxrotation
        self.colorshift, self.maxcolorshift = colorshift, maxcolorshift
        self.rng = random.Random(seed)
        self.setup()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        with open(self.source) as f:
            self.lines = f.readlines()
        if self.shuffle:
            self.rng.shuffle(self.lines)
        self.total = len(self.lines)
        with open(self.sourcepoint) as f:
            rows = [x.strip("\n") for x in f.readlines()]
        self.points = {}
        step = self.sequence_length + 1
        for i in range(0, len(rows), step):
            value = np.zeros((self.sequence_length, self.pointdim))
            for j in range(self.sequence_length):
                fields = np.array(rows[i + j + 1].strip("\r\n").split(" "))
                value[j, :] = fields[1:]              # the line starts with a space
                value = np.array(value, dtype=np.float32)   # as the seed: a copy per row
            self.points[rows[i]] = value
        self.idx = 0
        first = self._read(self.lines[0])
        c = first.shape[0]
        h = self.crop_height or self.new_height or first.shape[1]
        w = self.crop_width or self.new_width or first.shape[2]
        self.image_shape = (c, h, w)

    def _read(self, line: str) -> np.ndarray:
        path = os.path.join(self.root_folder, line.strip("\n").split(" ")[0])
        if self.color:
            return cv2.imread(path).transpose((2, 0, 1))
        return cv2.imread(path, cv2.IMREAD_GRAYSCALE)[np.newaxis, :, :]

    # ------------------------------------------------------------------ per sample
    def transform(self, img: np.ndarray) -> np.ndarray:
        c, h, w = img.shape
        rh, rw = self.new_height or h, self.new_width or w
        resized = np.zeros((c, rh, rw))
        for k in range(c):
            resized[k] = cv2.resize(img[k], (rh, rw))
        ch, cw = self.crop_height or rh, self.crop_width or rw
        bh, mh = int(math.ceil((rh - ch) / 2)), (rh - ch) % 2
        bw, mw = int(math.ceil((rw - cw) / 2)), (rw - cw) % 2
        if self.state == "train":
            pos = self.rng.randint(0, 4)
        else:
            pos = 0
        if pos == 0:
            out = resized[:, bh:rh - bh + mh, bw:rw - bw + mw]
        elif pos == 1:
            out = resized[:, :rh - 2 * bh + mh, :rw - 2 * bw + mw]
        elif pos == 2:
            out = resized[:, :rh - 2 * bh + mh, 2 * bw - mw:]
        elif pos == 3:
            out = resized[:, 2 * bh - mh:, :rw - 2 * bw + mw]
        else:
            out = resized[:, 2 * bh - mh:, 2 * bw - mw:]
        return (out - self.mean_value) * self.scale

    def augment(self, img: np.ndarray) -> np.ndarray:
        c, h, w = img.shape
        if self.rng.random() < self.probability and self.mirror:
            for k in range(c):
                img[k] = np.fliplr(img[k])
        if self.rng.random() < self.probability and self.rotation:
            degree = self.rng.randint(0, self.maxrotation)
            m = cv2.getRotationMatrix2D((h / 2, w / 2), degree, 1)
            for k in range(c):
                img[k] = cv2.warpAffine(img[k], m, (h, w))
        if self.rng.random() < self.probability and self.colorshift:
            img = img - self.rng.randint(0, self.maxcolorshift)
        return img

    def forward(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One batch: image N x C x H x W, label N x 1, sequence T x N x D, indicator T x N."""
        n, t, d = self.batch_size, self.sequence_length, self.pointdim
        images = np.zeros((n,) + self.image_shape, np.float32)
        labels = np.zeros((n, 1), np.float32)
        seqs = np.zeros((t, n, d), np.float32)
        cont = np.zeros((t, n), np.float32)
        for i in range(n):
            line = self.lines[self.idx]
            img = np.array(self._read(line), dtype=np.float32)
            name, label = line.strip("\n").split(" ")[:2]
            parts = os.path.splitext(name)[0].split("-")
            point = self.points[parts[0] + "-" + parts[1] + "-" + parts[2]]
            rows = [k for k in range(t) if np.sum(point[k, :]) != 0]
            seq = point
            if rows:
                seq = np.zeros((t, d))
                seq[t - len(rows):, :] = point[rows, :]
            fixed = np.ones(t, np.uint8)
            fixed[0] = 0
            img = self.augment(self.transform(img))
            images[i] = img
            labels[i, 0] = int(label)
            seqs[:, i, :] = seq
            cont[:, i] = fixed
            self.idx += 1
            if self.idx == self.total:
                self.idx = 0
                if self.shuffle:
                    self.rng.shuffle(self.lines)
        return images, labels, seqs, cont


def write_seed_files(records: list[dict], image_root: str, out_dir: str,
                     sequence_length: int = 64) -> tuple[str, str]:
    """Write the seed's two text inputs for `records` (dicts with sample_id, label and a
    float32 [T, 128] flow_seq): `Apex_Cropped_images.txt` (`<sample_id>.jpg <label>`) and
    `OpticalFlowFeatureData.txt` (name line + `sequence_length` rows, zero rows at the
    front). Returns (list path, flow text path)."""
    list_path = os.path.join(out_dir, "Apex_Cropped_images.txt")
    flow_path = os.path.join(out_dir, "OpticalFlowFeatureData.txt")
    with open(list_path, "w") as f:
        for r in records:
            if not os.path.isfile(os.path.join(image_root, r["sample_id"] + ".jpg")):
                raise FileNotFoundError(os.path.join(image_root, r["sample_id"] + ".jpg"))
            f.write(f"{r['sample_id']}.jpg {int(r['label'])}\n")
    with open(flow_path, "w") as f:
        for r in records:
            seq = np.asarray(r["flow_seq"], np.float32)[-sequence_length:]
            full = np.zeros((sequence_length, seq.shape[1]), np.float32)
            full[sequence_length - len(seq):] = seq
            f.write(r["sample_id"] + "\n")
            for row in full:
                f.write("".join(f" {v:.5g}" for v in row) + "\n")
    return list_path, flow_path
