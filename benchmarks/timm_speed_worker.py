"""timm's side of `model_speed.py`: a long-lived PyTorch process driven over stdin/stdout.

`model_speed.py` starts this file with PyTorch and timm on the subprocess's path (and the
torchvision stand-in, `timm_standin/`), so the project's own process never imports torch. One
JSON request a line on stdin, one JSON reply a line on stdout:

  {"cmd": "setup", "case": {...}}  builds the case's model and runs its warm-up steps;
                                   reply {"parameters": N, "versions": {...}}
  {"cmd": "window"}                runs one timed window of the case's steps;
                                   reply {"seconds": wall, "cpu_seconds": this process's CPU}
  {"cmd": "profile", "path": p}    one window under torch.profiler; the op table goes to p
  {"cmd": "quit"}

A case is {"mode": "train"|"infer", "image_size", "batch", "steps", "width", "depth",
"num_classes", "dropout", "drop_path", "warmup"}. Training: timm's TF-ported EfficientNet
(`tf_efficientnet_b0`'s builder with the case's width and depth multipliers: TF "same" padding,
batch norm epsilon 1e-3), channels-last, float32, torch's RMSprop (alpha 0.9, momentum 0.9,
eps 1e-3), softmax cross-entropy on integer labels, the usual zero_grad/backward/step loop on one
fixed random batch. Inference: eval mode under `torch.inference_mode()`. Runs while the parent
waits for the reply, so the two sides never share the 2 CPU cores.
"""

import json
import sys
import time

import timm
import torch
from timm.models import efficientnet as timm_efficientnet

LEARNING_RATE = 1e-3


def build(case):
  # tf_efficientnet_b0 passes its own multipliers; the builder takes any (the student's 0.5).
  model = timm_efficientnet._gen_efficientnet(  # pylint: disable=protected-access
      "tf_efficientnet_b0", channel_multiplier=case["width"], depth_multiplier=case["depth"],
      pretrained=False, bn_eps=timm_efficientnet.BN_EPS_TF_DEFAULT, pad_type="same",
      num_classes=case["num_classes"], drop_rate=case["dropout"],
      drop_path_rate=case["drop_path"])
  return model.to(memory_format=torch.channels_last)


class Runner:
  """One case's model, data and step."""

  def __init__(self, case):
    torch.manual_seed(0)
    self.case = case
    self.model = build(case)
    generator = torch.Generator().manual_seed(0)
    shape = (case["batch"], 3, case["image_size"], case["image_size"])
    self.images = torch.randn(shape, generator=generator).contiguous(
        memory_format=torch.channels_last)
    self.labels = torch.randint(0, case["num_classes"], (case["batch"],), generator=generator)
    if case["mode"] == "train":
      self.model.train()
      self.optimizer = torch.optim.RMSprop(self.model.parameters(), lr=LEARNING_RATE, alpha=0.9,
                                           eps=1e-3, momentum=0.9)
      self.loss_fn = torch.nn.CrossEntropyLoss()
    else:
      self.model.eval()
    self.run(case["warmup"])

  def step(self):
    if self.case["mode"] == "train":
      self.optimizer.zero_grad(set_to_none=True)
      loss = self.loss_fn(self.model(self.images), self.labels)
      loss.backward()
      self.optimizer.step()
    else:
      with torch.inference_mode():
        self.model(self.images)

  def run(self, steps):
    """Wall seconds, and this process's CPU seconds (all its threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
      self.step()
    return time.perf_counter() - start, time.process_time() - cpu

  def profile(self, path):
    """One window under torch.profiler: seconds, and self CPU seconds by kind of work."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, record_shapes=True) as profiler:
      seconds, _ = self.run(self.case["steps"])
    with open(path, "w", encoding="utf-8") as f:
      f.write(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    kinds = {}
    for event in profiler.events():
      kind = op_kind(event)
      kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total / 1e6
    return seconds, kinds


def _weight_is_depthwise(shapes, index):
  weight = shapes[index] if len(shapes) > index else []
  return len(weight) == 4 and weight[1] == 1 and weight[0] > 1


def op_kind(event):
  """The kind of work a profiled op is, by its name, its weight's shape and its ancestors."""
  parent = event.cpu_parent
  while parent is not None:
    if parent.name.startswith("Optimizer.step"):
      return "optimizer"
    if parent.name.startswith("Optimizer.zero_grad"):
      return "zero_grad"
    parent = parent.cpu_parent
  name, shapes = event.name, event.input_shapes or []
  if name in ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution",
              "aten::thnn_conv2d", "aten::_slow_conv2d_forward", "aten::conv2d"):
    return "depthwise conv, forward" if _weight_is_depthwise(shapes, 1) else "conv, forward"
  if name == "aten::convolution_backward":
    return ("depthwise conv, gradients" if _weight_is_depthwise(shapes, 2)
            else "conv, gradients")
  if "batch_norm" in name:
    return "batch norm, backward" if "backward" in name else "batch norm, forward"
  if name in ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul"):
    return "dense"
  if name.startswith("aten::silu") or name.startswith("aten::sigmoid"):
    return "swish / sigmoid (fwd + bwd)"
  if name.startswith("aten::"):
    return "other aten ops (elementwise, pooling, loss, dropout, copies)"
  return "autograd engine / dispatch"


def main():
  runner = None
  out = sys.stdout
  sys.stdout = sys.stderr  # anything timm or torch prints stays off the reply channel
  for line in sys.stdin:
    request = json.loads(line)
    if request["cmd"] == "quit":
      break
    if request["cmd"] == "setup":
      runner = None
      runner = Runner(request["case"])
      reply = {"parameters": sum(p.numel() for p in runner.model.parameters() if p.requires_grad),
               "versions": {"torch": torch.__version__, "timm": timm.__version__},
               "threads": torch.get_num_threads()}
    elif request["cmd"] == "window":
      seconds, cpu_seconds = runner.run(runner.case["steps"])
      reply = {"seconds": seconds, "cpu_seconds": cpu_seconds}
    elif request["cmd"] == "profile":
      seconds, kinds = runner.profile(request["path"])
      reply = {"seconds": seconds, "self_seconds_by_kind": kinds}
    else:
      reply = {"error": f"unknown command {request['cmd']!r}"}
    out.write(json.dumps(reply) + "\n")
    out.flush()


if __name__ == "__main__":
  main()
