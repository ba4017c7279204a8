"""Training images/s of EfficientNet-B0 on one GPU: our Keras model (JAX backend) vs timm.

Two rows, each measured in its own subprocess (Keras reads KERAS_BACKEND once, at import, and
JAX and PyTorch should not share a GPU's memory), collected by this parent process:

* keras_jax: `efficientnet.build_model("efficientnet-b0", 1000)` on the Keras JAX backend,
  `mixed_<dtype>` policy, `model.compile(jit_compile=True)`, trained with `model.fit` on one
  synthetic batch that lives on the device (a generator yields the same device arrays; Keras
  passes them to the jitted step without a host copy).
* timm: `timm.create_model("tf_efficientnet_b0")` (TF "same" padding, the same architecture),
  `channels_last`, `torch.autocast` with the same dtype (a GradScaler for float16),
  `cudnn.benchmark`, the same synthetic batch shape on the device, timed between
  `torch.cuda.synchronize()` calls.

Both: 224x224 float32 input, 1000 classes, integer labels and softmax cross-entropy from logits,
dropout 0.2 and stochastic depth 0.2 (B0's recipe), the same optimizer kind (RMSprop rho 0.9,
momentum 0.9, epsilon 1e-3, no weight decay, no EMA; or --optimizer sgd: SGD momentum 0.9). A
warm-up (compile, cudnn autotuning) is excluded; then --repeats windows of --steps steps are timed
and the median is reported. The table's last line is keras_jax / timm images/s (goal: >= 1.0).

On the device machine (one NVIDIA GPU with JAX, PyTorch and timm, no TensorFlow and no Keras):
first, here, `bash benchmarks/gpu_wheels.sh` (keras 3.15.1, namex and optree wheels into .whl/),
then the device tool's `run` with carry [".whl"] and the command

  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; nvidia-smi -L; \\
      PYTHONUNBUFFERED=1 python3 benchmarks/gpu_train_speed.py --json $OUT/gpu_train_speed.json

(default batch 256, bfloat16; not yet run on a GPU: expect a few minutes, mostly XLA compiling
our step three times, see keras_jax_worker). A CPU smoke test of both paths end to end, in an
environment with jax, keras, torch and timm (speeds meaningless there):

  python benchmarks/gpu_train_speed.py --device cpu --image_size 64 --batch_size 4 \\
      --warmup_steps 3 --steps 2 --repeats 2 --json /tmp/gpu_train_speed.json
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMEWORKS = ("keras_jax", "timm")
NUM_CLASSES = 1000
LEARNING_RATE = 1e-3  # irrelevant to speed; small so that random data keeps the loss finite
DROPOUT = 0.2  # B0's top dropout; our model's default, passed to timm
DROP_PATH = 0.2  # stochastic depth: our survival 0.8, timm's drop_path_rate


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
  parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                      help="cpu: a smoke test where no GPU is (use tiny sizes)")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                      help="compute dtype on both sides (mixed precision unless float32)")
  parser.add_argument("--optimizer", choices=("rmsprop", "sgd"), default="rmsprop")
  parser.add_argument("--warmup_steps", type=int, default=20, help="untimed, after compiling")
  parser.add_argument("--steps", type=int, default=50, help="steps per timed window")
  parser.add_argument("--repeats", type=int, default=3, help="timed windows; the median counts")
  parser.add_argument("--timm_model", default="tf_efficientnet_b0")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--worker_timeout", type=float, default=420.0,
                      help="seconds before a framework's subprocess is stopped")
  parser.add_argument("--json", default=os.path.join(tempfile.gettempdir(), "gpu_train_speed.json"),
                      help="where the results go")
  # Internal: the parent starts one subprocess per framework with these.
  parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
  parser.add_argument("--worker_output", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  for name in ("batch_size", "image_size", "steps", "repeats"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1")
  if args.warmup_steps < 3:
    parser.error("--warmup_steps must be >= 3 (Keras' JAX step compiles on steps 1 and 2 of "
                 "the first fit and on step 1 of the next)")
  return args


def _window_rates(batch_size, steps, seconds):
  """Images/s of each timed window."""
  return [batch_size * steps / s for s in seconds]


def _summary(args, seconds, warmup_seconds, **extra):
  rates = _window_rates(args.batch_size, args.steps, seconds)
  return dict(images_per_second=statistics.median(rates), window_images_per_second=rates,
              step_ms=1000 * statistics.median(seconds) / args.steps,
              warmup_seconds=warmup_seconds, batch_size=args.batch_size,
              image_size=args.image_size, dtype=args.dtype, optimizer=args.optimizer, **extra)


def keras_jax_worker(args):
  """Our model under `model.fit` on the Keras JAX backend."""
  # Keras picks its backend once, when first imported: this must come before `import keras`.
  os.environ["KERAS_BACKEND"] = "jax"
  if args.device == "cpu":
    os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=import-outside-toplevel
  import keras  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  import efficientnet  # pylint: disable=import-outside-toplevel

  if keras.backend.backend() != "jax":
    raise RuntimeError(f"Keras runs on {keras.backend.backend()}, not jax: was it imported early?")
  keras.utils.set_random_seed(args.seed)
  keras.mixed_precision.set_dtype_policy(
      "float32" if args.dtype == "float32" else f"mixed_{args.dtype}")
  model = efficientnet.build_model("efficientnet-b0", NUM_CLASSES, dropout_rate=DROPOUT,
                                   survival_prob=1 - DROP_PATH)
  if args.optimizer == "rmsprop":
    optimizer = keras.optimizers.RMSprop(LEARNING_RATE, rho=0.9, momentum=0.9, epsilon=1e-3)
  else:
    optimizer = keras.optimizers.SGD(LEARNING_RATE, momentum=0.9)
  # Under mixed_float16 compile() wraps the optimizer in a LossScaleOptimizer, as timm's
  # GradScaler does; bfloat16 needs no scaling.
  model.compile(optimizer=optimizer, jit_compile=True,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

  device = jax.devices()[0]
  rng = np.random.default_rng(args.seed)
  shape = (args.batch_size, args.image_size, args.image_size, 3)
  images = jax.device_put(rng.standard_normal(shape, dtype=np.float32), device)
  labels = jax.device_put(rng.integers(0, NUM_CLASSES, args.batch_size, dtype=np.int32), device)

  def batches():
    while True:
      yield images, labels

  def train(steps):
    start = time.perf_counter()
    model.fit(batches(), steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    # fit returns once the last step is dispatched; the weights exist when it has run.
    jax.block_until_ready([v.value for v in model.trainable_variables])
    return time.perf_counter() - start

  print(f"keras_jax: {device.device_kind}, compiling and {args.warmup_steps} warm-up steps",
        flush=True)
  # JAX compiles the step once per argument layout it sees, and Keras shows it three: the
  # first step's fresh weights, their device-committed successors from the second step on, and
  # at the start of every later fit the metric variables that fit has just reset. So the
  # warm-up is two fits, the first of at least two steps (parse_args checks).
  warmup = train(args.warmup_steps - 1) + train(1)
  seconds = []
  for i in range(args.repeats):
    seconds.append(train(args.steps))
    print(f"keras_jax: window {i + 1}/{args.repeats}: "
          f"{args.batch_size * args.steps / seconds[-1]:,.0f} img/s", flush=True)
  return _summary(args, seconds, warmup, device=device.device_kind,
                  model="efficientnet-b0 (ours)",
                  trainable_parameters=sum(int(np.prod(v.shape))
                                           for v in model.trainable_variables),
                  versions={"keras": keras.__version__, "jax": jax.__version__},
                  tensorflow_imported="tensorflow" in sys.modules)


def timm_worker(args):
  """timm's TF-ported B0 in eager PyTorch with AMP, the usual PyTorch training loop."""
  import timm  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  device = torch.device("cuda" if args.device == "gpu" else "cpu")
  dtype = getattr(torch, args.dtype)
  torch.manual_seed(args.seed)
  torch.backends.cudnn.benchmark = True  # pick the fastest kernels per shape (in the warm-up)
  model = timm.create_model(args.timm_model, num_classes=NUM_CLASSES, drop_rate=DROPOUT,
                            drop_path_rate=DROP_PATH)
  model = model.to(device, memory_format=torch.channels_last).train()
  if args.optimizer == "rmsprop":
    # torch's own RMSprop (eps outside the square root; foreach kernels on CUDA): timm's
    # RMSpropTF loops over parameters in Python, which would handicap this side.
    optimizer = torch.optim.RMSprop(model.parameters(), lr=LEARNING_RATE, alpha=0.9, eps=1e-3,
                                    momentum=0.9)
  else:
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9)
  scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
  generator = torch.Generator().manual_seed(args.seed)
  images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
  images = images.to(device).contiguous(memory_format=torch.channels_last)
  labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=generator).to(device)
  loss_fn = torch.nn.CrossEntropyLoss()

  def synchronize():
    if device.type == "cuda":
      torch.cuda.synchronize()

  def train(steps):
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
      optimizer.zero_grad(set_to_none=True)
      with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = loss_fn(model(images), labels)
      scaler.scale(loss).backward()
      scaler.step(optimizer)
      scaler.update()
    synchronize()
    return time.perf_counter() - start

  if device.type == "cuda":
    name = torch.cuda.get_device_name(device)
  else:
    name = platform.processor() or platform.machine()
  print(f"timm: {name}, {args.warmup_steps} warm-up steps (cudnn autotuning)", flush=True)
  warmup = train(args.warmup_steps)
  seconds = []
  for i in range(args.repeats):
    seconds.append(train(args.steps))
    print(f"timm: window {i + 1}/{args.repeats}: "
          f"{args.batch_size * args.steps / seconds[-1]:,.0f} img/s", flush=True)
  return _summary(args, seconds, warmup, device=name, model=args.timm_model,
                  trainable_parameters=sum(p.numel() for p in model.parameters()
                                           if p.requires_grad),
                  versions={"torch": torch.__version__, "timm": timm.__version__})


WORKERS = {"keras_jax": keras_jax_worker, "timm": timm_worker}


def run_worker(name, args, argv):
  """Runs one framework in a subprocess; its result dict, or {"error": ...}."""
  env = dict(os.environ)
  if name == "keras_jax":
    env["KERAS_BACKEND"] = "jax"
  with tempfile.TemporaryDirectory() as directory:
    output = os.path.join(directory, "result.json")
    command = [sys.executable, os.path.abspath(__file__), *argv, "--worker", name,
               "--worker_output", output]
    print(f"--- {name}", flush=True)
    try:
      process = subprocess.run(command, env=env, timeout=args.worker_timeout, check=False)
    except subprocess.TimeoutExpired:
      return {"error": f"timed out after {args.worker_timeout:.0f} s"}
    if process.returncode != 0 or not os.path.exists(output):
      return {"error": f"exit status {process.returncode} (its output is above)"}
    with open(output, encoding="utf-8") as f:
      return json.load(f)


def ratio(results):
  """keras_jax / timm images/s, or None when either is missing."""
  ours, theirs = results.get("keras_jax", {}), results.get("timm", {})
  if "images_per_second" not in ours or "images_per_second" not in theirs:
    return None
  return ours["images_per_second"] / theirs["images_per_second"]


def table(results):
  """Markdown table of the results, then the ratio line."""
  lines = ["| framework | model | device | img/s (median) | windows | step ms | warm-up s | "
           "trainable params |", "|---|---|---|---|---|---|---|---|"]
  for name, result in results.items():
    if "error" in result:
      lines.append(f"| {name} | failed: {result['error']} | | | | | | |")
      continue
    windows = ", ".join(f"{r:,.0f}" for r in result["window_images_per_second"])
    lines.append(f"| {name} | {result['model']} | {result['device']} | "
                 f"{result['images_per_second']:,.0f} | {windows} | {result['step_ms']:.1f} | "
                 f"{result['warmup_seconds']:.1f} | {result['trainable_parameters']:,} |")
  value = ratio(results)
  lines.append("")
  lines.append("keras_jax / timm: " + ("n/a" if value is None else
                                       f"{value:.2f} (goal >= 1.0: "
                                       f"{'met' if value >= 1.0 else 'not met'})"))
  return "\n".join(lines)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.worker:
    result = WORKERS[args.worker](args)
    with open(args.worker_output, "w", encoding="utf-8") as f:
      json.dump(result, f)
    return 0
  results = {name: run_worker(name, args, argv) for name in args.frameworks}
  report = table(results)
  print(f"\nEfficientNet-B0 training, batch {args.batch_size}, {args.image_size}x"
        f"{args.image_size}, {args.dtype} compute, {args.optimizer}, median of {args.repeats} x "
        f"{args.steps} steps after {args.warmup_steps} warm-up\n")
  print(report)
  record = {"date": datetime.date.today().isoformat(), "host": platform.node(),
            "settings": {k: v for k, v in vars(args).items()
                         if k not in ("worker", "worker_output")},
            "results": results, "keras_jax_over_timm": ratio(results)}
  with open(args.json, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  print(f"\nwrote {args.json}")
  return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
  sys.exit(main())
