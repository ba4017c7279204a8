"""`main.py --mode=export`: the SavedModel, loaded where this repository cannot be imported, gives
what `--mode=eval` and `--mode=predict` give on the same images.

A tiny model is trained through main.py on image files of many sizes (a folder conversion), with
the ImageNet-style eval path (center crop of size/(size+32) of the shorter side, bicubic resize)
so that every image is cropped and resized differently. The SavedModel runs in a subprocess of
`python -I` from an empty directory (no PYTHONPATH, no repository on sys.path, `import
noisy_student` asserted to fail): the uint8 endpoint gets each PNG test image as TensorFlow
decodes it, at its own size, one call per image; the bytes endpoint gets the files, PNGs and
JPEGs, in one batch. (A JPEG's pixels decoded whole are not exactly eval's: eval crops JPEGs
while decoding, `tf.image.decode_and_crop_jpeg`, whose chroma upsampling at the window's edge
differs by up to ~15 levels; the bytes endpoint does what eval does.)
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

import main
from data import decode
from data import preprocess
from noisy_student.phases import export

CLASS_NAMES = ["blue", "green", "red"]  # the folders, in the sorted order convert labels them
CHANNEL = {"red": 0, "green": 1, "blue": 2}  # bright in an image of that class
SIZE = 16  # the model's input; the files are 12-40 pixels a side
TINY_MODEL = [f"--image_size={SIZE}", "--width_coefficient=0.1", "--depth_coefficient=0.1"]
# A float32 network on other batch compositions (eval: batches of 256 through one tf.function;
# the SavedModel: one image per call) moves these probabilities by ~1e-7 to 1.2e-5, depending on
# the trained weights (measured: 1.2e-5 on two of 54 values once batch norm was recalibrated in
# 256-image batches; the float64 softmax of predict against the SavedModel's float32 one adds
# ~1e-7); 5e-5 leaves a margin of 4 and is half the top-1/top-2 gap the argmax comparison relies
# on (asserted > 1e-4), so no argmax can flip within it.
PROBABILITY_ATOL = 5e-5
SUBPROCESS_TIMEOUT_S = 120


def run(*args):
  """main.py in this process, as tests/test_main.py runs it."""
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


def _write_images(root, per_class, rng, jpeg_every=0):
  """root/<class>/<i>.png (every jpeg_every-th a JPEG): the class's channel bright, 12-40 px."""
  for name in CLASS_NAMES:
    (root / name).mkdir(parents=True)
    for index in range(per_class):
      height, width = rng.integers(12, 41, 2)
      pixels = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
      pixels[..., CHANNEL[name]] += 150 + rng.integers(0, 40, (height, width)).astype(np.uint8)
      jpeg = jpeg_every and index % jpeg_every == 0
      Image.fromarray(pixels).save(root / name / f"{index}.{'jpg' if jpeg else 'png'}",
                                   quality=95)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  rng = np.random.default_rng(0)
  _write_images(root / "files" / "labeled", 16, rng)
  _write_images(root / "files" / "test", 6, rng)
  _write_images(root / "files" / "jpeg", 2, rng, jpeg_every=1)
  for split, output in (("labeled", "labeled"), ("test", "test"), ("jpeg", "test")):
    run("--mode=convert", "--source=folder", f"--input={root / 'files' / split}",
        f"--output={root / output}", f"--split={split}", "--num_shards=2")
  run("--mode=train", f"--labeled_data={root / 'labeled'}", "--eval_data=",
      f"--workdir={root / 'run'}", "--train_steps=4", "--batch_size=8", "--warmup_epochs=0",
      "--batch_norm_recalibration_images=16", "--seed=3", *TINY_MODEL)
  return root


# Runs under `python -I`: no repository code, only TensorFlow.
_SERVE = """
import json, sys
import numpy as np
import tensorflow as tf
try:
  import noisy_student
  sys.exit("noisy_student is importable here")
except ImportError:
  pass
saved_model, pngs, files = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
served = tf.saved_model.load(saved_model)
default = served.signatures["serving_default"]
result = {"signature": {k: [v.dtype.name, v.shape.as_list()]
                        for k, v in default.structured_input_signature[1].items()},
          "pixels": [], "bytes": None}
for path in pngs:
  image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  out = default(images=image[tf.newaxis])
  result["pixels"].append({k: v.numpy()[0].tolist() if k != "class_name" else
                           v.numpy()[0].decode() for k, v in out.items()})
out = served.signatures["serve_bytes"](encoded=tf.stack([tf.io.read_file(p) for p in files]))
result["bytes"] = {k: v.numpy().tolist() if k != "class_name" else
                   [n.decode() for n in v.numpy()] for k, v in out.items()}
print(json.dumps(result))
"""


def _serve_isolated(saved_model, pngs, files, cwd):
  """The SavedModel's answers for each of `pngs` as pixels and for `files` as bytes."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  result = subprocess.run([sys.executable, "-I", "-c", _SERVE, str(saved_model),
                           *(json.dumps([str(f) for f in fs]) for fs in (pngs, files))],
                          capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=SUBPROCESS_TIMEOUT_S, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


# Oracle: the project's own eval and predict (two paths agree: export = eval/predict); against
# NumPy: test_the_pixels_endpoint_is_softmax_of_the_model_restated_in_numpy.
def test_saved_model_without_the_repository_gives_evals_and_predicts_answers(
    trained, tmp_path, prediction_records):
  run("--mode=export", f"--checkpoint={trained / 'run'}", f"--output={tmp_path / 'export'}")
  assert sorted(os.listdir(tmp_path / "export")) == ["saved_model", "serving.keras"]

  # The PNG split only: what the uint8 endpoint is compared on.
  run("--mode=eval", f"--checkpoint={trained / 'run'}",
      f"--eval_data={trained / 'test' / 'test-*.tfrecord'}", f"--output={tmp_path / 'eval'}")
  metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  run("--mode=predict", f"--checkpoint={trained / 'run'}",
      f"--unlabeled_data={trained / 'test' / '*.tfrecord'}", f"--output={tmp_path / 'predict'}")
  predicted = {}
  for shard in sorted((tmp_path / "predict").glob("*.tfrecord")):
    fields = prediction_records(shard)
    predicted.update(zip((k[0].decode() for k in fields["image/key"]), fields["probabilities"]))

  # The files, as the converter keyed them (`<split>/<class>/<name>`).
  pngs, jpegs = (sorted((trained / "files" / split).rglob("*.*")) for split in ("test", "jpeg"))
  keys = {f: f"{f.parents[1].name}/{f.parent.name}/{f.name}" for f in pngs + jpegs}
  assert sorted(keys.values()) == sorted(predicted) and metrics["num_examples"] == len(pngs)
  assert {f.suffix for f in pngs} == {".png"} and {f.suffix for f in jpegs} == {".jpg"}
  assert len({Image.open(f).size for f in pngs}) > 10  # sizes all over

  empty = tmp_path / "elsewhere"
  empty.mkdir()
  served = _serve_isolated(tmp_path / "export" / "saved_model", pngs, pngs + jpegs, empty)
  assert served["signature"] == {"images": ["uint8", [None, None, None, 3]]}

  by_bytes = [dict(zip(served["bytes"], v)) for v in zip(*served["bytes"].values())]
  for name, files, rows in (("pixels", pngs, served["pixels"]),
                            ("bytes", pngs + jpegs, by_bytes)):
    expected = np.array([predicted[keys[f]] for f in files])
    ranked = np.sort(expected, axis=1)
    assert (ranked[:, -1] - ranked[:, -2] > 1e-4).all()  # the tolerance cannot flip an argmax
    probabilities = np.array([row["probabilities"] for row in rows])
    index = np.array([row["class_index"] for row in rows])
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=PROBABILITY_ATOL,
                               err_msg=name)
    np.testing.assert_array_equal(index, expected.argmax(axis=1), err_msg=name)
    assert [row["class_name"] for row in rows] == [CLASS_NAMES[i] for i in index], name
    # eval's top-1 on the PNGs, to the last example.
    labels = np.array([CLASS_NAMES.index(f.parent.name) for f in pngs])
    assert float(np.mean(index[:len(pngs)] == labels)) == metrics["top1"], name

  # The .keras file: the uint8 endpoint, with this repository's layers.
  serving = export.load_serving_model(tmp_path / "export" / "serving.keras")
  out = serving(decode.decode_rgb(tf.io.read_file(str(pngs[0])))[tf.newaxis])
  np.testing.assert_allclose(out["probabilities"][0], served["pixels"][0]["probabilities"],
                             rtol=0, atol=PROBABILITY_ATOL)
  assert out["class_name"].numpy()[0].decode() == served["pixels"][0]["class_name"]
  assert not list(tmp_path.rglob(".tmp-*"))


def test_an_export_replaces_a_previous_one_whole_and_a_failed_one_leaves_it(tmp_path):
  final = tmp_path / "saved_model"
  final.mkdir()
  (final / "stale").write_text("from an older export")
  with pytest.raises(RuntimeError):
    with export._atomic_directory(str(final)) as tmp:  # pylint: disable=protected-access
      os.makedirs(tmp)
      (pathlib.Path(tmp) / "half").write_text("written before the failure")
      raise RuntimeError("killed")
  assert os.listdir(tmp_path) == ["saved_model"] and os.listdir(final) == ["stale"]
  with export._atomic_directory(str(final)) as tmp:  # pylint: disable=protected-access
    os.makedirs(tmp)
    (pathlib.Path(tmp) / "new").write_text("complete")
    assert os.listdir(final) == ["stale"]  # the old one stays until the new one is complete
  assert os.listdir(tmp_path) == ["saved_model"] and os.listdir(final) == ["new"]


def test_class_names_of_another_length_is_an_error_naming_the_flag(trained, tmp_path):
  with pytest.raises(SystemExit, match="--class_names names 2 classes but the model has 3"):
    run("--mode=export", f"--checkpoint={trained / 'run'}", f"--output={tmp_path / 'x'}",
        "--class_names=a,b")
  assert not (tmp_path / "x" / "saved_model").exists()


def test_the_printed_signatures_are_the_saved_models_and_readmes_names(tmp_path):
  import efficientnet  # pylint: disable=g-import-not-at-top
  model = efficientnet.build_model("efficientnet-b0", 2, image_size=SIZE, small_image=True,
                                   width_coefficient=0.1, depth_coefficient=0.1)
  prep = preprocess.PreprocessConfig(image_size=SIZE, small_image=True)
  summary = export.export_phase(model, prep, str(tmp_path), ["a", "b"])
  served = tf.saved_model.load(summary["saved_model"])
  assert set(summary["signatures"]) == {"serving_default", "serve_bytes"}
  for name, described in summary["signatures"].items():
    (spec,) = served.signatures[name].structured_input_signature[1].values()
    assert described == f"{spec.name} {spec.dtype.name} {spec.shape}"
  readme = (pathlib.Path(__file__).resolve().parents[3] / "README.md").read_text()
  for name in summary["signatures"]:
    assert f'signatures["{name}"]' in readme


def test_the_pixels_endpoint_is_softmax_of_the_model_restated_in_numpy():
  """The serving wrapper on a linear model: (pixels - mean) / std, x @ W + b, softmax, argmax and
  its name, each restated in NumPy (small-image eval at its own size leaves the pixels as
  they are)."""
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(5)
  size, names = 4, ["ant", "bee", "cat"]
  inputs = keras.Input((size, size, 3))
  model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
  mean, std = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)
  prep = preprocess.PreprocessConfig(image_size=size, small_image=True, mean=mean, std=std)
  serve = export.build_serving_models(model, prep, names)[export.PIXELS_ENDPOINT]
  pixels = np.random.default_rng(6).integers(0, 256, (5, size, size, 3), np.uint8)
  out = serve(tf.constant(pixels))
  kernel, bias = model.layers[-1].get_weights()
  logits = ((pixels - np.array(mean)) / np.array(std)).reshape(5, -1) @ kernel + bias
  exp = np.exp(logits - logits.max(axis=1, keepdims=True))
  np.testing.assert_allclose(out["probabilities"], exp / exp.sum(axis=1, keepdims=True),
                             rtol=0, atol=1e-5)
  np.testing.assert_array_equal(out["class_index"], logits.argmax(axis=1))
  assert [n.decode() for n in out["class_name"].numpy()] == [names[i] for i in
                                                             logits.argmax(axis=1)]
