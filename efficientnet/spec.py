"""The EfficientNet architecture as data: the B0 stage table, the variant table, and the one
pure function that expands them into per-block arguments.

Nothing here imports TensorFlow or Keras, so the architecture can be inspected and tested in
milliseconds. Numbers and rounding rules are those of tensorflow/tpu's `efficientnet_builder.py`
and `efficientnet_model.py`; the arithmetic is done in Python floats exactly as there, because
floors and ceilings depend on it (1.1 * 40 = 44.000000000000007 rounds up to 48).
"""

import dataclasses
import math

DEPTH_DIVISOR = 8
STEM_FILTERS = 32
HEAD_FILTERS = 1280
DEFAULT_SURVIVAL_PROB = 0.8


@dataclasses.dataclass(frozen=True)
class Stage:
  """One row of the B0 table (Tan & Le 2019, Table 1). Input filters come from the row above."""
  repeats: int
  kernel_size: int
  strides: int
  expand_ratio: int
  filters_out: int
  se_ratio: float = 0.25

  def __str__(self):
    # The reference's block-string notation, handy in logs.
    return (f"r{self.repeats}_k{self.kernel_size}_s{self.strides}{self.strides}"
            f"_e{self.expand_ratio}_o{self.filters_out}_se{self.se_ratio}")


@dataclasses.dataclass(frozen=True)
class Variant:
  width: float
  depth: float
  resolution: int
  dropout_rate: float


@dataclasses.dataclass(frozen=True)
class BlockArgs:
  """Everything one MBConv block needs, already scaled and scheduled."""
  name: str             # keras.applications style prefix, e.g. "block2a_"
  index: int            # global block index, 0-based; the reference's `blocks_{index}`
  stage: int            # 1-based stage number
  kernel_size: int
  strides: int
  expand_ratio: int
  filters_in: int
  filters_out: int
  se_ratio: float
  drop_rate: float      # stochastic depth drop probability (used only on identity-skip blocks)

  @property
  def has_identity_skip(self):
    return self.strides == 1 and self.filters_in == self.filters_out

  @property
  def filters_expanded(self):
    return self.filters_in * self.expand_ratio

  @property
  def filters_se(self):
    # The reference sizes SE from the block's *input* filters, not the expanded ones.
    return max(1, int(self.filters_in * self.se_ratio))


B0_STAGES = (
    #     repeats kernel strides expand filters_out
    Stage(1,      3,     1,      1,     16),
    Stage(2,      3,     2,      6,     24),
    Stage(2,      5,     2,      6,     40),
    Stage(3,      3,     2,      6,     80),
    Stage(3,      5,     1,      6,     112),
    Stage(4,      5,     2,      6,     192),
    Stage(1,      3,     1,      6,     320),
)

# The reference's 32x32 variant (noisystudent `small_image_model`): stages 2 and 3 keep the
# resolution, so a 32x32 input goes 32 -> 16 (stem) -> 8 (stage 4) -> 4 (stage 6).
SMALL_IMAGE_STRIDE_ONE_STAGES = (2, 3)

VARIANTS = {
    # name:              Variant(width, depth, resolution, dropout_rate)
    "efficientnet-b0": Variant(1.0, 1.0, 224, 0.2),
    "efficientnet-b1": Variant(1.0, 1.1, 240, 0.2),
    "efficientnet-b2": Variant(1.1, 1.2, 260, 0.3),
    "efficientnet-b3": Variant(1.2, 1.4, 300, 0.3),
    "efficientnet-b4": Variant(1.4, 1.8, 380, 0.4),
    "efficientnet-b5": Variant(1.6, 2.2, 456, 0.4),
    "efficientnet-b6": Variant(1.8, 2.6, 528, 0.5),
    "efficientnet-b7": Variant(2.0, 3.1, 600, 0.5),
    # Noisy Student students (Xie et al. 2020, Table 7). L0/L1 exist in no Google code and were
    # never released; resolution here is the test resolution as for L2 (800), which we recall from
    # the paper's table as 500 for L0/L1 (trained at 380). Override with image_size.
    "efficientnet-l0": Variant(2.8, 3.7, 500, 0.5),
    "efficientnet-l1": Variant(3.9, 3.7, 500, 0.5),
    "efficientnet-l2": Variant(4.3, 5.3, 800, 0.5),
}


def get_variant(name):
  """Returns the Variant called `name`; an unknown name is an error listing the valid ones."""
  try:
    return VARIANTS[name]
  except KeyError:
    raise ValueError(f"Unknown EfficientNet variant {name!r}; valid variants: "
                     f"{', '.join(VARIANTS)}. (L2-475 is 'efficientnet-l2' with image_size=475.)"
                     ) from None


def round_filters(filters, width_coefficient, divisor=DEPTH_DIVISOR):
  """Scales a channel count by width and rounds to a multiple of `divisor`, never below 90%."""
  filters *= width_coefficient
  new_filters = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  if new_filters < 0.9 * filters:
    new_filters += divisor
  return int(new_filters)


def round_repeats(repeats, depth_coefficient):
  return int(math.ceil(depth_coefficient * repeats))


def expand_blocks(width_coefficient, depth_coefficient, *, small_image=False,
                  survival_prob=DEFAULT_SURVIVAL_PROB, stages=B0_STAGES):
  """Expands a stage table into one BlockArgs per block.

  Filters are rounded, repeats ceiled, a stage's stride goes to its first block only, and block i
  of n gets the stochastic-depth drop rate (1 - survival_prob) * i / n.
  """
  if not 0.0 < survival_prob <= 1.0:
    raise ValueError(f"survival_prob must be in (0, 1], got {survival_prob}")
  plan = []
  filters_in = round_filters(STEM_FILTERS, width_coefficient)
  for stage_number, stage in enumerate(stages, start=1):
    strides = stage.strides
    if small_image and stage_number in SMALL_IMAGE_STRIDE_ONE_STAGES:
      strides = 1
    filters_out = round_filters(stage.filters_out, width_coefficient)
    for repeat in range(round_repeats(stage.repeats, depth_coefficient)):
      plan.append(dict(
          name=f"block{stage_number}{chr(ord('a') + repeat)}_",
          stage=stage_number,
          kernel_size=stage.kernel_size,
          strides=strides if repeat == 0 else 1,
          expand_ratio=stage.expand_ratio,
          filters_in=filters_in if repeat == 0 else filters_out,
          filters_out=filters_out,
          se_ratio=stage.se_ratio))
    filters_in = filters_out
  drop_connect_rate = 1.0 - survival_prob
  num_blocks = len(plan)
  return tuple(BlockArgs(index=i, drop_rate=drop_connect_rate * i / num_blocks, **kwargs)
               for i, kwargs in enumerate(plan))


def stem_filters(width_coefficient):
  return round_filters(STEM_FILTERS, width_coefficient)


def head_filters(width_coefficient):
  return round_filters(HEAD_FILTERS, width_coefficient)
