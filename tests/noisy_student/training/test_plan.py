"""The training plan (noisy_student/training/plan.py), what --dry_run prints and train runs,
against the reference's formulas restated here in plain arithmetic, for the SVHN, B0, B7 and L2
recipes as main.py parses them; and the plan needs no TensorFlow."""

import dataclasses
import json
import math
import pathlib
import subprocess
import sys

import pytest
from absl import flags

import main
from noisy_student.phases import train
from noisy_student.training import plan

ROOT = pathlib.Path(__file__).resolve().parents[3]
# The reference's task_info: labeled training images (SVHN: train less its 4,000 dev images).
IMAGENET_TRAIN, SVHN_TRAIN = 1281167, 69257
REPLICAS = 32  # a TPU v3-32: the per-replica batch a recipe's global batch gives there


def recipe_config(recipe, *extra):
  """The TrainConfig `python main.py --flagfile=recipes/RECIPE ...` builds."""
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", f"--flagfile={ROOT / 'recipes' / recipe}", *extra])
  return main.train_config()


def reference_rates(*, batch, rows, steps, base, warmup_epochs, decay_epochs, decay_rate,
                    final=None, schedule_steps=None):
  """The reference's utils.build_learning_rate with main.py's arguments, restated: the peak is
  base * batch / 256, a linear warm-up over int(5 * steps_per_epoch) steps, then staircase
  decay counted from step 0; --final_base_lr sets the decay period from the run's length; a
  fine-tune runs the last `steps` of a schedule of `schedule_steps` (train_last_step_num)."""
  per_epoch = rows / batch
  length = schedule_steps or steps
  if final is not None:
    decay_epochs = (length / per_epoch - warmup_epochs) / (
        math.log(final / base) / math.log(decay_rate))
  warmup, start, peak = int(warmup_epochs * per_epoch), length - steps, base * batch / 256

  def rate(step):
    step += start
    if step < warmup:
      return peak * step / warmup
    return peak * decay_rate ** math.floor(step / (per_epoch * decay_epochs))
  return rate, warmup


CASES = [
    # recipe, role, labeled rows, extra flags, pseudo rows per step, epochs (published or derived)
    ("svhn_student.flags", "student", SVHN_TRAIN, [], 5 * 128, 109474 * 128 / SVHN_TRAIN),
    ("imagenet_b0_student.flags", "student", IMAGENET_TRAIN, [], None, None),
    ("imagenet_b7_student.flags", "student", IMAGENET_TRAIN, [], 3 * 4096, 349.998),
    ("imagenet_l2_student.flags", "student", IMAGENET_TRAIN, [], 14 * 4096, 349.998),
]


@pytest.mark.parametrize("recipe, role, rows, extra, pseudo, epochs", CASES)
def test_recipe_plans_are_the_reference_arithmetic(recipe, role, rows, extra, pseudo, epochs):
  config = recipe_config(recipe, *extra)
  found = plan.plan_training(config, role=role, labeled_rows=rows,
                             image_size=train.run_image_size(config), replicas=REPLICAS,
                             pseudo_rows=1_000_000).as_dict()
  batch = config.batch_size
  assert found["total_steps"] == config.train_steps  # as asked, never rounded
  if pseudo is not None:
    assert found["pseudo_per_step"] == pseudo
  if epochs is not None:
    assert found["epochs"] == pytest.approx(epochs, abs=5e-4)
  assert found["per_replica"] == {"labeled": batch // REPLICAS,
                                  "pseudo": found["pseudo_per_step"] // REPLICAS,
                                  "images": (batch + found["pseudo_per_step"]) // REPLICAS}
  rate, warmup = reference_rates(batch=batch, rows=rows, steps=config.train_steps,
                                 base=config.base_learning_rate,
                                 warmup_epochs=config.warmup_epochs,
                                 decay_epochs=config.lr_decay_epochs,
                                 decay_rate=config.lr_decay_factor,
                                 final=config.final_learning_rate)
  assert found["warmup_steps"] == warmup
  rates = found["learning_rate"]
  assert rates["step_0"] == 0.0
  assert rates["warmup_end"] == pytest.approx(rate(warmup - 1), rel=1e-12)
  assert rates["after_warmup"] == pytest.approx(rate(warmup), rel=1e-12)
  assert rates["last_step"] == pytest.approx(rate(config.train_steps - 1), rel=1e-12)
  tiling = found["keras_epochs"]
  assert (tiling["count"] - 1) * tiling["steps"] + tiling["last"] == config.train_steps
  assert tiling["steps"] == min(round(rows / batch), plan.MAX_STEPS_PER_KERAS_EPOCH)


def test_svhn_decays_to_its_final_rate_and_imagenet_b7_matches_its_published_peak():
  svhn = recipe_config("svhn_student.flags")
  found = plan.plan_training(svhn, role="student", labeled_rows=SVHN_TRAIN, image_size=32)
  # noisy-student-reference: the decay period that reaches 0.0002 (per 256) from 0.016 lands
  # a little below it, 9.1e-5 at batch 128 instead of 1e-4.
  assert found.learning_rates()["last_step"] == pytest.approx(9.1e-5, rel=0.01)
  b7 = recipe_config("imagenet_b7_student.flags")
  rates = plan.plan_training(b7, role="student", labeled_rows=IMAGENET_TRAIN,
                             image_size=600).learning_rates()
  # 0.016 * 4096 / 256 = 0.256 at the peak; the first rate after warm-up is 0.97**2 of it.
  assert rates["warmup_end"] == pytest.approx(0.256 * 1562 / 1563)
  assert rates["after_warmup"] == pytest.approx(0.256 * 0.97 ** 2)


def test_the_l2_fine_tune_runs_its_469_steps_at_the_tail_of_the_students_schedule():
  """The L2 recipe's documented FixRes step: 469 steps (1.5 epochs), 313 + 156 in Keras epochs
  (it ran 626 when Keras epochs had to divide the total), at the last 469 steps' rates."""
  student = recipe_config("imagenet_l2_student.flags")
  tune = train.finetune_config(
      dataclasses.replace(student, image_size=800, freeze_blocks=44, train_steps=469,
                          unlabeled_batch_ratio=0.0),
      {"config": dataclasses.asdict(student), "total_steps": student.train_steps})
  found = plan.plan_training(tune, role="finetune", labeled_rows=IMAGENET_TRAIN,
                             image_size=800, replicas=REPLICAS)
  assert found.total_steps == 469 and found.epochs == pytest.approx(1.5, abs=0.001)
  assert dataclasses.astuple(found.keras_epochs) == (313, 2, 156)
  rate, _ = reference_rates(batch=4096, rows=IMAGENET_TRAIN, steps=469, base=0.016,
                            warmup_epochs=5, decay_epochs=2.4, decay_rate=0.97,
                            schedule_steps=student.train_steps)
  rates = found.learning_rates()
  assert set(rates) == {"step_0", "last_step"}  # the warm-up ended long before
  assert rates["step_0"] == pytest.approx(rate(0), rel=1e-12)
  assert rates["last_step"] == pytest.approx(rate(468), rel=1e-12)
  assert rates["step_0"] == pytest.approx(0.256 * 0.97 ** math.floor(
      (109474 - 469) / (IMAGENET_TRAIN / 4096 * 2.4)))
  # Dropout and stochastic depth stay on in the layers it trains, as the reference's.
  assert (tune.dropout_rate, tune.survival_prob) == (student.dropout_rate, student.survival_prob)
  assert not tune.augment and tune.randaugment_layers == 0


def test_a_batch_the_replicas_cannot_share_is_refused_before_the_run():
  config = train.TrainConfig(train_steps=10, batch_size=100, unlabeled_batch_ratio=0.5)
  with pytest.raises(ValueError, match="--batch_size: 100 rows a step do not split evenly "
                     "over 8 replicas"):
    plan.plan_training(config, role="student", labeled_rows=1000, image_size=32, replicas=8)


def test_the_plan_needs_no_tensorflow():
  """plan.py and learning_rate.py import nothing of TensorFlow or Keras: the same plan in a
  process where importing either fails."""
  config = recipe_config("imagenet_l2_student.flags")
  expected = plan.plan_training(config, role="student", labeled_rows=IMAGENET_TRAIN,
                                image_size=475, replicas=REPLICAS, pseudo_rows=10).as_dict()
  script = f"""
import json, sys, types
sys.modules["tensorflow"] = sys.modules["keras"] = None  # any import of them fails
from noisy_student.training import plan
config = types.SimpleNamespace(**json.loads({json.dumps(json.dumps(dataclasses.asdict(config)))}))
print(json.dumps(plan.plan_training(config, role="student", labeled_rows={IMAGENET_TRAIN},
                                    image_size=475, replicas={REPLICAS}, pseudo_rows=10).as_dict()))
"""
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                        timeout=60)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout) == json.loads(json.dumps(expected))


@pytest.mark.parametrize("total,per_epoch,expected", [
    (1000, 31.25, (31, 33, 8)),     # 32 epochs of 31 steps and a last one of 8: exactly 1000
    (313, 15.6, (16, 20, 9)),       # a prime total is run as asked, not rounded up to 320
    (469, 312.79, (313, 2, 156)),   # the L2 fine-tune: 1.5 epochs, not 626 steps
    (12, 100.0, (12, 1, 12)),       # shorter than one data epoch
    (5000, 4000.0, (1000, 5, 1000)),  # capped at MAX_STEPS_PER_KERAS_EPOCH
    (57, 3.8, (4, 15, 1)),          # --epochs=15 of 3.8 steps: Keras counts 15 epochs
])
def test_keras_epochs_tile_exactly_the_steps_asked(total, per_epoch, expected):
  tiling = plan.keras_epochs(total, per_epoch)
  assert (tiling.steps, tiling.count, tiling.last) == expected
  # Restated: every Keras epoch but the last is one data epoch in whole steps, the sum is exact.
  assert (tiling.count - 1) * tiling.steps + tiling.last == total
  assert 1 <= tiling.last <= tiling.steps <= max(1, round(per_epoch))
