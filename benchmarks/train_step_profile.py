"""Where a training step's time goes, by kind of op: ours (TensorFlow profiler) and timm (torch's).

For one of `model_speed.py`'s training cases, each side is built and warmed up as there, then one
window of the case's steps runs under the framework's profiler:

* ours / project: `tf.profiler.experimental` traces the window; the XSpace file is read back
  and every kernel event on TensorFlow's executor threads is summed by kind: the op's type
  (depthwise convolution forward, input gradient, filter gradient; other convolutions) and its
  name scope (batch-norm layers forward / `gradient_tape/` backward; the optimizer's and the EMA's
  updates, run here under scopes of their own). The Python thread's events give Keras' `fit`
  overhead: window time not spent inside the compiled step function.
* timm: `torch.profiler` over the worker's window (timm_speed_worker.py), self CPU time by op.

Kernel times are each op's wall time on its thread; TensorFlow runs independent ops side by
side (inter-op threads), so its sum can exceed the window's wall time. Shares compare sides.

  TIMM_PATH=/work/timm-site python benchmarks/train_step_profile.py --case train224 \\
      [--sides ours project timm] [--steps N]
"""

import argparse
import collections
import contextlib
import glob
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import model_speed  # noqa: E402  (sets up the paths, imports keras and tensorflow)
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

OPTIMIZER_SCOPE = "PROFILE_OPTIMIZER"
EMA_SCOPE = "PROFILE_EMA"
BN_SCOPE = re.compile(r"(^|/)(stem|top|block\w+?)_(expand_)?bn(_\d+)?/")
ORDER = ("depthwise conv, forward", "depthwise conv, input gradient",
         "depthwise conv, filter gradient", "conv / dense, forward", "conv / dense, gradients",
         "batch norm, forward", "batch norm, backward", "optimizer update", "EMA update",
         "swish / sigmoid / SE, forward", "other gradients (swish, SE, adds, AddN)",
         "other forward (dropout, pooling, loss, metrics)", "variable reads / misc")


def tf_op_kind(name, op_type):
  """The kind of a TensorFlow kernel event `name:op_type`."""
  backward = "gradient_tape/" in name
  if EMA_SCOPE in name:
    return "EMA update"
  if OPTIMIZER_SCOPE in name:
    return "optimizer update"
  if "DepthwiseConv2dNative" in op_type:
    if "BackpropFilter" in op_type:
      return "depthwise conv, filter gradient"
    if "BackpropInput" in op_type:
      return "depthwise conv, input gradient"
    return "depthwise conv, forward"
  if "Conv2D" in op_type or "MatMul" in op_type:
    return ("conv / dense, gradients" if backward or "Backprop" in op_type
            else "conv / dense, forward")
  if BN_SCOPE.search(name):
    return "batch norm, backward" if backward else "batch norm, forward"
  if op_type in ("ReadVariableOp", "AssignVariableOp", "AssignAddVariableOp", "Const",
                 "Identity", "NoOp", "_Retval", "_Arg"):
    return "variable reads / misc"
  top_level = not name.split("/")[0].startswith(("efficientnet", "gradient_tape"))
  if backward or op_type in ("AddN", "SigmoidGrad") or (top_level and "Sigmoid" in op_type):
    return "other gradients (swish, SE, adds, AddN)"
  if "Sigmoid" in op_type or "Swish" in op_type or "/se_" in name or "_se_" in name:
    return "swish / sigmoid / SE, forward"
  return "other forward (dropout, pooling, loss, metrics)"


@contextlib.contextmanager
def named_optimizer(optimizer):
  """Runs the optimizer's apply (and the EMA update, if any) under scopes the profile can see."""
  apply, update = optimizer.apply, getattr(optimizer, "_update_moving_averages", None)

  def scoped_apply(*args, **kwargs):
    with tf.name_scope(OPTIMIZER_SCOPE):
      return apply(*args, **kwargs)

  def scoped_update(*args, **kwargs):
    with tf.name_scope(EMA_SCOPE):
      return update(*args, **kwargs)

  optimizer.apply = scoped_apply
  if update is not None:
    optimizer._update_moving_averages = scoped_update  # pylint: disable=protected-access
  yield


def read_xspace(directory):
  path = sorted(glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True))[-1]
  space = xplane_pb2.XSpace()
  with open(path, "rb") as f:
    space.ParseFromString(f.read())
  return next(p for p in space.planes if p.name == "/host:CPU")


def tf_breakdown(plane):
  """(seconds by kind, seconds inside the step function, top op types by seconds)."""
  kinds, types = collections.Counter(), collections.Counter()
  in_function = 0.0
  for line in plane.lines:
    for event in line.events:
      label = plane.event_metadata[event.metadata_id].name
      seconds = event.duration_ps / 1e12
      if line.name.startswith("python") and label.startswith("EagerLocalExecute: __inference"):
        in_function += seconds
      # Kernel events are "op name:OpType"; "ExecutorState::Process" and the like contain them.
      if not line.name.startswith("tf_Compute") or ":" not in label or "::" in label:
        continue
      name, op_type = label.rsplit(":", 1)
      kinds[tf_op_kind(name, op_type)] += seconds
      types[op_type] += seconds
  return kinds, in_function, types


def profile_ours(which, case):
  runner = model_speed.KerasRunner(which, case, 1)
  # The step was traced in the warm-up; trace it again with the optimizer's scopes.
  with named_optimizer(runner.model.optimizer):
    runner.model.train_function = None
    runner.model.make_train_function(force=True)
    runner.run(2)
  with tempfile.TemporaryDirectory() as directory:
    tf.profiler.experimental.start(directory)
    seconds, _ = runner.window()
    tf.profiler.experimental.stop()
    kinds, in_function, types = tf_breakdown(read_xspace(directory))
  return seconds, kinds, in_function, types


def profile_timm(case, timm_path):
  runner = model_speed.TimmRunner(case, timm_path)
  with tempfile.NamedTemporaryFile(suffix=".txt") as table:
    reply = runner.ask({"cmd": "profile", "path": table.name})
    top = table.read().decode("utf-8")
  return reply["seconds"], reply["self_seconds_by_kind"], top


def print_kinds(title, seconds, kinds, steps):
  total = sum(kinds.values())
  print(f"\n{title}: window {seconds:.2f} s for {steps} steps ({1000 * seconds / steps:.1f} ms "
        f"a step); kernel time summed {total:.2f} s")
  print("| kind | ms a step | share |")
  print("|---|---|---|")
  for kind in list(ORDER) + sorted(k for k in kinds if k not in ORDER):
    if kind in kinds:
      print(f"| {kind} | {1000 * kinds[kind] / steps:.1f} | {kinds[kind] / total:.0%} |")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--case", choices=[c for c, v in model_speed.CASES.items()
                                         if v[1] == "train"], default="train224")
  parser.add_argument("--sides", nargs="+", choices=("ours", "project", "timm"),
                      default=["ours", "timm"])
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--timm_path", default=os.environ.get("TIMM_PATH", ""))
  args = parser.parse_args(argv)
  case = model_speed.case_dict(args.case, args.steps)
  print(f"{case['label']}, {case['steps']} steps profiled, load average "
        f"{os.getloadavg()[0]:.1f}")
  try:
    for side in args.sides:
      if side == "timm":
        try:
          seconds, kinds, top = profile_timm(case, args.timm_path)
        except Exception as e:  # pylint: disable=broad-except
          print(f"\ntimm: not available ({e})")
          continue
        print_kinds("timm (torch.profiler, self CPU time)", seconds, kinds, case["steps"])
        print("\n" + "\n".join(top.splitlines()[:25]))
        continue
      seconds, kinds, in_function, types = profile_ours(side, case)
      print_kinds(f"{side} (TensorFlow profiler, kernel time on the executor threads)", seconds,
                  kinds, case["steps"])
      print(f"fit overhead: {seconds - in_function:.3f} s of the {seconds:.2f} s window outside "
            f"the step function ({(seconds - in_function) / seconds:.1%})")
      print("top op types (ms a step): " + ", ".join(
          f"{t} {1000 * s / case['steps']:.1f}" for t, s in types.most_common(14)))
  finally:
    model_speed.TimmRunner.quit()


if __name__ == "__main__":
  main()
