"""Training input images/s on ONE CPU core, ImageNet-style: how many host cores a GPU needs.

    python benchmarks/input_per_core_speed.py [--image_sizes 224] [--seconds 20] [--rounds 2]

The training path exactly as the student's labeled stream runs it: `pipeline.labeled_dataset`
(TFRecord read, shuffle, `preprocess.train_transform`: JPEG decode of the inception-crop window
only, legacy bicubic resize, flip, RandAugment(2, 27) on uint8, normalise), batched. Also without
RandAugment, to show its share.

One core: before TensorFlow starts, the process is pinned to one CPU (`os.sched_setaffinity`, so
every thread TensorFlow makes shares it), TensorFlow's intra- and inter-op pools get one thread
each, and the tf.data stream has a private thread pool of one thread. Measured per round: wall
images/s on that core and images per CPU-second of the whole process (`time.process_time`); the
second is what to divide a GPU's rate by, because on a shared machine other tenants take part of
the core's wall time (the round's log line then shows CPU/wall < 1 and a lower wall rate). The
table gives each column's best round.

Input: --images JPEGs of ImageNet-like sizes (sides 300-500 x 250-450, mean about 400x350) and
content: 1/f ("pink") colour noise, whose spectrum falls off as photographs' do, plus a few
soft-edged textured shapes and a little grain; quality 90. Seeded. White noise would decode
slower and compress worse than photographs, flat colour faster; the mean JPEG size is printed so
the input can be judged against ImageNet's (about 110 KB a training image, 0.6 bytes a pixel).
"""

import argparse
import os
import sys
import tempfile
import time

# numpy, PIL and TensorFlow are imported inside functions, after the pinning: a thread started
# before it (numpy's BLAS pool, say) would keep running on every CPU.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NUM_CLASSES = 1000
SHARDS = 8
WARMUP_BATCHES = 3


def _pin_to_one_core(core):
  """Pins this process (and the threads it will start) to `core`; returns the core."""
  allowed = sorted(os.sched_getaffinity(0))
  core = allowed[-1] if core is None else core
  if core not in allowed:
    raise SystemExit(f"--core {core} is not one of this process's CPUs {allowed}")
  os.sched_setaffinity(0, {core})  # this thread; the threads it starts inherit it
  return core


def _threads_elsewhere(core):
  """This process's threads allowed on a CPU other than `core` (should be none)."""
  stray = []
  for tid in os.listdir("/proc/self/task"):
    try:
      if os.sched_getaffinity(int(tid)) != {core}:
        stray.append(int(tid))
    except OSError:  # the thread ended meanwhile
      pass
  return stray


def natural_image(rng, height, width):
  """A uint8 [height, width, 3] image with a photograph's 1/f spectrum and some edges."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image, ImageDraw, ImageFilter  # pylint: disable=import-outside-toplevel

  fy = np.fft.fftfreq(height)[:, None]
  fx = np.fft.rfftfreq(width)[None, :]
  frequency = np.sqrt(fx ** 2 + fy ** 2)
  frequency[0, 0] = 1.0

  def pink(exponent):
    spectrum = rng.normal(size=frequency.shape) + 1j * rng.normal(size=frequency.shape)
    field = np.fft.irfft2(spectrum / frequency ** exponent, s=(height, width))
    return (field - field.mean()) / (field.std() + 1e-8)

  # Luminance carries the detail; the two colour fields are smoother, as in photographs.
  luminance, red_green, blue_yellow = pink(1.0), pink(1.5), pink(1.5)
  base = rng.uniform(60, 190, 3)
  colour = np.stack([luminance + 0.5 * red_green + 0.2 * blue_yellow,
                     luminance - 0.4 * red_green + 0.2 * blue_yellow,
                     luminance - 0.6 * blue_yellow], axis=-1)
  pixels = np.clip(base + colour * rng.uniform(25, 45), 0, 255).astype(np.uint8)
  image = Image.fromarray(pixels)
  # A few objects: polygons and ellipses of their own colour and texture, edges softened.
  for _ in range(int(rng.integers(2, 6))):
    texture = rng.uniform(0, 256, 3) + pink(1.0)[..., None] * rng.uniform(10, 30)
    overlay = Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8))
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    opacity = int(rng.integers(150, 256))
    if rng.random() < 0.5:
      x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
      draw.ellipse([x0, y0, x0 + rng.uniform(20, width / 2), y0 + rng.uniform(20, height / 2)],
                   fill=opacity)
    else:
      draw.polygon([(float(rng.uniform(0, width)), float(rng.uniform(0, height)))
                    for _ in range(int(rng.integers(3, 7)))], fill=opacity)
    image = Image.composite(overlay, image, mask.filter(ImageFilter.GaussianBlur(1.5)))
  grain = rng.normal(0, 4, (height, width, 3))
  return np.clip(np.asarray(image, np.float64) + grain, 0, 255).astype(np.uint8)


def write_shards(directory, count, seed):
  """`count` JPEG records in SHARDS TFRecord files; returns (glob, mean JPEG bytes, mean H, W)."""
  import io  # pylint: disable=import-outside-toplevel

  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel

  from data import records  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  shards = [[] for _ in range(SHARDS)]
  sizes, shapes = [], []
  for i in range(count):
    height, width = int(rng.integers(250, 451)), int(rng.integers(300, 501))
    buffer = io.BytesIO()
    Image.fromarray(natural_image(rng, height, width)).save(buffer, format="JPEG", quality=90)
    sizes.append(buffer.tell())
    shapes.append((height, width))
    shards[i % SHARDS].append(records.make_example(key=f"synthetic/{i}", image=buffer.getvalue(),
                                                   label=i % NUM_CLASSES))
    if (i + 1) % 128 == 0 or i + 1 == count:
      print(f"  {i + 1}/{count} JPEGs", flush=True)
  for index, rows in enumerate(shards):
    records.write_atomically(os.path.join(directory, records.shard_name("train", index, SHARDS)),
                             rows)
  return (os.path.join(directory, "train-*"), float(np.mean(sizes)),
          tuple(float(v) for v in np.mean(shapes, axis=0)))


def one_core_stream(pattern, config, batch_size, shuffle_buffer):
  """The labeled training stream over `pattern`, confined to one tf.data thread."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from data import pipeline  # pylint: disable=import-outside-toplevel

  stream = pipeline.labeled_dataset(pattern, config, batch_size=batch_size,
                                    num_classes=NUM_CLASSES, seed=0,
                                    shuffle_buffer=shuffle_buffer)
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  options.autotune.cpu_budget = 1
  return stream.with_options(options)


def measure(stream, seconds, core):
  """(wall images/s, images per process CPU-second, CPU-seconds / wall-second) over `seconds`.

  Raises RuntimeError if, with the stream running, a thread of this process may run elsewhere
  than on `core`."""
  batches = iter(stream)
  for _ in range(WARMUP_BATCHES):  # traces, fills the shuffle buffer and the prefetch
    next(batches)
  count = 0
  wall, cpu = time.perf_counter(), time.process_time()
  while time.perf_counter() - wall < seconds:
    images, _ = next(batches)
    count += int(images.shape[0])
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  stray = _threads_elsewhere(core)
  if stray:
    raise RuntimeError(f"threads {stray} are not pinned to CPU {core}")
  return count / wall, count / cpu, cpu / wall


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image_sizes", type=int, nargs="+", default=[224],
                      help="model input sides (224 for B0, 600 for B7)")
  parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds a round")
  parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the configs")
  parser.add_argument("--images", type=int, default=512, help="distinct JPEGs")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--core", type=int, help="CPU to pin to (default: the last allowed)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  core = _pin_to_one_core(args.core)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from data import preprocess  # pylint: disable=import-outside-toplevel

  # Before any op runs: afterwards TensorFlow refuses to resize its pools.
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  print(f"pinned to CPU {core} of {os.cpu_count()}; TF {tf.__version__}", flush=True)

  with tempfile.TemporaryDirectory() as directory:
    print(f"writing {args.images} JPEGs", flush=True)
    pattern, mean_bytes, (mean_h, mean_w) = write_shards(directory, args.images, args.seed)
    print(f"mean JPEG {mean_bytes / 1024:.0f} KiB, mean size {mean_w:.0f}x{mean_h:.0f} (WxH), "
          f"{mean_bytes / (mean_w * mean_h):.2f} bytes a pixel", flush=True)
    rows = []
    for size in args.image_sizes:
      configs = {
          "decode + inception crop + flip + RandAugment(2, 27) + normalise":
              preprocess.PreprocessConfig(size, randaugment_layers=2, randaugment_magnitude=27),
          "decode + inception crop + flip + normalise (no RandAugment)":
              preprocess.PreprocessConfig(size),
      }
      results = {name: [] for name in configs}
      for round_index in range(args.rounds):
        for name, config in configs.items():
          stream = one_core_stream(pattern, config, args.batch_size, args.images)
          wall_rate, cpu_rate, utilisation = measure(stream, args.seconds, core)
          results[name].append((wall_rate, cpu_rate))
          print(f"  {size}x{size} round {round_index + 1}: {name}: {wall_rate:,.0f} img/s wall, "
                f"{cpu_rate:,.0f} img/CPU-s, CPU/wall {utilisation:.2f}", flush=True)
      # Each column's best round: other tenants only ever slow a round down.
      rows += [(size, name, max(r[0] for r in results[name]), max(r[1] for r in results[name]))
               for name in configs]

  print(f"\nOne core (CPU {core}; every thread checked), batch {args.batch_size}, best of "
        f"{args.rounds} rounds of {args.seconds:.0f} s; {args.images} JPEGs, mean "
        f"{mean_bytes / 1024:.0f} KiB, {mean_w:.0f}x{mean_h:.0f}")
  print("| size | pipeline | img/s (wall, one core) | img per CPU-second |")
  print("|---|---|---|---|")
  for size, name, wall_rate, cpu_rate in rows:
    print(f"| {size} | {name} | {wall_rate:,.0f} | {cpu_rate:,.0f} |")


if __name__ == "__main__":
  main()
