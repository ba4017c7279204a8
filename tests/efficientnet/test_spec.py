"""The architecture tables, checked against the reference's published numbers (no TensorFlow)."""

import pytest

from efficientnet import spec

# efficientnet-and-randaugment.md section 1.3: stem, stage outputs, repeats, head per variant.
SCALED = {
    "efficientnet-b0": (32, (16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1), 1280),
    "efficientnet-b1": (32, (16, 24, 40, 80, 112, 192, 320), (2, 3, 3, 4, 4, 5, 2), 1280),
    "efficientnet-b2": (32, (16, 24, 48, 88, 120, 208, 352), (2, 3, 3, 4, 4, 5, 2), 1408),
    "efficientnet-b3": (40, (24, 32, 48, 96, 136, 232, 384), (2, 3, 3, 5, 5, 6, 2), 1536),
    "efficientnet-b4": (48, (24, 32, 56, 112, 160, 272, 448), (2, 4, 4, 6, 6, 8, 2), 1792),
    "efficientnet-b5": (48, (24, 40, 64, 128, 176, 304, 512), (3, 5, 5, 7, 7, 9, 3), 2048),
    "efficientnet-b6": (56, (32, 40, 72, 144, 200, 344, 576), (3, 6, 6, 8, 8, 11, 3), 2304),
    "efficientnet-b7": (64, (32, 48, 80, 160, 224, 384, 640), (4, 7, 7, 10, 10, 13, 4), 2560),
    "efficientnet-l0": (88, (48, 64, 112, 224, 312, 536, 896), (4, 8, 8, 12, 12, 15, 4), 3584),
    "efficientnet-l1": (128, (64, 96, 160, 312, 440, 752, 1248), (4, 8, 8, 12, 12, 15, 4), 4992),
    "efficientnet-l2": (136, (72, 104, 176, 344, 480, 824, 1376), (6, 11, 11, 16, 16, 22, 6), 5504),
}
BLOCK_COUNTS = {"efficientnet-b0": 16, "efficientnet-b1": 23, "efficientnet-b2": 23,
                "efficientnet-b3": 26, "efficientnet-b4": 32, "efficientnet-b5": 39,
                "efficientnet-b6": 45, "efficientnet-b7": 55, "efficientnet-l2": 88}


@pytest.mark.parametrize("name", sorted(SCALED))
def test_expand_blocks_widths_and_repeats_match_reference_table(name):
  variant = spec.VARIANTS[name]
  stem, outs, repeats, head = SCALED[name]
  plan = spec.expand_blocks(variant.width, variant.depth)
  assert spec.stem_filters(variant.width) == stem
  assert spec.head_filters(variant.width) == head
  for stage in range(1, 8):
    stage_blocks = [b for b in plan if b.stage == stage]
    assert len(stage_blocks) == repeats[stage - 1]
    assert {b.filters_out for b in stage_blocks} == {outs[stage - 1]}
  if name in BLOCK_COUNTS:
    assert len(plan) == BLOCK_COUNTS[name]


def test_variant_table_is_the_references():
  assert spec.VARIANTS["efficientnet-l2"] == spec.Variant(4.3, 5.3, 800, 0.5)
  assert (spec.VARIANTS["efficientnet-l0"].width, spec.VARIANTS["efficientnet-l0"].depth) == (2.8, 3.7)
  assert (spec.VARIANTS["efficientnet-l1"].width, spec.VARIANTS["efficientnet-l1"].depth) == (3.9, 3.7)
  assert [spec.VARIANTS[f"efficientnet-b{i}"].resolution for i in range(8)] == [
      224, 240, 260, 300, 380, 456, 528, 600]
  assert [spec.VARIANTS[f"efficientnet-b{i}"].dropout_rate for i in range(8)] == [
      0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.5]


@pytest.mark.parametrize("filters,width,expected", [
    (40, 1.1, 48),   # 1.1 * 40 = 44.000000000000007 rounds up: float64 arithmetic matters
    (32, 1.0, 32), (1280, 4.3, 5504), (16, 0.1, 8), (24, 1.4, 32),
    (320, 1.1, 352),  # 352 from 352.00000000000006
    (112, 1.1, 120),  # int(123.2 + 4) // 8 * 8 = 120, not below 90% of 123.2
    (80, 1.1, 88),
])
def test_round_filters_cases(filters, width, expected):
  assert spec.round_filters(filters, width) == expected


def test_round_filters_ten_percent_rule():
  # 0.1 * 1280 = 128 exactly; 0.05 * 200 = 10 -> int(14) // 8 * 8 = 8 < 9, so +8 = 16.
  assert spec.round_filters(200, 0.05) == 16


def test_round_repeats_uses_ceil_of_float_product():
  assert spec.round_repeats(3, 1.4) == 5  # 1.4 * 3 = 4.199999999999999
  assert spec.round_repeats(1, 3.1) == 4
  assert spec.round_repeats(4, 1.0) == 4


def test_stride_only_on_first_block_and_filters_chain():
  plan = spec.expand_blocks(1.0, 2.0)
  previous_out = spec.stem_filters(1.0)
  for b in plan:
    first = b.name.endswith("a_")
    assert (b.strides == spec.B0_STAGES[b.stage - 1].strides) if first else b.strides == 1
    assert b.filters_in == previous_out
    previous_out = b.filters_out


def test_drop_rate_schedule_is_linear_from_zero():
  plan = spec.expand_blocks(1.0, 1.0, survival_prob=0.8)
  n = len(plan)
  assert plan[0].drop_rate == 0
  for i, b in enumerate(plan):
    assert b.drop_rate == pytest.approx(0.2 * i / n)
  assert plan[-1].drop_rate == pytest.approx(0.1875)


def test_small_image_sets_stages_two_and_three_to_stride_one():
  plan = spec.expand_blocks(1.0, 1.0, small_image=True)
  firsts = {b.stage: b.strides for b in plan if b.name.endswith("a_")}
  assert firsts == {1: 1, 2: 1, 3: 1, 4: 2, 5: 1, 6: 2, 7: 1}


def test_identity_skip_and_se_width():
  plan = spec.expand_blocks(1.0, 1.0)
  by_name = {b.name: b for b in plan}
  assert not by_name["block1a_"].has_identity_skip          # 32 -> 16
  assert not by_name["block2a_"].has_identity_skip          # stride 2
  assert by_name["block2b_"].has_identity_skip
  assert by_name["block2a_"].filters_se == 4                # int(16 * 0.25), not of 96
  assert by_name["block2a_"].filters_expanded == 96


def test_unknown_variant_lists_valid_names():
  with pytest.raises(ValueError, match="efficientnet-b0.*efficientnet-l2"):
    spec.get_variant("efficientnet-b9")


def test_stage_string_form():
  assert str(spec.B0_STAGES[1]) == "r2_k3_s22_e6_o24_se0.25"
