"""The released robustness sets' layouts, class lists and readers, against the sources the lists
were taken from, PIL and NumPy."""

import os
import sys

import numpy as np
from PIL import Image
import pytest

from data import preprocess
from data import released_sets


# ---- The class lists ----

def test_imagenet_wnids_are_the_1000_sorted_ids():
  ids = released_sets.imagenet_wnids()
  assert len(ids) == len(set(ids)) == 1000 and list(ids) == sorted(ids)
  # First and last of ImageNet's LOC_synset_mapping.txt (tench, toilet tissue).
  assert (ids[0], ids[1], ids[-1]) == ("n01440764", "n01443537", "n15075141")


def test_imagenet_a_ids_are_where_natural_adv_examples_maps_them():
  indices = released_sets.imagenet_a_indices()
  # natural-adv-examples eval.py: thousand_k_to_200 = {..., 6: 0, ..., 11: 1, 13: 2, 15: 3,
  # 17: 4, ..., 988: 199, ...}; its 200 classes in their order.
  assert indices[:5] == (6, 11, 13, 15, 17) and indices[-1] == 988
  assert len(indices) == 200 and list(indices) == sorted(set(indices))
  a_ids = released_sets.imagenet_a_wnids()
  assert (a_ids[0], a_ids[-1]) == ("n01498041", "n12267677")  # stingray ... acorn
  assert [released_sets.imagenet_wnids()[i] for i in indices] == list(a_ids)


def test_the_lists_ship_with_the_package():
  pyproject = open(os.path.join(os.path.dirname(released_sets.__file__), os.pardir,
                                "pyproject.toml")).read()
  section = pyproject.split("[tool.setuptools.package-data]")[1].split("\n[")[0]
  assert '"noisy_student_tf.data" = ["*_wnids.txt"]' in section
  for path in (released_sets.IMAGENET_WNIDS_FILE, released_sets.IMAGENET_A_WNIDS_FILE):
    assert path.endswith("_wnids.txt") and os.path.dirname(path) == os.path.dirname(
        released_sets.__file__)


# ---- Layouts ----

def _touch(path):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"")


def test_imagenet_a_lists_labels_in_the_200_class_order_and_skips_its_readme(tmp_path):
  ids = released_sets.imagenet_a_wnids()
  _touch(tmp_path / ids[5] / "b.jpg")
  _touch(tmp_path / ids[5] / "a.jpg")
  _touch(tmp_path / ids[0] / "c.jpg")
  (tmp_path / "README.txt").write_text("ImageNet-A")
  items = released_sets.list_imagenet_a(str(tmp_path))
  assert [(os.path.relpath(i.path, tmp_path), i.label) for i in items] == [
      (f"{ids[0]}/c.jpg", 0), (f"{ids[5]}/a.jpg", 5), (f"{ids[5]}/b.jpg", 5)]
  _touch(tmp_path / "n01440764" / "x.jpg")  # an ImageNet class that ImageNet-A does not have
  with pytest.raises(ValueError, match="n01440764'? is not one of ImageNet-A's classes"):
    released_sets.list_imagenet_a(str(tmp_path))
  with pytest.raises(ValueError, match="--eval_data .*not a directory"):
    released_sets.list_imagenet_a(str(tmp_path / "absent"))


def _make_tree(root, layout):
  for corruption, severities in layout.items():
    for severity, classes in severities.items():
      for name in classes:
        _touch(root / corruption / str(severity) / name / "0.jpeg")


def test_list_corrupted_folders_enumerates_the_layout(tmp_path):
  _make_tree(tmp_path, {"fog": {2: ["cat", "dog"], 1: ["cat", "dog"]},
                        "contrast": {5: ["cat", "dog"]}})
  (tmp_path / ".DS_Store").write_bytes(b"")
  found = released_sets.list_corrupted_folders(str(tmp_path))
  assert [(f.corruption, f.severity) for f in found] == [("contrast", 5), ("fog", 1), ("fog", 2)]
  assert found[1].path == os.path.join(str(tmp_path), "fog", "1")
  only = released_sets.list_corrupted_folders(str(tmp_path), corruptions=["fog"])
  assert [f.severity for f in only] == [1, 2]


@pytest.mark.parametrize("layout, extra_file, bad_path", [
    ({"fog": {6: ["cat"]}}, None, "fog/6"),
    ({"fog": {1: ["cat"], 2: ["cat", "dog"]}}, None, "fog/2"),
    ({"fog": {1: ["cat"]}}, "fog/1/stray.jpeg", "fog/1"),
    ({"fog": {1: ["cat"]}}, "README", "README"),
])
def test_list_corrupted_folders_names_the_malformed_path(tmp_path, layout, extra_file, bad_path):
  _make_tree(tmp_path, layout)
  if extra_file:
    (tmp_path / extra_file).write_bytes(b"")
  with pytest.raises(ValueError, match=os.path.join(str(tmp_path), bad_path)):
    released_sets.list_corrupted_folders(str(tmp_path))


def test_list_corrupted_folders_rejects_missing_root_and_corruption(tmp_path):
  with pytest.raises(ValueError, match="not a directory"):
    released_sets.list_corrupted_folders(str(tmp_path / "absent"))
  _make_tree(tmp_path, {"fog": {1: ["cat"]}})
  with pytest.raises(ValueError, match="snow: no such corruption folder"):
    released_sets.list_corrupted_folders(str(tmp_path), corruptions=["snow"])


def test_imagenet_c_reads_its_archives_flat_or_one_folder_each(tmp_path):
  wnid = released_sets.imagenet_wnids()[3]
  _make_tree(tmp_path / "flat", {"fog": {1: [wnid]}, "saturate": {2: [wnid]}})
  _make_tree(tmp_path / "grouped" / "weather", {"fog": {1: [wnid]}})
  _make_tree(tmp_path / "grouped" / "extra", {"saturate": {2: [wnid]}})
  for root in ("flat", "grouped"):
    found = released_sets.list_imagenet_c(str(tmp_path / root))
    assert [(f.corruption, f.severity) for f in found] == [("fog", 1), ("saturate", 2)]
  _make_tree(tmp_path / "grouped" / "mine", {"haze": {1: [wnid]}})
  with pytest.raises(ValueError, match="grouped/mine: neither a corruption folder"):
    released_sets.list_imagenet_c(str(tmp_path / "grouped"))


def test_imagenet_p_layout_and_sequence_files(tmp_path):
  ids = released_sets.imagenet_wnids()
  frames = np.zeros((3, 4, 4, 3), np.uint8)
  for name in ("rotate", "gaussian_noise"):
    (tmp_path / name / ids[2]).mkdir(parents=True)
    np.save(tmp_path / name / ids[2] / "x.npy", frames)
  found = released_sets.list_imagenet_p(str(tmp_path))
  assert sorted(found) == ["gaussian_noise", "rotate"] and found["rotate"][0].label == 2
  (tmp_path / "rotate" / ids[2] / "x.gif").write_bytes(b"")
  with pytest.raises(ValueError, match=r"x.gif: an ImageNet-P sequence is an .mp4"):
    released_sets.list_imagenet_p(str(tmp_path))
  (tmp_path / "rotate" / ids[2] / "x.gif").unlink()
  (tmp_path / "warp").mkdir()
  with pytest.raises(ValueError, match="warp: not an ImageNet-P perturbation folder"):
    released_sets.list_imagenet_p(str(tmp_path))


def test_mp4_without_pyav_fails_before_any_work_naming_the_extra(tmp_path, monkeypatch):
  wnid = released_sets.imagenet_wnids()[0]
  _touch(tmp_path / "scale" / wnid / "x.mp4")
  monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
  with pytest.raises(ValueError, match=r"PyAV: pip install 'noisy-student-tf\[video\]'"):
    released_sets.list_imagenet_p(str(tmp_path))


# ---- Readers ----

def test_read_sequence_of_npy_frames(tmp_path):
  frames = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), np.uint8)
  np.save(tmp_path / "s.npy", frames)
  np.testing.assert_array_equal(released_sets.read_sequence(str(tmp_path / "s.npy")), frames)
  np.save(tmp_path / "one.npy", frames[:1])
  with pytest.raises(ValueError, match="one.npy: a sequence must be at least 2 RGB frames"):
    released_sets.read_sequence(str(tmp_path / "one.npy"))


def write_lossless_mp4(path, frames):
  """An .mp4 of exactly these RGB frames (H.264 in RGB, lossless: libx264rgb at qp 0)."""
  av = pytest.importorskip("av")
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264rgb", rate=10)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "rgb24"
    stream.options = {"qp": "0"}
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


def test_read_sequence_decodes_every_mp4_frame_in_order(tmp_path):
  frames = np.random.default_rng(1).integers(0, 256, (7, 16, 16, 3), np.uint8)
  write_lossless_mp4(tmp_path / "v.mp4", frames)
  np.testing.assert_array_equal(released_sets.read_sequence(str(tmp_path / "v.mp4")), frames)
  (tmp_path / "bad.mp4").write_bytes(b"not a video")
  with pytest.raises(ValueError, match="bad.mp4: not a readable video"):
    released_sets.read_sequence(str(tmp_path / "bad.mp4"))


def test_image_dataset_crops_as_imagenet_eval_or_not_at_all(tmp_path):
  rng = np.random.default_rng(2)
  pixels = rng.integers(0, 256, (64, 80, 3), np.uint8)
  Image.fromarray(pixels).save(tmp_path / "a.png")
  small = rng.integers(0, 256, (32, 32, 3), np.uint8)
  Image.fromarray(small).save(tmp_path / "b.png")
  config = preprocess.PreprocessConfig(image_size=32)
  items = [released_sets.Item(str(tmp_path / "a.png"), 7)]
  (images, labels), = released_sets.image_dataset(items, config, batch_size=4)
  # The eval crop: side int(32 / (32 + 32) * 64) = 32 at offsets ((64 - 32) + 1) // 2 = 16 and
  # ((80 - 32) + 1) // 2 = 24, already the model's size (no resize).
  np.testing.assert_array_equal(images.numpy()[0], pixels[16:48, 24:56])
  assert labels.numpy().tolist() == [7]
  items = [released_sets.Item(str(tmp_path / "b.png"), 1)] * 3
  (images, labels), = released_sets.image_dataset(items, released_sets.uncropped(config),
                                                   batch_size=4)
  np.testing.assert_array_equal(images.numpy(), np.stack([small] * 3))


def test_sequence_dataset_skips_a_broken_sequence_and_says_so(tmp_path):
  frames = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), np.uint8)
  np.save(tmp_path / "good.npy", frames)
  np.save(tmp_path / "short.npy", frames[:1])
  items = [released_sets.Item(str(tmp_path / n), 4) for n in ("short.npy", "good.npy")]
  skipped = []
  rows = list(released_sets.sequence_dataset(
      items, preprocess.PreprocessConfig(image_size=32), skipped))
  assert len(rows) == 1 and skipped == [str(tmp_path / "short.npy")]
  np.testing.assert_array_equal(rows[0][0].numpy(), frames)
  assert int(rows[0][1]) == 4
