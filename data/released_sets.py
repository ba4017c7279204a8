"""The published robustness sets in their released layouts, listed, checked and read as uint8
pixels at a model's input size: ImageNet-A, ImageNet-C, ImageNet-P, and any pre-made corrupted
set laid out as ImageNet-C is.

Released layouts (Hendrycks et al.; what their archives unpack to):
- ImageNet-A: `<root>/<wnid>/<image>`, 200 WordNet-id folders of natural images of any size
  (natural-adv-examples/eval.py reads it as an ImageFolder, crop as ImageNet's validation).
  Plain files beside the folders (its README.txt) are not images and are skipped.
- ImageNet-C: `<root>/<corruption>/<severity 1-5>/<wnid>/<image>`, 224x224 images that are
  already ImageNet's centre crops. Its five archives (noise, blur, weather, digital, extra) may
  also be unpacked into a folder each: `<root>/<group>/<corruption>/...` is read the same.
- ImageNet-P: `<root>/<perturbation>/<wnid>/<image>.mp4`, one video of 224x224 frames per
  validation image (ImageNet-P/test.py reads them as a DatasetFolder of .mp4 files). A sequence
  may also be stored as `<image>.npy`, uint8 `[T, H, W, 3]` (frames decoded once, read without a
  video decoder).

Labels are indices into the 1,000 ImageNet-1k WordNet ids in sorted order (`imagenet_wnids`),
the class order of the released ImageNet checkpoints, for all three sets; ImageNet-A's 200 classes
are `imagenet_a_wnids` (their positions: `imagenet_a_indices`). The two lists ship as
imagenet_1k_wnids.txt and imagenet_a_wnids.txt beside this file; sources: the 1,000 ids are
`all_wnids` of hendrycks/imagenet-r eval.py (sorted, and the order of ImageNet's
LOC_synset_mapping.txt), the 200 are those ids at the positions that hendrycks/natural-adv-
examples eval.py's `thousand_k_to_200` maps to 0-199 (equal to ImageNet-A's folder names listed
on their own in other evaluation code).

Reading ImageNet-P's .mp4 files needs PyAV (`pip install 'noisy-student-tf[video]'`, or
requirements-video.txt): FFmpeg's own decoder, with FFmpeg inside its wheels, so nothing else is
installed on the machine.
"""

import dataclasses
import functools
import io
import os
import typing

import numpy as np
import tensorflow as tf
from absl import logging

from data import preprocess

_HERE = os.path.dirname(os.path.abspath(__file__))
IMAGENET_WNIDS_FILE = os.path.join(_HERE, "imagenet_1k_wnids.txt")
IMAGENET_A_WNIDS_FILE = os.path.join(_HERE, "imagenet_a_wnids.txt")
SEVERITIES = ("1", "2", "3", "4", "5")
SEQUENCE_EXTENSIONS = (".mp4", ".npy")
# The corruption and perturbation folders each set releases (test and validation ones).
IMAGENET_C_NAMES = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform",
    "pixelate", "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate")
IMAGENET_P_NAMES = ("gaussian_noise", "shot_noise", "motion_blur", "zoom_blur", "snow",
                    "brightness", "translate", "rotate", "tilt", "scale", "speckle_noise",
                    "gaussian_blur", "spatter", "shear")
VIDEO_EXTRA = "noisy-student-tf[video]"


class Item(typing.NamedTuple):
  path: str
  label: int


class CorruptedFolder(typing.NamedTuple):
  corruption: str
  severity: int
  path: str


def _read_ids(path, count):
  with tf.io.gfile.GFile(path) as f:
    ids = [line.strip() for line in f if line.strip()]
  if len(ids) != count or len(set(ids)) != count or ids != sorted(ids):
    raise ValueError(f"{path} must hold {count} distinct WordNet ids in sorted order")
  return ids


@functools.cache
def imagenet_wnids():
  """The 1,000 ImageNet-1k WordNet ids, sorted: index = the class of an ImageNet model."""
  return tuple(_read_ids(IMAGENET_WNIDS_FILE, 1000))


@functools.cache
def imagenet_a_wnids():
  """ImageNet-A's 200 WordNet ids, sorted: index = the ImageNet-A label."""
  ids = _read_ids(IMAGENET_A_WNIDS_FILE, 200)
  unknown = sorted(set(ids) - set(imagenet_wnids()))
  if unknown:
    raise ValueError(f"{IMAGENET_A_WNIDS_FILE}: {unknown[0]} is not an ImageNet-1k id")
  return tuple(ids)


def imagenet_a_indices():
  """Each ImageNet-A class's index among the 1,000 (increasing: both lists are sorted)."""
  position = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
  return tuple(position[wnid] for wnid in imagenet_a_wnids())


def _visible(path):
  return sorted(e.rstrip("/") for e in tf.io.gfile.listdir(path) if not e.startswith("."))


def class_folders(path):
  """The visible sub-folders of `path`, sorted: a labeled image folder's classes."""
  return [name for name in _visible(path) if tf.io.gfile.isdir(os.path.join(path, name))]


def _check_dir(root, flag):
  if not root or not tf.io.gfile.isdir(root):
    raise ValueError(f"{flag} {root!r}: not a directory")


def labeled_files(root, class_names, *, what, skip_files=False):
  """`Item(path, label)` for every file of `<root>/<class>/`, label = the class's index in
  `class_names` (the folders may be a subset of them). Hidden entries are ignored.

  Args:
    what: names the set in errors ("--eval_data (ImageNet-A)").
    skip_files: plain files directly under root are skipped (ImageNet-A's README.txt), not an
      error.
  """
  index = {name: i for i, name in enumerate(class_names)}
  items = []
  for name in _visible(root):
    path = os.path.join(root, name)
    if not tf.io.gfile.isdir(path):
      if skip_files:
        continue
      raise ValueError(f"{path}: {what} holds class folders only, found a file")
    if name not in index:
      raise ValueError(f"{path}: {name!r} is not one of {what}'s classes "
                       f"({', '.join(list(class_names)[:3])}, ...)")
    items.extend(Item(os.path.join(path, f), index[name]) for f in _visible(path))
  if not items:
    raise ValueError(f"{root}: no images in class folders ({what})")
  return items


def list_imagenet_a(root):
  """ImageNet-A's images with labels 0-199 (`imagenet_a_wnids` order)."""
  _check_dir(root, "--eval_data")
  return labeled_files(root, imagenet_a_wnids(), what="ImageNet-A", skip_files=True)


def list_corrupted_folders(root, corruptions=None, *, known=None):
  """Lists `<root>/<corruption>/<severity>/` folders of a pre-made set (ImageNet-C, CIFAR-10-C
  exported as images), each a labeled image folder (`<class>/<images>`).

  Checks the layout only down to the class folders: every visible entry of root is a corruption
  folder, holding severity folders named 1-5, each holding the same class folders as every
  other. Hidden entries (".*") are ignored.

  Args:
    root: local or gs:// directory.
    corruptions: names to keep (each must be present); None keeps all.
    known: the only corruption names there may be (ImageNet-C's); an entry of root outside them
      may then be a folder of corruption folders (one of ImageNet-C's archives unpacked into a
      folder of its own). None: any name is a corruption.

  Returns:
    `CorruptedFolder(corruption, severity, path)` tuples sorted by corruption, then severity.

  Raises:
    ValueError: naming the first path that does not fit the layout.
  """
  if not tf.io.gfile.isdir(root):
    raise ValueError(f"{root}: not a directory")
  found = _corruption_dirs(root, known)
  if corruptions is not None:
    missing = [name for name in corruptions if name not in found]
    if missing:
      raise ValueError(f"{os.path.join(root, missing[0])}: no such corruption folder")
    found = {name: path for name, path in found.items() if name in corruptions}
  if not found:
    raise ValueError(f"{root}: no corruption folders")
  folders, classes, first = [], None, None
  for name, corruption_dir in sorted(found.items()):
    if not tf.io.gfile.isdir(corruption_dir):
      raise ValueError(f"{corruption_dir}: expected a corruption folder, found a file")
    severities = _visible(corruption_dir)
    if not severities:
      raise ValueError(f"{corruption_dir}: no severity folders (expected 1-5)")
    for severity in severities:
      severity_dir = os.path.join(corruption_dir, severity)
      if severity not in SEVERITIES or not tf.io.gfile.isdir(severity_dir):
        raise ValueError(f"{severity_dir}: expected only severity folders named 1-5")
      entries = _visible(severity_dir)
      files = [c for c in entries if not tf.io.gfile.isdir(os.path.join(severity_dir, c))]
      if not entries or files:
        raise ValueError(f"{severity_dir}: expected class folders"
                         + (f", found file {files[0]!r}" if files else ", found none"))
      if classes is None:
        classes, first = entries, severity_dir
      elif entries != classes:
        odd = sorted(set(entries) ^ set(classes))
        raise ValueError(f"{severity_dir}: class folders differ from {first} (e.g. {odd[0]!r})")
      folders.append(CorruptedFolder(name, int(severity), severity_dir))
  return sorted(folders, key=lambda f: (f.corruption, f.severity))


def _corruption_dirs(root, known):
  """{corruption: its folder} of root, looking one level down into group folders when `known`
  names the corruptions."""
  found = {}
  for name in _visible(root):
    path = os.path.join(root, name)
    if known is None or name in known:
      found[name] = path
      continue
    inner = _visible(path) if tf.io.gfile.isdir(path) else []
    if not inner or any(n not in known for n in inner):
      raise ValueError(f"{path}: neither a corruption folder nor a folder of them (the "
                       f"corruptions are {', '.join(known)})")
    for corruption in inner:
      if corruption in found:
        raise ValueError(f"{os.path.join(path, corruption)}: {corruption} is also at "
                         f"{found[corruption]}")
      found[corruption] = os.path.join(path, corruption)
  return found


def list_imagenet_c(root):
  """ImageNet-C's (corruption, severity) folders: names from its 19 corruptions, flat or in
  group folders."""
  _check_dir(root, "--corrupted_data")
  return list_corrupted_folders(root, known=IMAGENET_C_NAMES)


def list_imagenet_p(root):
  """{perturbation: [Item(sequence path, label)]} of ImageNet-P's layout: perturbation folders
  from its 14 names, each holding ImageNet wnid folders of .mp4 (or .npy) sequences.

  Raises:
    ValueError: before any work, naming the first path that breaks the layout, or the missing
      video reader when a sequence is an .mp4 and PyAV is not installed.
  """
  _check_dir(root, "--perturbed_data")
  sequences = {}
  for name in _visible(root):
    path = os.path.join(root, name)
    if name not in IMAGENET_P_NAMES or not tf.io.gfile.isdir(path):
      raise ValueError(f"{path}: not an ImageNet-P perturbation folder (they are "
                       f"{', '.join(IMAGENET_P_NAMES)})")
    items = labeled_files(path, imagenet_wnids(), what="ImageNet-P")
    odd = [i.path for i in items if not i.path.lower().endswith(SEQUENCE_EXTENSIONS)]
    if odd:
      raise ValueError(f"{odd[0]}: an ImageNet-P sequence is an .mp4 video (or .npy frames)")
    sequences[name] = items
  if not sequences:
    raise ValueError(f"{root}: no perturbation folders (ImageNet-P)")
  if any(i.path.lower().endswith(".mp4") for items in sequences.values() for i in items):
    _video_module()
  return sequences


def _video_module():
  try:
    import av  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ValueError(f"ImageNet-P's .mp4 videos need PyAV: pip install '{VIDEO_EXTRA}' (or "
                     "pip install -r requirements-video.txt)") from e
  return av


def read_sequence(path):
  """One sequence's frames, uint8 `[T, H, W, 3]` RGB: an .mp4 decoded by FFmpeg (PyAV), every
  frame in order, or an .npy array."""
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  if path.lower().endswith(".npy"):
    frames = np.load(io.BytesIO(data), allow_pickle=False)
  else:
    av = _video_module()
    try:
      with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError) as e:
      raise ValueError(f"{path}: not a readable video ({e})") from e
    frames = np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
    raise ValueError(f"{path}: a sequence must be at least 2 RGB frames, got {frames.dtype} "
                     f"{frames.shape}")
  return frames


def _pixels(pixels):
  return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)


def uncropped(config):
  """`config` for images that are already the eval crop (ImageNet-C's and -P's 224x224): only
  resized, when their size differs from the model's."""
  return dataclasses.replace(config, small_image=True)


def image_dataset(items, config, *, batch_size):
  """(uint8 `[B, S, S, 3]`, int32 labels `[B]`) batches of `items`' image files, in order, with
  `config`'s eval preprocessing (`preprocess.eval_pixels`: the centre crop unless small_image).
  Files that do not decode are dropped with a warning (the caller counts what came through)."""
  paths = tf.constant([item.path for item in items])
  labels = tf.constant([item.label for item in items], tf.int32)

  def load(path, label):
    return _pixels(preprocess.eval_pixels(tf.io.read_file(path), config)), label

  rows = tf.data.Dataset.from_tensor_slices((paths, labels))
  rows = rows.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return rows.ignore_errors(log_warning=True).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def sequence_dataset(items, config, skipped=None):
  """(uint8 frames `[T, S, S, 3]`, int32 label) per sequence of `items`, in order, each frame
  resized to `config`'s size when it differs (the frames are already crops). A sequence that
  does not read is left out with a warning, its path appended to `skipped`."""
  config = uncropped(config)

  def sequences():
    for item in items:
      try:
        frames = read_sequence(item.path)
      except ValueError as e:  # one broken video must not end an hours-long run
        logging.warning("skipped: %s", e)
        if skipped is not None:
          skipped.append(item.path)
        continue
      yield frames, item.label

  def resize(frames, label):
    frames = tf.map_fn(lambda frame: _pixels(preprocess.eval_image_pixels(frame, config)),
                       frames, fn_output_signature=tf.uint8)
    return frames, label

  rows = tf.data.Dataset.from_generator(sequences, output_signature=(
      tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32)))
  return rows.map(resize, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True).prefetch(tf.data.AUTOTUNE)
