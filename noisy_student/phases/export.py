"""The export phase: a checkpoint as a model to serve, its own eval preprocessing inside.

Writes into the output directory:
  saved_model/   a TensorFlow SavedModel that needs neither this repository nor any other file
                 (`tf.saved_model.load`, TF Serving). Signatures: `serving_default` (= `serve`)
                 takes uint8 images [batch, height, width, 3] of any size; `serve_bytes` takes
                 encoded image files [batch] (PNG, JPEG, GIF, BMP; an undecodable one fails the
                 request). Both return `probabilities` float32 [batch, C], `class_index` int64
                 [batch] and `class_name` string [batch], the names baked in as constants.
  serving.keras  the `serve` model as a Keras file (uint8 images in, the same outputs). It holds
                 this repository's layers (EfficientNet and the two below), so it loads only
                 where the project is importable (a clone, or after `pip install .` once
                 noisy_student_tf.noisy_student.package_path is imported): `load_serving_model`.

Inside, each image goes through data.preprocess's eval path (center crop and bicubic resize, or
the small-image resize) and mean/std with the checkpoint's own settings (what predict and eval
give it), then the model in inference mode, then softmax at temperature 1 (what predict stores).
Images of a uint8 batch share one size; images of other sizes go in separate calls, or as bytes.
Eval crops a JPEG while decoding it (`tf.image.decode_and_crop_jpeg`), whose pixels near the
window's edge can be off those of the whole decoded image (by up to 15 levels, measured): JPEGs
sent to `serve_bytes` get eval's pixels exactly, JPEGs decoded by the caller and sent as uint8
nearly.
"""

import contextlib
import os

import keras
import tensorflow as tf

import efficientnet
from data import preprocess
from data import records

SAVED_MODEL = "saved_model"
KERAS_FILE = "serving.keras"
PIXELS_ENDPOINT = "serve"          # the first endpoint: also the SavedModel's serving_default
BYTES_ENDPOINT = "serve_bytes"
# Each endpoint's SavedModel signature name, as a client calls it (the first endpoint is also
# reachable under its own name, `serve`).
SIGNATURES = {PIXELS_ENDPOINT: "serving_default", BYTES_ENDPOINT: BYTES_ENDPOINT}
INPUT_SPECS = {
    PIXELS_ENDPOINT: tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
    BYTES_ENDPOINT: tf.TensorSpec([None], tf.string, name="encoded"),
}


@keras.saving.register_keras_serializable(package="noisy_student")
class EvalPreprocessing(keras.layers.Layer):
  """Images -> normalised model inputs [B, S, S, 3], per image exactly data.preprocess's eval path.

  `encoded=False`: uint8 pixels [B, H, W, 3], any H and W (`preprocess.eval_image_pixels`);
  `encoded=True`: image files [B] (`preprocess.eval_pixels`, which crops JPEGs as they decode,
  as eval does).
  """

  def __init__(self, image_size, small_image, mean, std, encoded=False, **kwargs):
    super().__init__(**kwargs)
    self.config = preprocess.PreprocessConfig(image_size=int(image_size),
                                              small_image=bool(small_image), mean=tuple(mean),
                                              std=tuple(std))
    self.encoded = bool(encoded)

  def call(self, images):
    size = self.config.image_size
    one_image = preprocess.eval_pixels if self.encoded else preprocess.eval_image_pixels
    # One image at a time: before the crop and resize, images of a bytes batch differ in size.
    pixels = tf.map_fn(lambda image: one_image(image, self.config), images,
                       fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
    return preprocess.normalize(pixels, self.config)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.config.image_size, self.config.image_size, 3)

  def get_config(self):
    return {**super().get_config(), "image_size": self.config.image_size,
            "small_image": self.config.small_image, "mean": list(self.config.mean),
            "std": list(self.config.std), "encoded": self.encoded}


@keras.saving.register_keras_serializable(package="noisy_student")
class TopClass(keras.layers.Layer):
  """Logits [B, C] -> (class index int64 [B], class name string [B]).

  From the logits, not the probabilities: eval ranks classes by logit (a float32 softmax can
  round two close logits to one probability).
  """

  def __init__(self, class_names, **kwargs):
    super().__init__(**kwargs)
    self.class_names = [str(name) for name in class_names]

  def call(self, logits):
    index = tf.argmax(logits, axis=-1)
    return index, tf.gather(tf.constant(self.class_names), index)

  def compute_output_spec(self, logits):
    batch = logits.shape[:-1]
    return keras.KerasTensor(batch, dtype="int64"), keras.KerasTensor(batch, dtype="string")

  def get_config(self):
    return {**super().get_config(), "class_names": self.class_names}


def build_serving_models(model, prep, class_names):
  """{endpoint name: Keras model from that endpoint's input to {"probabilities", "class_index",
  "class_name"}}: `model` (logits from normalised images, run in inference mode) with `prep`'s
  eval preprocessing before it. The models share `model`'s weights.

  Raises:
    ValueError: `class_names` does not name every class of `model`.
  """
  num_classes = int(model.output.shape[-1])
  if len(class_names) != num_classes:
    raise ValueError(f"--class_names names {len(class_names)} classes but the model has "
                     f"{num_classes}")
  top_class = TopClass(class_names, name="top_class")
  softmax = keras.layers.Softmax(name="probabilities", dtype="float32")
  fields = dict(image_size=prep.image_size, small_image=prep.small_image, mean=prep.mean,
                std=prep.std)
  models = {}
  for endpoint, spec in INPUT_SPECS.items():
    encoded = endpoint == BYTES_ENDPOINT
    inputs = keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype.name, name=spec.name)
    preprocessing = EvalPreprocessing(**fields, encoded=encoded,
                                      name="decode_and_preprocess" if encoded else "preprocess")
    logits = model(preprocessing(inputs), training=False)
    index, name = top_class(logits)
    models[endpoint] = keras.Model(
        inputs, {"probabilities": softmax(logits), "class_index": index, "class_name": name},
        name=f"{model.name}_{endpoint}")
  return models


def export_phase(model, prep, output_dir, class_names):
  """Writes `output_dir`/saved_model/ and `output_dir`/serving.keras (module docstring), each
  under its final name only when complete.

  Args:
    model: the checkpoint's model (logits from normalised images), from checkpoints.load_model.
    prep: its eval `PreprocessConfig` (checkpoints.eval_preprocessing).
    output_dir: the directory to write; a previous export there is replaced.
    class_names: one name per class, baked into the models.

  Returns:
    A JSON-ready summary: paths, signatures (by their SavedModel names, SIGNATURES), class names
    and preprocessing.
  """
  models = build_serving_models(model, prep, class_names)
  tf.io.gfile.makedirs(output_dir)
  saved_model = os.path.join(output_dir, SAVED_MODEL)
  with _atomic_directory(saved_model) as tmp:
    archive = keras.export.ExportArchive()
    for endpoint, serving in models.items():
      archive.track(serving)
      archive.add_endpoint(endpoint, _inference(serving), input_signature=[INPUT_SPECS[endpoint]])
    archive.write_out(tmp, verbose=False)
  keras_file = os.path.join(output_dir, KERAS_FILE)
  with records.atomic_path(keras_file) as tmp:  # its temporary name ends in .keras, as Keras wants
    models[PIXELS_ENDPOINT].save(tmp)
  return {"saved_model": saved_model, "keras_file": keras_file,
          "signatures": {SIGNATURES[name]: f"{spec.name} {spec.dtype.name} {spec.shape}"
                         for name, spec in INPUT_SPECS.items()},
          "class_names": list(class_names), "image_size": prep.image_size,
          "small_image": prep.small_image, "mean": list(prep.mean), "std": list(prep.std)}


def load_serving_model(path):
  """serving.keras, with the layers of this repository it holds named explicitly."""
  return keras.models.load_model(path, custom_objects={
      "EfficientNet": efficientnet.EfficientNet, "EvalPreprocessing": EvalPreprocessing,
      "TopClass": TopClass})


def _inference(serving):
  return lambda inputs: serving(inputs, training=False)


@contextlib.contextmanager
def _atomic_directory(final_path):
  """Yields a temporary sibling directory name to write; it becomes `final_path` when the block
  ends (a previous `final_path` is moved aside first, then deleted) and is removed when it
  raises. Readers never see a half-written directory under the final name."""
  tmp = records.temporary_path(final_path)
  try:
    yield tmp
    old = None
    if tf.io.gfile.exists(final_path):
      old = records.temporary_path(final_path)
      tf.io.gfile.rename(final_path, old)
    tf.io.gfile.rename(tmp, final_path)
    if old:
      tf.io.gfile.rmtree(old)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.rmtree(tmp)
    raise
