"""Write the RLDS fixtures with the real `tensorflow-datasets` (TFDS) builder machinery.

Not part of the test run: TensorFlow is not a dependency of lawam. The files it wrote are
committed beside it; regenerate them (the same episodes, pixels and values; the bytes may
differ, protobuf does not fix the order of an Example's feature map) in a throwaway virtual
environment:

    python3.11 -m venv /tmp/tfds-venv
    /tmp/tfds-venv/bin/pip install tensorflow-cpu==2.21.0 tensorflow-datasets==4.9.10
    /tmp/tfds-venv/bin/python tests/fixtures_rlds/make_rlds.py

Two datasets, each with the feature names of a corpus the field pretrains on, as TFDS's
`GeneratorBasedBuilder` (the way Open X-Embodiment and DROID were converted, e.g. with
`kpertsch/rlds_dataset_builder`) writes them: `features.json`, `dataset_info.json` and
TFRecord shards, one record per episode, steps flattened.

- `oxe_tiny/1.0.0`: OXE / BridgeData-style steps: `observation/image` (JPEG) and
  `observation/wrist_image` (PNG), `observation/state` (7), `action` (7),
  `language_instruction`, `is_first/is_last/is_terminal`, `reward`, `discount`;
  `episode_metadata/file_path`. Splits `train` (4 episodes) and `val` (2), two shards each.
- `droid_tiny/1.0.0`: DROID-style: `observation/exterior_image_1_left`, `exterior_image_2_left`,
  `wrist_image_left` (JPEG), `observation/joint_position`, `action_dict/`
  (`cartesian_velocity` (6), `gripper_velocity` (1)), a nested action, three instruction
  fields, `episode_metadata/recording_folderpath` (no `file_path`). One split, 3 episodes, two shards.

Pixels carry their step index (the top-left 8x8 block is `10 * step` grey), so a test can
tell which step a decoded frame came from, as `tests/media.py` does for videos.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

HERE = Path(__file__).resolve().parent
SIDE = 32


def frame(step: int, episode: int, cam: int) -> np.ndarray:
    rng = np.random.default_rng(1000 * episode + 10 * step + cam)
    img = rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)
    img[:8, :8] = min(250, 10 * step)  # the step index, readable after JPEG and resizing
    img[8:16, :8] = 40 * episode
    return img


def oxe_episode(e: int, steps: int, split: str) -> dict:
    rng = np.random.default_rng(e)
    return {
        "steps": [
            {
                "observation": {
                    "image": frame(t, e, 0),
                    "wrist_image": frame(t, e, 1),
                    "state": (np.arange(7) + 100 * e + t).astype(np.float32),
                },
                "action": (np.arange(7) * 0.01 + e + t / 100).astype(np.float32),
                "discount": 1.0,
                "reward": float(t == steps - 1),
                "is_first": t == 0,
                "is_last": t == steps - 1,
                "is_terminal": t == steps - 1,
                "language_instruction": f"put the block in bowl {e}",
                "language_embedding": rng.standard_normal(8).astype(np.float32),
            }
            for t in range(steps)
        ],
        "episode_metadata": {"file_path": f"/data/raw/{split}/episode_{e}.npy"},
    }


class OxeTiny(tfds.core.GeneratorBasedBuilder):
    """OXE-style RLDS episodes."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({
                "steps": tfds.features.Dataset({
                    "observation": tfds.features.FeaturesDict({
                        "image": tfds.features.Image(shape=(SIDE, SIDE, 3), dtype=np.uint8, encoding_format="jpeg"),
                        "wrist_image": tfds.features.Image(shape=(SIDE, SIDE, 3), dtype=np.uint8,
                                                           encoding_format="png"),
                        "state": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                    }),
                    "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                    "discount": tfds.features.Scalar(dtype=np.float32),
                    "reward": tfds.features.Scalar(dtype=np.float32),
                    "is_first": tfds.features.Scalar(dtype=np.bool_),
                    "is_last": tfds.features.Scalar(dtype=np.bool_),
                    "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                    "language_instruction": tfds.features.Text(),
                    "language_embedding": tfds.features.Tensor(shape=(8,), dtype=np.float32),
                }),
                "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()}),
            }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples("train", range(4)), "val": self._generate_examples("val", (4, 5))}

    def _generate_examples(self, split, episodes):
        for e in episodes:
            yield f"{split}_{e}", oxe_episode(e, steps=10 + 2 * e, split=split)


def droid_episode(e: int, steps: int) -> dict:
    return {
        "steps": [
            {
                "observation": {
                    "exterior_image_1_left": frame(t, e, 0),
                    "exterior_image_2_left": frame(t, e, 1),
                    "wrist_image_left": frame(t, e, 2),
                    "joint_position": (np.arange(7) * 0.1 + e).astype(np.float64),
                    "gripper_position": np.array([t / steps], np.float64),
                },
                "action_dict": {
                    "cartesian_velocity": (np.arange(6) + 10 * e + t).astype(np.float64),
                    "gripper_velocity": np.array([e + t / 10], np.float64),
                },
                "action": (np.arange(7) + 10 * e + t).astype(np.float64),
                "discount": 1.0,
                "reward": 0.0,
                "is_first": t == 0,
                "is_last": t == steps - 1,
                "is_terminal": t == steps - 1,
                "language_instruction": f"open drawer {e}",
                "language_instruction_2": f"pull drawer {e} open",
                "language_instruction_3": "",
            }
            for t in range(steps)
        ],
        "episode_metadata": {
            "recording_folderpath": f"gs://bucket/droid/lab/success/2023-04-2{e}/recordings/MP4",
        },
    }


class DroidTiny(tfds.core.GeneratorBasedBuilder):
    """DROID-style RLDS episodes."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        img = dict(shape=(SIDE, SIDE, 3), dtype=np.uint8, encoding_format="jpeg")
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({
                "steps": tfds.features.Dataset({
                    "observation": tfds.features.FeaturesDict({
                        "exterior_image_1_left": tfds.features.Image(**img),
                        "exterior_image_2_left": tfds.features.Image(**img),
                        "wrist_image_left": tfds.features.Image(**img),
                        "joint_position": tfds.features.Tensor(shape=(7,), dtype=np.float64),
                        "gripper_position": tfds.features.Tensor(shape=(1,), dtype=np.float64),
                    }),
                    "action_dict": tfds.features.FeaturesDict({
                        "cartesian_velocity": tfds.features.Tensor(shape=(6,), dtype=np.float64),
                        "gripper_velocity": tfds.features.Tensor(shape=(1,), dtype=np.float64),
                    }),
                    "action": tfds.features.Tensor(shape=(7,), dtype=np.float64),
                    "discount": tfds.features.Scalar(dtype=np.float32),
                    "reward": tfds.features.Scalar(dtype=np.float32),
                    "is_first": tfds.features.Scalar(dtype=np.bool_),
                    "is_last": tfds.features.Scalar(dtype=np.bool_),
                    "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                    "language_instruction": tfds.features.Text(),
                    "language_instruction_2": tfds.features.Text(),
                    "language_instruction_3": tfds.features.Text(),
                }),
                "episode_metadata": tfds.features.FeaturesDict({"recording_folderpath": tfds.features.Text()}),
            }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(3))}

    def _generate_examples(self, episodes):
        for e in episodes:
            yield f"ep_{e}", droid_episode(e, steps=9 + e)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for builder_cls in (OxeTiny, DroidTiny):
        tmp = out / "_build"
        builder = builder_cls(data_dir=str(tmp))
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=2))
        built = tmp / builder.name / str(builder.VERSION)
        dest = out / builder.name / str(builder.VERSION)
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(built, dest)
        shutil.rmtree(tmp)
        print(dest, sorted(os.listdir(dest)))


if __name__ == "__main__":
    main()
