"""Writes flags.md from main.py's flag definitions: `python scripts/flags_md.py > flags.md`.

tests/test_main.py fails when flags.md and main.py disagree; rerun this after changing a flag.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

import main  # noqa: E402

GROUPS = (
    ("Common", "mode workdir model image_size small_image pad_crop "
     "width_coefficient "
     "depth_coefficient num_classes seed strategy tpu mixed_precision jit_compile batch_size "
     "inference_batch_size "
     "normalization"),
    ("Data (train, finetune, predict, filter, eval, iterate)",
     "labeled_data unlabeled_data eval_data validation_data pseudo_labeled_data"),
    ("convert", "source input output split num_shards unlabeled limit class_names "
     "labeled_per_class "
     "validation_per_class"),
    ("train and finetune (also iterate)",
     "epochs train_steps unlabeled_batch_ratio pseudo_labels temperature init_checkpoint "
     "randaugment_layers "
     "randaugment_magnitude cutout flip dropout_rate survival_prob base_learning_rate "
     "final_learning_rate warmup_epochs lr_decay_epochs lr_decay_factor weight_decay "
     "label_smoothing ema_decay batch_norm_recalibration batch_norm_recalibration_images "
     "eval_every_keras_epochs "
     "freeze_blocks finetune_noise"),
    ("predict, eval and export (also beam)",
     "checkpoint checkpoint_format inference_image_size top_k num_workers worker_index "
     "predictions_format"),
    ("filter (also iterate, beam)",
     "predictions confidence_threshold images_per_class balance duplicate_to_balance"),
    ("beam: predict + filter as one Apache Beam pipeline", "beam_options"),
    ("eval: robustness",
     "robustness robustness_baseline fgsm_epsilons corruption_table corrupted_data "
     "perturbed_data"),
    ("iterate", "iterations student_models teacher_epochs student_epochs student_init "
     "teacher_noise teacher_checkpoint"),
)

HEADER = """# Flags of main.py

`python main.py --mode=MODE [flags]`, or `--flagfile=recipes/NAME.flags` for a recipe (later flags
override the file's). Flags are checked when parsed: an unknown flag, a value outside its range or
enum, or a bad combination fails before anything runs. A flag given on the command line to a mode
that does not read it (last column) is an error naming the modes that do; a recipe may set flags
for several modes. This file is written by
`python scripts/flags_md.py > flags.md`; a test fails when it and main.py disagree.
"""


def main_():
  defined = {f.name: f for f in flags.FLAGS.get_flags_for_module(main)}
  listed = [name for _, names in GROUPS for name in names.split()]
  missing, extra = set(defined) - set(listed), set(listed) - set(defined)
  if missing or extra:
    raise SystemExit(f"update GROUPS: undocumented {sorted(missing)}, unknown {sorted(extra)}")
  print(HEADER)
  for title, names in GROUPS:
    print(f"## {title}\n\n| flag | type | default | meaning | read by modes |\n"
          "|---|---|---|---|---|")
    for name in names.split():
      flag = defined[name]
      kind = flag.flag_type()
      values = getattr(flag.parser, "enum_values", None)
      if values:
        kind = "variant name" if name == "model" else "one of " + ", ".join(values)
      default = flag.default
      if isinstance(default, list):
        default = ",".join(default) or "(empty)"
      meaning = re.sub(r"^<[^>]*>: ", "", flag.help).replace("|", "/")
      modes = ", ".join(main.FLAG_MODES[name])
      print(f"| `--{name}` | {kind} | `{default}` | {meaning} | {modes} |")
    print()


if __name__ == "__main__":
  main_()
