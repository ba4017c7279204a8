"""Rehearsal of every recipe at its real shape on this CPU: the paper's file formats, models,
resolutions, class counts, unlabeled ratios, top-k storage and preprocessing, with only the
counts (batch sizes, steps, images) reduced, and each recipe's memory per image measured.

Parts (--parts, in this order):
  data     synthetic data in the reference's formats: ImageNet TFRecords as tensorflow/tpu's
           imagenet_to_gcs.py writes them (1,000 classes, real JPEGs, 1-based image/class/label,
           synsets, train-*/validation-* shard names) and SVHN's train/test/extra_32x32.mat;
           converted with `main.py --mode=convert` (--source=tfrecord, --source=svhn_mat).
  phases   per recipe (--recipes): `main.py --flagfile=recipes/X.flags --mode=M` subprocesses,
           teacher (train, 1 step: a freshly initialised model of the recipe's teacher variant)
           -> predict -> filter -> train (the student) -> finetune -> eval -> export. Every
           override is printed and recorded. A phase whose estimated memory (from the memory
           part) exceeds what this machine has free is skipped, and says so.
  memory   per recipe, peak host memory of one training step and one inference step of the
           project's own model, loss, optimizer and EMA at the recipe's resolution, in a fresh
           subprocess each, at two batch sizes: the difference per image, and the fixed part.
  chains   the chain recipes' `--mode=iterate --dry_run` plans (recipes/*_chain.flags).

Results go to --json (atomically, after every step), the log of every subprocess beside it.

  python benchmarks/rehearse.py                       # everything (see RESULTS.md for its time)
  python benchmarks/rehearse.py --recipes svhn --parts data,phases   # the slow test's part
"""

import argparse
import dataclasses
import glob
import io
import json
import math
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GIB = 2 ** 30
NUM_CLASSES = 1000
PARTS = ("data", "phases", "memory", "chains")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What the rehearsal runs of one recipe file. `teacher` is the recipe that trains the teacher
  (the student's own file for ImageNet: the reference's train.sh uses a teacher of the student's
  architecture); `finetune` the FixRes step the recipe's header documents (none for B0-B7: it is
  then run at the recipe's own size, to check the mode on that recipe); `predict_size` the size
  the teacher predicts at (L2: the released L2 teacher's 800; else its own train size)."""
  name: str
  student: str
  teacher: str
  imagenet: bool = True
  finetune: tuple = ()
  predict_size: int | None = None


RECIPES = {
    "svhn": Recipe("svhn", "svhn_student", "svhn_teacher", imagenet=False),
    **{f"b{i}": Recipe(f"b{i}", f"imagenet_b{i}_student", f"imagenet_b{i}_student")
       for i in range(8)},
    "l2": Recipe("l2", "imagenet_l2_student", "imagenet_l2_student",
                 finetune=("--image_size=800", "--freeze_blocks=44"), predict_size=800),
}

# Published memory per device (accelerator memory a replica holds), in bytes. Sources in
# benchmarks/RESULTS.md ("Rehearsal"): Cloud TPU v3/v4 system architecture pages (32 GiB HBM
# per chip; a v3 chip is two cores, each its own replica), NVIDIA's A100 and H100 figures.
DEVICES = {"TPU v3 core": 16 * GIB, "TPU v4 chip": 32 * GIB, "A100 40GB": 40e9,
           "A100 80GB": 80e9, "H100 80GB": 80e9}
# Replica counts the per-replica batch is computed for: one 8-device host (a TPU v3-8, eight
# GPUs), and the paper's 2048-core TPU v3 pod (reference digest: L2 trained on one for ~6 days).
REPLICAS = (8, 2048)
# Accelerator bytes per parameter in training: float32 weights, gradients, RMSProp's two slots
# and the EMA (mixed precision keeps variables in float32).
TRAIN_BYTES_PER_PARAMETER = 20


def recipe_flags(name, _seen=None):
  """{flag: value} a recipe file sets (nested --flagfile included; the last setting wins),
  booleans as "true"/"false"."""
  path = name if os.path.isabs(name) else os.path.join(ROOT, name)
  if not path.endswith(".flags"):
    path = os.path.join(ROOT, "recipes", name + ".flags")
  values = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line.startswith("--"):
        continue
      key, equals, value = line[2:].partition("=")
      if key == "flagfile":
        values.update(recipe_flags(value))
      elif equals:
        values[key] = value
      elif key.startswith("no"):  # --noflag (no recipe flag's own name starts with "no")
        values[key[2:]] = "false"
      else:
        values[key] = "true"
  return values


def shape_of(recipe):
  """The recipe's real shape: models, sizes, batch layout, storage."""
  import efficientnet  # pylint: disable=import-outside-toplevel
  student, teacher = recipe_flags(recipe.student), recipe_flags(recipe.teacher)
  small = student.get("small_image") == "true"

  def size(values):
    return int(values.get("image_size") or (32 if small else
                                            efficientnet.get_variant(values["model"]).resolution))

  ratio = float(student.get("unlabeled_batch_ratio", 1))
  batch = int(student["batch_size"])
  finetune = dict(arg[2:].split("=") for arg in recipe.finetune)
  return {"student_model": student["model"], "teacher_model": teacher["model"],
          "small_image": small, "train_size": size(student),
          "predict_size": recipe.predict_size or size(teacher),
          "finetune_size": int(finetune.get("image_size", size(student))),
          "freeze_blocks": int(finetune.get("freeze_blocks", 0)),
          "batch_size": batch, "unlabeled_batch_ratio": ratio,
          "images_per_step": int(batch * (1 + ratio)), "top_k": student.get("top_k"),
          "final_learning_rate": student.get("final_learning_rate"),
          "strategy": student.get("strategy", "auto"),
          "mixed_precision": student.get("mixed_precision", "none")}


# ----------------------------------------------------------------------------------------------
# Synthetic data in the reference's formats.

def synsets():
  return [f"n{9000000 + i:08d}" for i in range(NUM_CLASSES)]


def _scene(rng, height, width, label):
  """A smooth, class-tinted RGB scene (JPEG-friendly, unlike noise)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  phase = rng.uniform(0, 6.28, 3)
  tint = np.array([label % 10, label // 10 % 10, label // 100], np.float64) * 25
  channels = [np.sin(6 * x + 4 * y + phase[c]) * 60 + 100 + tint[c] for c in range(3)]
  return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def write_reference_imagenet(directory, prefix, labels, num_shards, seed, labeled=True):
  """Shards `<prefix>-SSSSS-of-NNNNN` as imagenet_to_gcs.py `_convert_to_example` writes them:
  JPEG image/encoded, 1-based image/class/label, image/class/synset, image/filename,
  image/format, height, width, colorspace, channels. `labels` are 0-based class indices."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from data import records  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  names = synsets()
  os.makedirs(directory, exist_ok=True)

  def b(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

  def i(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

  def example(n, label):
    height, width = (int(v) for v in rng.integers(64, 161, 2))
    buffer = io.BytesIO()
    Image.fromarray(_scene(rng, height, width, label)).save(buffer, format="JPEG", quality=90)
    feature = {"image/encoded": b(buffer.getvalue()), "image/format": b(b"JPEG"),
               "image/height": i(height), "image/width": i(width),
               "image/colorspace": b(b"RGB"), "image/channels": i(3),
               "image/filename": b(f"{prefix}_{names[label]}_{n}.JPEG".encode()),
               "image/class/synset": b(names[label].encode())}
    if labeled:
      feature["image/class/label"] = i(label + 1)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

  rows = [example(n, label) for n, label in enumerate(labels)]
  for shard in range(num_shards):
    records.write_atomically(
        os.path.join(directory, f"{prefix}-{shard:05d}-of-{num_shards:05d}"),
        rows[shard::num_shards])
  return len(rows)


def write_svhn_mat(path, count, seed):
  """SVHN's layout: X uint8 [32, 32, 3, N], y uint8 [N, 1] in 1..10 (10 is the digit 0)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import scipy.io  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  digits = np.arange(count) % 10
  images = np.stack([_scene(rng, 32, 32, d * 100) for d in digits], -1)
  tmp = path + ".tmp.mat"
  scipy.io.savemat(tmp, {"X": images, "y": np.where(digits == 0, 10, digits)[:, None]
                         .astype(np.uint8)})
  os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Subprocesses.

class Runner:
  """Runs commands, logging each to its own file; records wall time, exit status, peak RSS."""

  def __init__(self, workdir, results, save):
    self.logs = os.path.join(workdir, "logs")
    os.makedirs(self.logs, exist_ok=True)
    self.results, self.save, self.count = results, save, 0

  def run(self, name, argv, timeout, overrides=None):
    self.count += 1
    log = os.path.join(self.logs, f"{self.count:03d}-{name.replace('/', '_')}.log")
    print(f"\n[{time.strftime('%H:%M:%S')}] {name}: {shlex.join(argv)}", flush=True)
    for flag, why in (overrides or {}).items():
      print(f"    override {flag}   ({why})", flush=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
      process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True,
                                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
      timer = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
      timer.start()
      _, status, usage = os.wait4(process.pid, 0)
      timer.cancel()
    rc = os.waitstatus_to_exitcode(status)
    process.returncode = rc
    with open(log, encoding="utf-8", errors="replace") as f:
      lines = [line.rstrip() for line in f if line.strip()]
    result = {"command": shlex.join(argv), "overrides": overrides or {}, "rc": rc,
              "wall_s": round(time.perf_counter() - start, 1),
              "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 3), "log": log,
              "timed_out": rc == -signal.SIGKILL}
    if rc:
      result["error"] = next((l for l in reversed(lines) if "error" in l.lower()),
                             lines[-1] if lines else "")
    status = "ok" if rc == 0 else ("TIMED OUT" if result["timed_out"] else f"FAILED rc={rc}")
    print(f"    -> {status} in {result['wall_s']} s, peak RSS {result['peak_rss_gib']} GiB"
          + (f"\n    {result.get('error', '')}" if rc else ""), flush=True)
    self.results[name] = result
    self.save()
    return result


def main_py(*args):
  return [sys.executable, os.path.join(ROOT, "main.py"), *args]


# ----------------------------------------------------------------------------------------------
# Data part.

def make_data(runner, workdir, args):
  ref, data = os.path.join(workdir, "reference"), os.path.join(workdir, "data")
  print(f"\n== data: {ref} (reference formats) -> {data}", flush=True)
  train_labels = [c for c in range(NUM_CLASSES) for _ in range(args.images_per_class)]
  # Validation: a few images whose labels span the classes (first and last included).
  validation_labels = list(range(0, NUM_CLASSES, NUM_CLASSES // args.eval_images))[
      :args.eval_images - 1] + [NUM_CLASSES - 1]
  counts = {
      "train": write_reference_imagenet(os.path.join(ref, "imagenet"), "train", train_labels,
                                        8, args.seed),
      "validation": write_reference_imagenet(os.path.join(ref, "imagenet"), "validation",
                                             validation_labels, 2, args.seed + 1),
      "unlabeled": write_reference_imagenet(
          os.path.join(ref, "unlabeled"), "train", [c * 37 % NUM_CLASSES for c in
                                                    range(args.unlabeled_images)],
          2, args.seed + 2, labeled=False)}
  for name, count in (("train", 10 * args.svhn_per_class), ("test", 10), ("extra", 20)):
    write_svhn_mat(os.path.join(ref, f"{name}_32x32.mat"), count, args.seed + len(name))
  print(f"    wrote {counts} reference ImageNet records and SVHN's train/test/extra .mat",
        flush=True)
  # A few validation images of 1,000 classes: --class_names keeps the class count (in a flag
  # file: 10 KB of synsets on a printed command line would hide the rest).
  classes = os.path.join(ref, "imagenet_classes.flags")
  with open(classes, "w", encoding="utf-8") as f:
    f.write(f"--class_names={','.join(synsets())}\n")
  converts = [
      ("imagenet/train", ["--source=tfrecord", f"--input={ref}/imagenet", "--split=train",
                          f"--output={data}/imagenet/train", "--num_shards=4"]),
      ("imagenet/validation", ["--source=tfrecord", f"--input={ref}/imagenet",
                               "--split=validation", f"--output={data}/imagenet/validation",
                               "--num_shards=1", f"--flagfile={classes}"]),
      ("jft/unlabeled", ["--source=tfrecord", f"--input={ref}/unlabeled", "--split=train",
                         f"--output={data}/jft/unlabeled", "--num_shards=2", "--unlabeled"]),
      ("svhn/train", ["--source=svhn_mat", f"--input={ref}/train_32x32.mat", "--split=train",
                      f"--output={data}/svhn/train", "--validation_per_class=1",
                      "--num_shards=2"]),
      ("svhn/test", ["--source=svhn_mat", f"--input={ref}/test_32x32.mat", "--split=test",
                     f"--output={data}/svhn/test", "--num_shards=1"]),
      ("svhn/extra", ["--source=svhn_mat", f"--input={ref}/extra_32x32.mat", "--split=extra",
                      f"--output={data}/svhn/extra", "--num_shards=2", "--unlabeled"]),
  ]
  for name, flags in converts:
    runner.run(f"data/{name}", main_py("--mode=convert", *flags), 600)
  manifest = json.load(open(os.path.join(data, "imagenet", "train", "manifest.json")))
  source = manifest["splits"]["train"]["source"]
  check = {"num_classes": manifest["num_classes"], "label_offset": source.get("label_offset"),
           "class_0": manifest["class_names"][0]}
  print(f"    converted ImageNet train: {check}", flush=True)
  runner.results["data/check"] = check
  runner.save()


# ----------------------------------------------------------------------------------------------
# Phases part.

def data_flags(recipe, data):
  if recipe.imagenet:
    return {"labeled_data": f"{data}/imagenet/train", "unlabeled_data": f"{data}/jft/unlabeled",
            "eval_data": f"{data}/imagenet/validation"}
  return {"labeled_data": f"{data}/svhn/train/labeled",
          "validation_data": f"{data}/svhn/train/validation",
          "unlabeled_data": f"{data}/svhn/extra", "eval_data": f"{data}/svhn/test"}


_READS = {  # which of the rehearsal's flags each mode reads (main.py's READ_BY, for these)
    "labeled_data": ("train", "finetune"), "unlabeled_data": ("predict", "filter"),
    "eval_data": ("train", "finetune", "eval"), "validation_data": ("train", "finetune", "eval"),
    "strategy": ("train", "finetune", "predict", "eval"),
    "mixed_precision": ("train", "finetune", "predict", "eval"),
    "inference_batch_size": ("train", "finetune", "predict", "eval"),
}


def phase_overrides(mode, shape, args):
  """{flag: why} of every shape-neutral override this mode gets on a CPU."""
  out = {}
  if shape["strategy"] in ("tpu", "gpu") and mode in _READS["strategy"]:
    out["--strategy=cpu"] = f"the recipe's --strategy={shape['strategy']}: no such device here"
  if shape["mixed_precision"] != "none" and mode in _READS["mixed_precision"]:
    out["--mixed_precision=none"] = (f"the recipe's {shape['mixed_precision']} is emulated on "
                                     "this CPU, at about half float32's speed")
  if mode in _READS["inference_batch_size"]:
    out[f"--inference_batch_size={args.inference_batch_size}"] = "inference batch size reduced"
  return out


def estimated_gib(memory, kind, images):
  """Host GiB a step of `images` needs, from the memory part's line (None when unmeasured)."""
  fit = (memory or {}).get(kind)
  if not fit:
    return None
  return fit["fixed_gib"] + images * fit["per_image_gib"]


def available_gib():
  with open("/proc/meminfo") as f:
    info = dict(line.split(":") for line in f)
  return int(info["MemAvailable"].split()[0]) * 1024 / GIB


def run_recipe(runner, recipe, workdir, args, memory):
  shape = shape_of(recipe)
  data = os.path.join(workdir, "data")
  out = os.path.join(workdir, "runs", recipe.name)
  # A rerun starts clean: the phases refuse a finished run's workdir that other settings made
  # (a fine-tune from the student where the last one, the student failing, was from the teacher).
  shutil.rmtree(out, ignore_errors=True)
  print(f"\n== phases: {recipe.name} ({recipe.student}.flags): {json.dumps(shape)}", flush=True)
  runner.results[f"{recipe.name}/shape"] = shape
  paths = data_flags(recipe, data)
  labeled_batch = args.batch_size
  counts = {"--batch_size": f"{labeled_batch} (recipe {shape['batch_size']})",
            "--train_steps": "1 (a step count)"}
  if shape["final_learning_rate"]:
    # --final_learning_rate decays over the run after its warm-up, and refuses a run inside it.
    counts["--warmup_epochs"] = "0 (the warm-up's step count; 1 step is inside the recipe's)"

  def flags_for(mode):
    chosen = [f"--{k}={v}" for k, v in paths.items() if mode in _READS[k]]
    return chosen, phase_overrides(mode, shape, args)

  def step(name, mode, extra, count_overrides, recipe_file, need=None):
    if need is not None and need > available_gib() * 0.9:
      why = (f"needs about {need:.1f} GiB of host memory (memory part's estimate), "
             f"{available_gib():.1f} GiB available")
      print(f"\n[{time.strftime('%H:%M:%S')}] {recipe.name}/{name}: SKIPPED: {why}", flush=True)
      runner.results[f"{recipe.name}/{name}"] = {"skipped": why}
      runner.save()
      return None
    chosen, overrides = flags_for(mode)
    overrides = {**{f"{k}={v.split(' ')[0]}": v for k, v in count_overrides.items()},
                 **overrides}
    argv = main_py(f"--flagfile=recipes/{recipe_file}.flags", f"--mode={mode}", *chosen,
                   *extra, *(k.split(" ")[0] for k in overrides))
    return runner.run(f"{recipe.name}/{name}", argv, args.phase_timeout, overrides)

  mem = memory
  teacher_need = estimated_gib(mem, "train", labeled_batch)
  teacher_args = [f"--workdir={out}/teacher", "--pseudo_labeled_data="]
  teacher = step("teacher", "train", teacher_args, counts, recipe.teacher, teacher_need)
  if teacher is None and shape["teacher_model"] == "efficientnet-l2":
    # The teacher exists only to predict (at its test size, which is kept): trained smaller.
    teacher = step("teacher_small", "train", teacher_args, {
        **counts, "--image_size": f"{L2_MEASURE_SIZE} (the 1-step teacher's training size "
                                  f"only: it predicts at {shape['predict_size']})"},
        recipe.teacher)  # about its fixed part + 1 image at 224: measured to fit
  if not teacher or teacher["rc"]:
    return
  predict_extra = [f"--inference_image_size={recipe.predict_size}"] if recipe.predict_size \
      else []
  step("predict", "predict", [f"--checkpoint={out}/teacher", f"--output={out}/predict",
                              *predict_extra], {}, recipe.student)
  filter_counts = {"--images_per_class": f"{args.images_per_class_kept} (an image count)"} \
      if recipe.imagenet else {}
  kept = step("filter", "filter", [f"--predictions={out}/predict", f"--output={out}/pseudo"],
              filter_counts, recipe.student)
  if kept and kept["rc"] == 0 and recipe.imagenet and _kept_records(f"{out}/pseudo") == 0:
    # A freshly initialised teacher is about 1/1000 sure of every image: the recipe's
    # threshold keeps none (the filter succeeds, the student then refuses an empty set).
    # Shape-neutral: rerun it keeping every prediction.
    step("filter_threshold_0", "filter",
         [f"--predictions={out}/predict", f"--output={out}/pseudo"],
         {**filter_counts, "--confidence_threshold": "0 (a 1-step teacher's confidence is "
                                                     "~1/1000; 0.3 keeps nothing)"},
         recipe.student)
  student_need = estimated_gib(mem, "train", shape["images_per_step"] // shape["batch_size"]
                               * labeled_batch)
  student = step("student", "train", [f"--workdir={out}/student",
                                      f"--pseudo_labeled_data={out}/pseudo"],
                 counts, recipe.student, student_need)
  init = f"{out}/student" if student and student["rc"] == 0 else f"{out}/teacher"
  finetune_need = estimated_gib(mem, "finetune", labeled_batch)
  finetune = step("finetune", "finetune", [f"--init_checkpoint={init}",
                                           f"--workdir={out}/finetune", *recipe.finetune],
                  counts, recipe.student, finetune_need)
  final = f"{out}/finetune" if finetune and finetune["rc"] == 0 else init
  step("eval", "eval", [f"--checkpoint={final}", f"--output={out}/eval"], {}, recipe.student)
  step("export", "export", [f"--checkpoint={final}", f"--output={out}/export"], {},
       recipe.student)
  runner.results[f"{recipe.name}/facts"] = run_facts(out)
  runner.save()


def _kept_records(pseudo_dir):
  """Records the filter wrote (its stats.json), None when it wrote no stats."""
  path = os.path.join(pseudo_dir, "stats.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)["totals"]["with_copies"]


def run_facts(out):
  """What the runs wrote about their shapes: model, size, ratio, steps, replicas, storage."""
  facts = {}
  for role in ("teacher", "student", "finetune"):
    path = os.path.join(out, role, "train_config.json")
    if os.path.exists(path):
      run = json.load(open(path))
      facts[role] = {"model": run["config"]["model"], "image_size": run.get("image_size"),
                     "unlabeled_batch_ratio": run["config"]["unlabeled_batch_ratio"],
                     "freeze_blocks": run["config"].get("freeze_blocks"),
                     "total_steps": run.get("total_steps"), "replicas": run.get("replicas")}
  summaries = glob.glob(os.path.join(out, "predict", "*.json"))
  for path in summaries:
    summary = json.load(open(path))
    if isinstance(summary, dict) and "images" in summary:
      facts["predict"] = {k: summary.get(k) for k in ("images", "num_classes", "top_k",
                                                      "image_size") if k in summary}
  metrics = os.path.join(out, "eval", "metrics.json")
  if os.path.exists(metrics):
    facts["eval"] = {k: json.load(open(metrics)).get(k) for k in ("num_examples", "top1")}
  return facts


# ----------------------------------------------------------------------------------------------
# Memory part: one step of the project's model in a fresh subprocess.

def _rss():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRss:
  """The largest resident set size seen (every 5 ms) while the block runs."""

  def __enter__(self):
    self.peak, self._stop = _rss(), threading.Event()

    def sample():
      while not self._stop.wait(0.005):
        self.peak = max(self.peak, _rss())

    self._thread = threading.Thread(target=sample, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *unused):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _rss())


def measure(kind, model_name, image_size, batches, small_image, freeze_blocks, precision):
  """Peak host bytes of one step at each of `batches` images (after a warm-up step at the first,
  which traces): `kind` "train" is the training step (the project's loss, RMSProp with EMA,
  weight decay; the first `freeze_blocks` blocks frozen), "infer" the model in inference mode."""
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from noisy_student import distribute  # pylint: disable=import-outside-toplevel
  from noisy_student.phases import train  # pylint: disable=import-outside-toplevel
  from noisy_student.training import ema, losses, optimizers  # pylint: disable=import-outside-toplevel
  keras.utils.set_random_seed(0)
  config = train.TrainConfig(model=model_name, image_size=image_size, small_image=small_image,
                             train_steps=1)
  start = time.perf_counter()
  with distribute.precision(precision):
    model = train.build_student(config, NUM_CLASSES if not small_image else 10)
  classes = model.output_shape[-1]
  images = tf.TensorSpec([None, image_size, image_size, 3])
  if kind == "train":
    if freeze_blocks:
      train.freeze_first_blocks(model, freeze_blocks)
    losses.add_weight_decay(model, 1e-5)
    optimizer = optimizers.TF1RMSProp(0.01, moving_average_decay=0.9999)
    optimizer.track_moving_averages(ema.batch_norm_statistics(model))
    model.compile(optimizer=optimizer, loss=losses.NoisyStudentLoss(1))
    optimizer.build(model.trainable_variables)
    run = tf.function(lambda x, y: model.train_step((x, y))["loss"],
                      input_signature=[images, tf.TensorSpec([None, classes])])
  else:
    run = tf.function(lambda x: model(x, training=False), input_signature=[images])
  built = time.perf_counter() - start
  points = []
  for index, batch in enumerate([batches[0], *batches]):
    x = tf.random.normal([batch, image_size, image_size, 3])
    y = tf.one_hot(tf.zeros([batch], tf.int32), classes)
    start = time.perf_counter()
    with _PeakRss() as peak:
      (run(x, y) if kind == "train" else run(x)).numpy()
    if index:
      points.append({"images": batch, "peak_gib": peak.peak / GIB,
                     "seconds": time.perf_counter() - start})
  (n1, p1), (n2, p2) = [(p["images"], p["peak_gib"]) for p in (points[0], points[-1])]
  per_image = (p2 - p1) / (n2 - n1)
  return {"kind": kind, "model": model_name, "image_size": image_size, "precision": precision,
          "freeze_blocks": freeze_blocks, "parameters": model.count_params(),
          "build_seconds": built, "points": points, "per_image_gib": per_image,
          "fixed_gib": p1 - n1 * per_image,
          "process_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB}


def measure_subprocess(runner, name, kind, model, size, batches, small, freeze=0,
                       precision="none", timeout=1200):
  out = os.path.join(runner.logs, f"measure-{name.replace('/', '_')}.json")
  argv = [sys.executable, os.path.abspath(__file__), f"--_measure={kind}", f"--_model={model}",
          f"--_size={size}", f"--_batches={','.join(map(str, batches))}",
          f"--_freeze={freeze}", f"--_precision={precision}", f"--_out={out}"]
  if small:
    argv.append("--_small")
  run = runner.run(name, argv, timeout)
  if run["rc"]:
    return None
  fit = json.load(open(out))
  run.update(fit)
  runner.save()
  print(f"    {kind} {model} @{size}: {fit['per_image_gib'] * 1024:.0f} MiB per image, fixed "
        f"{fit['fixed_gib']:.2f} GiB ({fit['parameters']:,} parameters)", flush=True)
  return fit


# L2's training step does not fit this machine at 475 or 800 (10 GiB of weights, gradients,
# optimizer slots and EMA, plus several GiB per image): it is measured at this size and its
# per-image bytes scaled by pixel count (the scaling checked on B0 at 224 and 448).
L2_MEASURE_SIZE = 224


def measure_recipe(runner, recipe, args):
  shape = shape_of(recipe)
  small = shape["small_image"]
  few = [1, 2] if shape["train_size"] >= 450 or "l2" in shape["student_model"] else [2, 4]
  if small:
    few = [8, 16]
  fits = {}
  train_size = shape["train_size"]
  if shape["student_model"] == "efficientnet-l2":
    fit = measure_subprocess(runner, f"memory/{recipe.name}/train@{L2_MEASURE_SIZE}", "train",
                             shape["student_model"], L2_MEASURE_SIZE, [1, 2], small)
    if fit:
      for role, size in (("train", train_size), ("finetune", shape["finetune_size"])):
        scaled = dict(fit, image_size=size, measured_at=L2_MEASURE_SIZE,
                      per_image_gib=fit["per_image_gib"] * (size / L2_MEASURE_SIZE) ** 2)
        fits[role] = scaled
  else:
    fits["train"] = measure_subprocess(runner, f"memory/{recipe.name}/train", "train",
                                       shape["student_model"], train_size, few, small)
    fits["finetune"] = fits["train"]
  fits["infer"] = measure_subprocess(runner, f"memory/{recipe.name}/infer", "infer",
                                     shape["teacher_model"], shape["predict_size"],
                                     [1, 2] if shape["predict_size"] >= 700 else few, small)
  return {k: v for k, v in fits.items() if v}


def measure_checks(runner):
  """The conversions the table relies on, measured on B0: per-image bytes at 448 against 224
  (pixel-count scaling, used for L2) and under mixed bfloat16 against float32."""
  checks = {}
  base = measure_subprocess(runner, "memory/check/b0@224", "train", "efficientnet-b0", 224,
                            [2, 4], False)
  large = measure_subprocess(runner, "memory/check/b0@448", "train", "efficientnet-b0", 448,
                             [1, 2], False)
  bf16 = measure_subprocess(runner, "memory/check/b0@224-bfloat16", "train", "efficientnet-b0",
                            224, [2, 4], False, precision="bfloat16")
  if base and large:
    checks["pixel_scaling"] = {"measured_ratio": large["per_image_gib"] / base["per_image_gib"],
                               "pixel_ratio": 4.0}
  if base and bf16:
    checks["bfloat16_ratio"] = bf16["per_image_gib"] / base["per_image_gib"]
  return checks


def memory_table(shape, fits, bf16_ratio):
  """Accelerator estimates from the host figures and the per-device fit of the recipe."""
  rows = {}
  for role, images in (("train", shape["images_per_step"]),
                       ("finetune", shape["batch_size"]), ("infer", None)):
    fit = fits.get(role)
    if not fit:
      continue
    per_image = fit["per_image_gib"] * GIB * bf16_ratio
    fixed = fit["parameters"] * (TRAIN_BYTES_PER_PARAMETER if role != "infer" else 4)
    row = {"host_per_image_mib": fit["per_image_gib"] * 1024,
           "host_fixed_gib": fit["fixed_gib"], "image_size": fit["image_size"],
           "accelerator_per_image_mib": per_image / 2 ** 20,
           "accelerator_fixed_gib": fixed / GIB, "measured_at": fit.get("measured_at")}
    if images:
      row["images_per_step"] = images
      row["per_replica"] = {str(r): images / r for r in REPLICAS}
    row["max_per_replica"] = {name: max(0, math.floor((memory - fixed) / per_image))
                              for name, memory in DEVICES.items()}
    if images:
      row["min_replicas"] = {name: (math.ceil(images / most) if most else None)
                             for name, most in row["max_per_replica"].items()}
    rows[role] = row
  return rows


# ----------------------------------------------------------------------------------------------
# Chains part.

def run_chains(runner, workdir, args):
  data = os.path.join(workdir, "data")
  chains = sorted(glob.glob(os.path.join(ROOT, "recipes", "*_chain.flags")))
  if not chains:
    print("\n== chains: no recipes/*_chain.flags yet", flush=True)
    return
  for path in chains:
    name = os.path.basename(path)[:-len(".flags")]
    values = recipe_flags(path)
    imagenet = "svhn" not in name
    recipe = Recipe(name, name, name, imagenet=imagenet)
    paths = data_flags(recipe, data)
    overrides = {}
    if values.get("strategy") in ("tpu", "gpu"):
      overrides["--strategy=cpu"] = f"the recipe's --strategy={values['strategy']}: no device"
    if values.get("balance", "") != "false" and "nobalance" not in values:
      # The 10x fill limit refuses the paper's 130,000 per class on a few synthetic images.
      overrides[f"--images_per_class={args.images_per_class_kept}"] = (
          f"the recipe's {values.get('images_per_class')}: the synthetic pool is tiny")
    plan = os.path.join(workdir, "runs", name, "plan.json")
    os.makedirs(os.path.dirname(plan), exist_ok=True)
    argv = main_py(f"--flagfile=recipes/{name}.flags", "--mode=iterate", "--dry_run",
                   f"--output={plan}", f"--workdir={workdir}/runs/{name}/iterate",
                   *(f"--{k}={v}" for k, v in paths.items()), *overrides)
    result = runner.run(f"chains/{name}/dry_run", argv, 600, overrides)
    if result["rc"] == 0 and os.path.exists(plan):
      result["plan"] = json.load(open(plan))
      runner.save()


# ----------------------------------------------------------------------------------------------

def save_json(path, results):
  from data import records  # pylint: disable=import-outside-toplevel
  records.write_text_atomically(path, json.dumps(results, indent=1, default=str) + "\n")


def git_state():
  def git(*a):
    return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
  return {"commit": git("rev-parse", "HEAD"),
          "dirty_files": len(git("status", "--porcelain").splitlines())}


def report(results):
  """The RESULTS.md tables of a results JSON (markdown lines)."""
  names = list(DEVICES)
  lines = ["| recipe | step: model @ size, images (labeled x (1+r)) | host MiB/image (f32) | host "
           "fixed GiB | accel. MiB/image, fixed GiB (est.) | per replica on 8 / 2048 | most per "
           "replica: " + " / ".join(names) + " |", "|" + "---|" * 7]
  for recipe, table in results.get("table", {}).items():
    shape = table["shape"]
    for role in ("train", "finetune", "infer"):
      row = table.get(role)
      if not row:
        continue
      model = shape["teacher_model"] if role == "infer" else shape["student_model"]
      images = row.get("images_per_step")
      layout = (f"{images:,} ({shape['batch_size']:,} x {1 + shape['unlabeled_batch_ratio']:g})"
                if role == "train" else f"{images:,}" if images else "batch of predict/eval")
      measured = f" (measured @{row['measured_at']}, x pixels)" if row.get("measured_at") else ""
      per = (" / ".join(f"{v:g}" for v in row["per_replica"].values())
             if images else "256 / 256 (default --inference_batch_size)")
      lines.append(
          f"| {recipe} | {role}: {model.replace('efficientnet-', '')} @{row['image_size']}, "
          f"{layout} | {row['host_per_image_mib']:.0f}{measured} | {row['host_fixed_gib']:.2f} | "
          f"{row['accelerator_per_image_mib']:.0f}, {row['accelerator_fixed_gib']:.2f} | {per} | "
          + " / ".join(str(row["max_per_replica"][n]) for n in names) + " |")
  return lines


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="/tmp/rehearse")
  parser.add_argument("--json", default=None, help="default: WORKDIR/rehearse.json")
  parser.add_argument("--recipes", default=",".join(RECIPES))
  parser.add_argument("--parts", default=",".join(PARTS))
  parser.add_argument("--batch_size", type=int, default=1, help="labeled images per step")
  parser.add_argument("--inference_batch_size", type=int, default=2)
  parser.add_argument("--images_per_class", type=int, default=1, help="ImageNet train")
  parser.add_argument("--images_per_class_kept", type=int, default=2, help="filter's N")
  parser.add_argument("--eval_images", type=int, default=4)
  parser.add_argument("--unlabeled_images", type=int, default=6)
  parser.add_argument("--svhn_per_class", type=int, default=4)
  parser.add_argument("--phase_timeout", type=int, default=1800)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--report", action="store_true", help="print the tables of --json, run "
                      "nothing")
  for name in ("measure", "model", "size", "batches", "freeze", "precision", "out"):
    parser.add_argument(f"--_{name}", help=argparse.SUPPRESS)
  parser.add_argument("--_small", action="store_true", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args._measure:  # pylint: disable=protected-access
    result = measure(args._measure, args._model, int(args._size),
                     [int(b) for b in args._batches.split(",")], args._small, int(args._freeze),
                     args._precision)
    with open(args._out + ".tmp", "w", encoding="utf-8") as f:
      json.dump(result, f)
    os.replace(args._out + ".tmp", args._out)
    return 0
  if args.report:
    with open(args.json or os.path.join(args.workdir, "rehearse.json"), encoding="utf-8") as f:
      print("\n".join(report(json.load(f))))
    return 0
  parts = args.parts.split(",")
  names = args.recipes.split(",")
  unknown = [n for n in names if n not in RECIPES] + [p for p in parts if p not in PARTS]
  if unknown:
    raise SystemExit(f"rehearse.py: unknown recipes or parts {unknown}; recipes: "
                     f"{', '.join(RECIPES)}; parts: {', '.join(PARTS)}")
  os.makedirs(args.workdir, exist_ok=True)
  path = args.json or os.path.join(args.workdir, "rehearse.json")
  # A later invocation on the same --json adds to it (its runs replace those of the same name):
  # the memory part once, then the phases, gated by its figures.
  results = {"runs": {}, "memory": {}, "table": {}, "invocations": []}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      results.update(json.load(f))
  results["machine"] = {"cpus": os.cpu_count(), "memory_gib": os.sysconf("SC_PHYS_PAGES")
                        * os.sysconf("SC_PAGE_SIZE") / GIB, **git_state()}
  results["invocations"].append({"arguments": vars(args), "started": time.ctime()})
  started = time.perf_counter()

  def save():
    results["invocations"][-1]["wall_s"] = round(time.perf_counter() - started, 1)
    save_json(path, results)

  runner = Runner(args.workdir, results["runs"], save)
  print(f"rehearse: recipes {names}, parts {parts}; results -> {path}", flush=True)
  print(f"counts reduced: labeled batch {args.batch_size} (x(1 + the recipe's ratio) images a "
        f"step), 1 step, inference batch {args.inference_batch_size}, ImageNet "
        f"{args.images_per_class} train image(s) per class, {args.eval_images} validation and "
        f"{args.unlabeled_images} unlabeled images, filter's N {args.images_per_class_kept}",
        flush=True)
  if "data" in parts:
    make_data(runner, args.workdir, args)
  if "chains" in parts:
    run_chains(runner, args.workdir, args)
  if "memory" in parts:
    results["checks"] = measure_checks(runner)
  ratio = results.get("checks", {}).get("bfloat16_ratio", 0.5)
  for name in names:  # each recipe measured, then run: the runs are gated by its measurement
    if "memory" in parts:
      results["memory"][name] = measure_recipe(runner, RECIPES[name], args)
      results["table"][name] = {"shape": shape_of(RECIPES[name]), **memory_table(
          shape_of(RECIPES[name]), results["memory"][name], ratio)}
      save()
    if "phases" in parts:
      run_recipe(runner, RECIPES[name], args.workdir, args, results["memory"].get(name))
  save()
  failed = {k: v.get("error", "") for k, v in results["runs"].items()
            if isinstance(v, dict) and v.get("rc")}
  print(f"\nrehearse: done in {results['invocations'][-1]['wall_s']:.0f} s; {len(failed)} "
        "failed (this and earlier invocations on the same --json)"
        + "".join(f"\n  {k}: {v}" for k, v in failed.items()), flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
