"""Ours vs keras.applications.EfficientNetB0 vs timm on the same CPU, in one run.

Cases (float32, 10 classes, random input, images/s):
  train32    training, B0, 32x32, batch 128
  train224   training, B0, 224x224, batch 16
  student    training, the Fashion-MNIST benchmark's student (B0 width 0.5, depth 0.5), 32x32,
             batch 96 (64 labeled + 32 pseudo-labeled rows); keras.applications has no such model
  infer32    inference, B0, 32x32, batch 256
  infer224   inference, B0, 224x224, batch 32

Training is dropout 0.2 and stochastic depth 0.2 on every side, RMSprop (rho 0.9, momentum 0.9,
epsilon 1e-3), softmax cross-entropy from logits, one fixed batch:
  ours       `efficientnet.build_model`, `model.fit` on a repeated in-memory batch
             (`tf.data.Dataset.from_tensors(...).repeat()`), Keras RMSprop;
  project    (only with --frameworks ... project) ours compiled as the train phase compiles it:
             TF1RMSProp with the weight EMA (0.999, batch-norm statistics included),
             NoisyStudentLoss on one-hot targets, L2 weight decay 1e-5, its three metrics;
  keras      keras.applications.EfficientNetB0(weights=None), the same fit;
  ours_keras_bn  (only on request) ours with keras.layers.BatchNormalization in place of
             efficientnet.blocks.BatchNormalization (the fused kernel): the change measured;
  ours_xla   (only on request) ours compiled with jit_compile=True (XLA on the CPU; Keras'
             "auto" leaves XLA off on CPU-only machines, as the train phase does);
  timm       `tf_efficientnet_b0`'s builder (TF "same" padding), channels-last, torch's RMSprop,
             a plain zero_grad/backward/step loop (benchmarks/timm_speed_worker.py).
Inference: ours and keras `predict_on_batch`, timm eval mode under `torch.inference_mode()`.

Every side is built and warmed up once per case, then timed windows of tens of steps alternate
between the sides (--repeats rounds; the median counts), so load from other jobs on a shared
machine falls on all of them alike: compare the ratio columns. A training window of ours and
keras is the steps inside one `fit` call (a batch-end callback's clock), as timm's is its bare
loop: fit's own start and end are not a step's cost (benchmarks/RESULTS.md, issue 30).

timm runs in its own long-lived subprocess (this process never imports torch), with --timm_path
(default $TIMM_PATH) put in front of its sys.path; timm imports torchvision at import time, so
`benchmarks/timm_standin/` (a torchvision stand-in) comes with it. Without torch or timm there the
timm column says why and the rest runs. To get them (benchmarks only, not a project requirement):

  pip install --no-deps --target /work/timm-site torch==2.13.0 timm filelock fsspec safetensors
  TIMM_PATH=/work/timm-site python benchmarks/model_speed.py [--repeats 3] [--cases train32 ...]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import efficientnet  # noqa: E402

NUM_CLASSES = 10
DROPOUT = 0.2
DROP_PATH = 0.2
LEARNING_RATE = 1e-3  # irrelevant to speed; small so that random data keeps the loss finite
FRAMEWORKS = ("ours", "project", "keras", "timm", "ours_keras_bn", "ours_xla")

# name: (label, mode, image size, batch, width, depth, steps a window, labeled rows)
CASES = {
    "train32": ("training, B0, 32x32, batch 128", "train", 32, 128, 1.0, 1.0, 40, 128),
    "train224": ("training, B0, 224x224, batch 16", "train", 224, 16, 1.0, 1.0, 10, 16),
    "student": ("training, student (B0 w0.5 d0.5), 32x32, batch 64+32", "train", 32, 96, 0.5,
                0.5, 100, 64),
    "infer32": ("inference, B0, 32x32, batch 256", "infer", 32, 256, 1.0, 1.0, 20, 256),
    "infer224": ("inference, B0, 224x224, batch 32", "infer", 224, 32, 1.0, 1.0, 10, 32),
}


def case_dict(name, steps_override=None):
  label, mode, size, batch, width, depth, steps, labeled = CASES[name]
  return dict(name=name, label=label, mode=mode, image_size=size, batch=batch, width=width,
              depth=depth, steps=steps_override or steps, labeled=labeled,
              num_classes=NUM_CLASSES, dropout=DROPOUT, drop_path=DROP_PATH, warmup=5)


def build_keras_model(which, case):
  if which == "keras":
    return keras.applications.EfficientNetB0(
        weights=None, input_shape=(case["image_size"], case["image_size"], 3),
        classes=NUM_CLASSES, classifier_activation=None)  # its dropout and drop path: 0.2
  build = lambda: efficientnet.build_model(  # noqa: E731
      "efficientnet-b0", NUM_CLASSES, dropout_rate=DROPOUT, survival_prob=1 - DROP_PATH,
      width_coefficient=case["width"], depth_coefficient=case["depth"])
  if which != "ours_keras_bn":
    return build()
  fused = efficientnet.blocks.BatchNormalization
  efficientnet.blocks.BatchNormalization = keras.layers.BatchNormalization
  try:
    return build()
  finally:
    efficientnet.blocks.BatchNormalization = fused


def compile_project_step(model, case):
  """The train phase's compile (noisy_student/phases/train.py), without its schedule."""
  from noisy_student.training import ema  # pylint: disable=import-outside-toplevel
  from noisy_student.training import losses  # pylint: disable=import-outside-toplevel
  from noisy_student.training import metrics  # pylint: disable=import-outside-toplevel
  from noisy_student.training import optimizers  # pylint: disable=import-outside-toplevel
  losses.add_weight_decay(model, 1e-5)
  optimizer = optimizers.TF1RMSProp(LEARNING_RATE, moving_average_decay=0.999)
  optimizer.track_moving_averages(ema.batch_norm_statistics(model))
  loss_args = dict(labeled_batch_size=case["labeled"], label_smoothing=0.1, pseudo_labels="soft")
  model.compile(optimizer=optimizer, loss=losses.NoisyStudentLoss(**loss_args),
                metrics=[metrics.LabeledAccuracy(case["labeled"]),
                         losses.LabeledLoss(**loss_args), losses.UnlabeledLoss(**loss_args)])
  optimizer.build(model.trainable_variables)


class KerasRunner:
  """Ours, the project step or keras.applications, in this process."""

  def __init__(self, which, case, steps_per_execution=1):
    keras.utils.set_random_seed(0)
    self.case = case
    # The project step compiles as train.py does (one step an execution).
    self.steps_per_execution = 1 if which == "project" else steps_per_execution
    self.model = build_keras_model(which, case)
    rng = np.random.default_rng(0)
    size, batch = case["image_size"], case["batch"]
    self.images = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, batch)
    self.parameters = sum(int(np.prod(v.shape)) for v in self.model.trainable_variables)
    if case["mode"] != "train":
      if which == "ours_xla":
        self.model.compile(jit_compile=True)
      self.run(1)  # trace
      return
    if which == "project":
      labels = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
      compile_project_step(self.model, case)
    else:
      self.model.compile(
          optimizer=keras.optimizers.RMSprop(LEARNING_RATE, rho=0.9, momentum=0.9, epsilon=1e-3),
          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
          steps_per_execution=steps_per_execution, jit_compile=which == "ours_xla")
    self.dataset = tf.data.Dataset.from_tensors((self.images, labels)).repeat()
    self.run(case["warmup"])  # trace, warm up

  def run(self, steps):
    """Wall seconds, and this process's CPU seconds (all its threads), of `steps` steps.

    Training: the steps between the end of a first execution (steps_per_execution steps) and the
    end of the last one inside one `fit` call, as timm's window times its loop and as a run of hours sees
    them: fit's own start and end (iterator, callbacks, measured up to seconds a call) are not a
    training step's cost.
    """
    if self.case["mode"] == "train":
      marks = []
      stamp = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: marks.append(
          (time.perf_counter(), time.process_time())))
      # Keras calls the callback once per execution of steps_per_execution steps.
      self.model.fit(self.dataset, steps_per_epoch=steps + self.steps_per_execution, epochs=1,
                     verbose=0, shuffle=False, callbacks=[stamp])
      (start, cpu), (end, cpu_end) = marks[0], marks[-1]
      return end - start, cpu_end - cpu
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
      self.model.predict_on_batch(self.images)
    return time.perf_counter() - start, time.process_time() - cpu

  def window(self):
    return self.run(self.case["steps"])

  def close(self):
    pass


class TimmRunner:
  """timm in its own process (timm_speed_worker.py); `available` False with `why` if it failed."""

  process = None

  def __init__(self, case, timm_path):
    self.case = case
    if TimmRunner.process is None or TimmRunner.process.poll() is not None:
      env = dict(os.environ)
      paths = [p for p in timm_path.split(os.pathsep) if p] + [os.path.join(HERE, "timm_standin")]
      env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
      TimmRunner.process = subprocess.Popen(
          [sys.executable, os.path.join(HERE, "timm_speed_worker.py")], env=env, text=True,
          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reply = self.ask({"cmd": "setup", "case": case})
    self.parameters = reply["parameters"]
    self.versions = reply["versions"]

  @staticmethod
  def ask(request):
    process = TimmRunner.process
    try:
      process.stdin.write(json.dumps(request) + "\n")
      process.stdin.flush()
    except BrokenPipeError:
      pass
    line = process.stdout.readline()
    if not line:
      error = process.stderr.read().strip().splitlines()
      TimmRunner.process = None
      raise RuntimeError(error[-1] if error else f"exit status {process.wait()}")
    reply = json.loads(line)
    if "error" in reply:
      raise RuntimeError(reply["error"])
    return reply

  def window(self):
    reply = self.ask({"cmd": "window"})
    return reply["seconds"], reply["cpu_seconds"]

  def close(self):
    pass

  @classmethod
  def quit(cls):
    if cls.process is not None and cls.process.poll() is None:
      cls.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
      cls.process.stdin.flush()
      cls.process.wait(timeout=60)


def make_runner(which, case, args):
  if which == "timm":
    return TimmRunner(case, args.timm_path)
  if which == "keras" and case["width"] != 1.0:
    raise RuntimeError("n/a (keras.applications has no such width/depth)")
  if which == "project" and case["mode"] != "train":
    raise RuntimeError("n/a (training only)")
  return KerasRunner(which, case, args.steps_per_execution)


def measure_case(case, args):
  """{framework: images/s median or an error string}, {framework: every window's img/s},
  {framework: trainable parameters}, {framework: images per CPU-second, median}."""
  runners, results, windows, per_cpu = {}, {}, {}, {}
  for which in args.frameworks:
    try:
      runners[which] = make_runner(which, case, args)
    except Exception as e:  # pylint: disable=broad-except  (a missing side is reported, not fatal)
      results[which] = str(e) or type(e).__name__
  for _ in range(args.repeats):
    for which, runner in runners.items():
      seconds, cpu_seconds = runner.window()
      images = case["batch"] * case["steps"]
      windows.setdefault(which, []).append(images / seconds)
      per_cpu.setdefault(which, []).append(images / cpu_seconds)
  for which, rates in windows.items():
    results[which] = statistics.median(rates)
    per_cpu[which] = statistics.median(per_cpu[which])
  parameters = {which: runner.parameters for which, runner in runners.items()}
  runners.clear()
  keras.backend.clear_session()
  return results, windows, parameters, per_cpu


def cell(value):
  return f"{value:,.0f}" if isinstance(value, float) else value


def ratio(results, a, b):
  if isinstance(results.get(a), float) and isinstance(results.get(b), float):
    return f"{results[a] / results[b]:.2f}"
  return "n/a"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; median")
  parser.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES))
  parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS,
                      default=["ours", "keras", "timm"])
  parser.add_argument("--steps", type=int, default=None, help="steps a window (default: per case)")
  parser.add_argument("--steps_per_execution", type=int, default=1,
                      help="model.compile's, for ours and keras")
  parser.add_argument("--timm_path", default=os.environ.get("TIMM_PATH", ""),
                      help="folders holding torch and timm, put on the timm subprocess's path")
  parser.add_argument("--inter_op_threads", type=int, default=0,
                      help="TensorFlow's inter-op pool for ours and keras (0: its default)")
  parser.add_argument("--intra_op_threads", type=int, default=0,
                      help="TensorFlow's intra-op pool (0: its default)")
  parser.add_argument("--json", help="also write every window's figures here")
  args = parser.parse_args(argv)
  if args.repeats < 1 or (args.steps is not None and args.steps < 1):
    parser.error("--repeats and --steps must be >= 1")
  uneven = [c for c in args.cases if (args.steps or CASES[c][6]) % args.steps_per_execution]
  if args.steps_per_execution < 1 or uneven:
    parser.error(f"--steps_per_execution={args.steps_per_execution} must be >= 1 and divide "
                 f"the steps of a window (cases {', '.join(uneven)})")
  return args


def main(argv=None):
  args = parse_args(argv)
  # Before TensorFlow's runtime starts (the first op).
  tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
  tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
  print(f"keras {keras.__version__}, tensorflow {tf.__version__}, backend "
        f"{keras.backend.backend()}, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, TF threads intra "
        f"{tf.config.threading.get_intra_op_parallelism_threads()} inter "
        f"{tf.config.threading.get_inter_op_parallelism_threads()} (0 = default), load average "
        f"{os.getloadavg()[0]:.1f}", flush=True)
  others = [f for f in args.frameworks if f != "ours"]
  print("| case | steps | " + " | ".join(f"{f} img/s" for f in args.frameworks) + " | "
        + " | ".join(f"ours / {f}" for f in others) + " | "
        + " | ".join(f"ours / {f} per CPU-s" for f in others) + " |")
  print("|---" * (2 + len(args.frameworks) + 2 * len(others)) + "|", flush=True)
  record = {}
  try:
    for name in args.cases:
      case = case_dict(name, args.steps)
      results, windows, parameters, per_cpu = measure_case(case, args)
      record[name] = dict(case=case, results=results, windows=windows, parameters=parameters,
                          images_per_cpu_second=per_cpu, load_average=os.getloadavg()[0])
      print(f"| {case['label']} | {case['steps']} | "
            + " | ".join(cell(results[f]) for f in args.frameworks) + " | "
            + " | ".join(ratio(results, "ours", f) for f in others) + " | "
            + " | ".join(ratio(per_cpu, "ours", f) for f in others) + " |", flush=True)
  finally:
    TimmRunner.quit()
  for name, entry in record.items():
    print(f"{name}: windows img/s " + "; ".join(
        f"{f} " + ", ".join(f"{r:,.0f}" for r in rates) for f, rates in entry["windows"].items())
        + "; img per CPU-second (median) " + ", ".join(
            f"{f} {r:,.0f}" for f, r in entry["images_per_cpu_second"].items())
        + f"; load average after {entry['load_average']:.1f}"
        + "; trainable parameters " + ", ".join(f"{f} {n:,}"
                                                for f, n in entry["parameters"].items()))
  print(f"load average at the end {os.getloadavg()[0]:.1f}")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(record, f, indent=1)


if __name__ == "__main__":
  main()
