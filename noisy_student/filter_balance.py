"""Confidence filtering and per-class balancing of pseudo labels: the pure, streaming core.

The rule (the paper's; noisy-student-reference.md section 3). Confidences are taken as float32,
the precision of the TFRecord float lists they come from.
  1. Validity: a record whose confidence is NaN, infinite or negative, or whose hard label is
     outside [0, num_classes), is skipped and counted, never kept.
  2. Threshold: keep records with confidence >= threshold (compared exactly, as float64).
     `None` or 0 keeps every valid record.
  3. Balance (`images_per_class=N`; `None` turns it off): per hard label keep the N records with
     the highest confidence. Ties are broken by record id ascending, i.e. global record order
     (shard index, record index), so the result does not depend on chunking or arrival order.
  4. Duplicate (`duplicate=True`, balancing on): a class with 0 < k < N kept records is filled to
     exactly N records. Every kept record gets N // k copies, and N % k of them get one more: the
     records at positions `default_rng([seed, class]).choice(k, N % k, replace=False)` of the
     class's kept records in record id order. A class with no kept record cannot be filled; it
     is reported in `empty_classes`. One generator per class keeps a class's copies independent
     of every other class.

Where this differs from the reference's filter_unlabel.py:
  - Over-full classes: exact top-N by confidence (the paper's "highest confidence"), where the
    code keeps a random subset, of expected size N, of the records above a per-class threshold
    raised on a 0.01 grid.
  - Short classes: exactly N records (whole copies plus a seeded subset), where the code draws
    floor(r) + Bernoulli(r - floor(r)) copies per image with an unseeded generator, so the class
    size is N only in expectation and runs are not reproducible.

Memory: a candidate is two int64s, its record id and a sort key packing (label, confidence), so
that one integer sort orders candidates by class, then confidence descending. A record is
admitted only when it beats its class's N-th best candidate at the last compaction. Admitted
records wait in a backlog that is compacted to at most N per class once it holds at least
`compaction_buffer` records and an eighth of the compacted set, and only when some class holds
more than N. So after every `add` the candidates number at most
C*N + max(C*N / 8, compaction_buffer), or C*N when no class is over-full, however many records
were fed; a compaction needs about 24 bytes per candidate. With balancing off every record
above the threshold is a kept record and is held.
"""

import ctypes
import dataclasses

import numpy as np

DEFAULT_COMPACTION_BUFFER = 1 << 16
# The most the filter phase fills a short class, as a multiple of its own kept records (each
# written about this many times at most). Beyond it copies replace data: the paper's 130,000 per
# class on 60 unlabeled images wrote 390,000 records, 6,500 copies of each image.
MAX_FILL_FACTOR = 10
# Key layout: label in the high bits, then the float32 confidence's 31 magnitude bits inverted.
# Non-negative floats order like their bit patterns, so ascending keys mean ascending label and
# descending confidence.
_CONFIDENCE_BITS = 31
_CONFIDENCE_MASK = (1 << _CONFIDENCE_BITS) - 1
_NO_CUTOFF = np.iinfo(np.int64).max  # Above every key: admits everything.


@dataclasses.dataclass(frozen=True)
class FilterRule:
  """The rule's settings (see the module docstring); every check on them is made here, once.

  Attributes:
    threshold: minimum confidence in [0, 1]; None or 0 keeps every valid record (stored as 0).
    images_per_class: per-class target N; None turns balancing (and duplication) off.
    duplicate: fill classes short of N by copies (ignored when balancing is off).
    seed: non-negative int seeding the duplication draw (and the filter phase's shuffle).
  """
  threshold: float = 0.3
  images_per_class: int | None = 130000
  duplicate: bool = True
  seed: int = 0

  def __post_init__(self):
    if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
      raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
    object.__setattr__(self, "threshold", validate_threshold(self.threshold))
    object.__setattr__(self, "images_per_class",
                       validate_images_per_class(self.images_per_class))
    object.__setattr__(self, "duplicate", bool(self.duplicate))
    object.__setattr__(self, "seed", int(self.seed))


@dataclasses.dataclass(frozen=True)
class Selection:
  """What to write: kept records with their copy counts, and per-class statistics.

  Attributes:
    record_ids: int64 [K], ascending: the kept records' global ids.
    labels: int32 [K], their hard labels.
    confidences: float32 [K], their confidences.
    copies: int32 [K], how many times each kept record is written (>= 1).
    before_threshold: int64 [C], valid records per hard label.
    after_threshold: int64 [C], valid records per hard label with confidence >= threshold.
    kept_unique: int64 [C], kept records per class.
    with_copies: int64 [C], records written per class, copies included.
    invalid_probability: records skipped for a NaN, infinite or negative confidence (the phase
      routes NaN or negative soft-label values here too).
    invalid_label: records skipped for a hard label outside [0, num_classes).
    threshold, images_per_class, duplicate, seed: the rule used.
  """
  record_ids: np.ndarray
  labels: np.ndarray
  confidences: np.ndarray
  copies: np.ndarray
  before_threshold: np.ndarray
  after_threshold: np.ndarray
  kept_unique: np.ndarray
  with_copies: np.ndarray
  invalid_probability: int
  invalid_label: int
  threshold: float | None
  images_per_class: int | None
  duplicate: bool
  seed: int

  @property
  def num_classes(self):
    return len(self.kept_unique)

  @property
  def num_records(self):
    """Records to write, copies included."""
    return int(self.with_copies.sum())

  @property
  def empty_classes(self):
    return [int(c) for c in np.flatnonzero(self.kept_unique == 0)]

  @property
  def short_classes(self):
    """Classes with some but fewer than images_per_class kept records (before duplication)."""
    if self.images_per_class is None:
      return []
    short = (self.kept_unique > 0) & (self.kept_unique < self.images_per_class)
    return [int(c) for c in np.flatnonzero(short)]

  def stats(self):
    """A JSON-ready summary: arguments, totals, and per-class counts (lists indexed by class)."""
    return {
        "threshold": self.threshold,
        "images_per_class": self.images_per_class,
        "duplicate": self.duplicate,
        "seed": self.seed,
        "num_classes": self.num_classes,
        "totals": {
            "before_threshold": int(self.before_threshold.sum()),
            "after_threshold": int(self.after_threshold.sum()),
            "kept_unique": int(self.kept_unique.sum()),
            "with_copies": int(self.with_copies.sum()),
            "invalid": self.invalid_probability + self.invalid_label,
            "invalid_probability": self.invalid_probability,
            "invalid_label": self.invalid_label,
        },
        "empty_classes": self.empty_classes,
        "short_classes": self.short_classes,
        "per_class": {
            "before_threshold": self.before_threshold.tolist(),
            "after_threshold": self.after_threshold.tolist(),
            "kept_unique": self.kept_unique.tolist(),
            "with_copies": self.with_copies.tolist(),
        },
    }


def validate_threshold(threshold):
  """Returns the threshold as a float in [0, 1] (None means 0); raises ValueError otherwise."""
  if threshold is None:
    return 0.0
  value = float(threshold)
  if not 0.0 <= value <= 1.0:  # False for NaN too.
    raise ValueError(f"confidence threshold must be in [0, 1], got {threshold!r}")
  return value


def validate_images_per_class(images_per_class):
  """Returns images_per_class as an int >= 1, or None; raises ValueError otherwise."""
  if images_per_class is None:
    return None
  if (isinstance(images_per_class, bool) or int(images_per_class) != images_per_class
      or images_per_class < 1):
    raise ValueError(f"images_per_class must be a positive integer or None, got "
                     f"{images_per_class!r}")
  return int(images_per_class)


def _class_name(label, class_names):
  return repr(class_names[label]) if class_names else str(label)


def fill_limit_error(kept_unique, images_per_class, class_names=None):
  """The one-line refusal of a target that fills some class beyond MAX_FILL_FACTOR times its
  kept records (`kept_unique`, per class), naming --images_per_class and the largest value
  that fits, MAX_FILL_FACTOR times the smallest non-empty class; None when every class fits
  (empty classes are never filled, and balancing off fills nothing)."""
  kept = np.asarray(kept_unique, np.int64)
  if images_per_class is None or not np.any(kept > 0):
    return None
  smallest = int(np.flatnonzero(kept == kept[kept > 0].min())[0])
  count = int(kept[smallest])
  if images_per_class <= MAX_FILL_FACTOR * count:
    return None
  overfull = int(np.count_nonzero((kept > 0) & (images_per_class > MAX_FILL_FACTOR * kept)))
  others = (f" (and {overfull - 1} other class{'es' if overfull > 2 else ''})"
            if overfull > 1 else "")
  return (f"--images_per_class={images_per_class} would fill class "
          f"{_class_name(smallest, class_names)}{others} from {count} kept images to "
          f"{images_per_class}, about {images_per_class / count:.0f} copies of each; a class is "
          f"filled to at most {MAX_FILL_FACTOR}x its kept images: "
          f"--images_per_class={MAX_FILL_FACTOR * count} fits (--noduplicate_to_balance keeps "
          "short classes as they are)")


def check_images_per_class(rule, num_images, num_classes):
  """Before any work: refuses a target no class of `num_images` images can fill within
  MAX_FILL_FACTOR (a class keeps at most all of them), naming --images_per_class and each
  class's even share, `num_images // num_classes`. The exact check, per class, is
  `fill_limit_error` once the kept records are counted."""
  target = rule.images_per_class
  if target is None or not rule.duplicate or target <= MAX_FILL_FACTOR * num_images:
    return
  share = max(1, num_images // max(1, num_classes))
  raise ValueError(f"--images_per_class={target} is more than {MAX_FILL_FACTOR}x the "
                   f"{num_images} unlabeled images (a class is filled to at most "
                   f"{MAX_FILL_FACTOR}x its kept images): try --images_per_class={share}, an "
                   f"even share of them for each of {num_classes} classes")


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_freed_memory_promptly():
  """Pins glibc's mmap threshold at 128 KiB in this process, as MALLOC_MMAP_THRESHOLD_=131072
  does, so that NumPy's large arrays are mapped on their own and go back to the OS when freed.

  glibc otherwise raises the threshold after the first large free; the Selector's compaction
  buffers freed after that stay resident and peak RSS grows with the input (1.48x from 1M to 10M
  records at N=1,000, against 1.10x pinned: benchmarks/RESULTS.md). The price is page faults: the
  core runs at about half speed, still millions of records/s. For a process that filters (main.py
  --mode=filter): the setting is process-wide. A no-op without glibc.
  """
  try:
    ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
  except (OSError, AttributeError):
    pass


class Selector:
  """Streams (labels, confidences, record ids) chunks through the rule; `result()` applies it.

  Args:
    num_classes: number of classes C; labels outside [0, C) are invalid.
    rule: a `FilterRule`.
    compaction_buffer: a tuning knob, the smallest admitted backlog worth a compaction.

  Attributes:
    num_candidates: records held now (compacted candidates plus the admitted backlog).
    peak_candidates: the most records held at once, a chunk's admitted records included.
  """

  def __init__(self, num_classes, rule=FilterRule(), *,
               compaction_buffer=DEFAULT_COMPACTION_BUFFER):
    if not 1 <= int(num_classes) < 1 << 31:
      raise ValueError(f"num_classes must be in [1, 2**31), got {num_classes!r}")
    self._num_classes = int(num_classes)
    self._rule = rule
    self._threshold = _float32_at_least(rule.threshold)
    self._per_class = rule.images_per_class
    self._duplicate = rule.duplicate
    self._seed = rule.seed
    self._compaction_buffer = int(compaction_buffer)
    zeros = lambda: np.zeros(self._num_classes, np.int64)
    self._before, self._after, self._held = zeros(), zeros(), zeros()
    self._invalid_probability = 0
    self._invalid_label = 0
    # The N-th best (key, id) per class at the last compaction.
    self._cut_key = np.full(self._num_classes, _NO_CUTOFF, np.int64)
    self._cut_id = np.zeros(self._num_classes, np.int64)
    # Candidates as parallel lists of array parts: the compacted set first, then the backlog.
    self._key_parts, self._id_parts = [], []
    self._compacted = 0
    self.num_candidates = 0
    self.peak_candidates = 0
    self._finished = False

  def add(self, labels, confidences, record_ids):
    """Feeds one chunk: three equally long 1-D arrays. Record ids must be unique overall."""
    self._check_open()
    labels, confidences, ids = _as_chunk(labels, confidences, record_ids)
    label_ok = (labels >= 0) & (labels < self._num_classes)
    # NaN fails both comparisons, so it lands in the invalid count.
    probability_ok = (confidences >= 0) & (confidences < np.inf)
    self._invalid_label += int(np.count_nonzero(~label_ok))
    self._invalid_probability += int(np.count_nonzero(label_ok & ~probability_ok))
    labels, confidences, ids = _take((labels, confidences, ids), label_ok & probability_ok)
    self._before += np.bincount(labels, minlength=self._num_classes)
    if self._threshold > 0:
      labels, confidences, ids = _take((labels, confidences, ids),
                                       confidences >= self._threshold)
    self._after += np.bincount(labels, minlength=self._num_classes)
    keys = _sort_keys(labels, confidences)
    if self._per_class is not None:
      cut_key = self._cut_key[labels]
      admitted = (keys < cut_key) | ((keys == cut_key) & (ids < self._cut_id[labels]))
      keys, ids = keys[admitted], ids[admitted]
      self._held += np.bincount(labels[admitted], minlength=self._num_classes)
    if len(keys):
      self._key_parts.append(keys)
      self._id_parts.append(ids)
      self.num_candidates += len(keys)
    self.peak_candidates = max(self.peak_candidates, self.num_candidates)
    if self._per_class is not None and self._compaction_due():
      self._compact()

  def result(self):
    """Applies the rule to everything fed and returns the Selection; ends the stream."""
    self._check_open()
    if self._per_class is not None and np.any(self._held > self._per_class):
      self._compact()
    keys, ids = self._gather()  # Hands the candidates over, so they are not held twice.
    self._finished = True
    self._compacted = self.num_candidates = 0
    if np.any(ids[1:] <= ids[:-1]):  # Chunks fed in id order (the phase's) need no sort.
      order = np.argsort(ids, kind="stable")
      keys, ids = keys[order], ids[order]
      if np.any(ids[1:] == ids[:-1]):
        raise ValueError(f"record ids must be unique; {ids[1:][ids[1:] == ids[:-1]][0]} repeats")
    labels, confidences = _unpack_keys(keys)
    del keys
    kept = np.bincount(labels, minlength=self._num_classes)
    copies, with_copies = np.ones(len(ids), np.int32), kept.copy()
    if self._duplicate and self._per_class is not None:
      short = (kept > 0) & (kept < self._per_class)
      copies = _duplicate_to_target(labels, short, self._per_class, self._seed)
      with_copies[short] = self._per_class
    return Selection(
        record_ids=ids, labels=labels, confidences=confidences, copies=copies,
        before_threshold=self._before.copy(), after_threshold=self._after.copy(),
        kept_unique=kept, with_copies=with_copies,
        invalid_probability=self._invalid_probability, invalid_label=self._invalid_label,
        threshold=self._rule.threshold, images_per_class=self._per_class,
        duplicate=self._duplicate, seed=self._seed)

  def _check_open(self):
    if self._finished:
      raise RuntimeError("this Selector has returned its result; start a new one")

  def _compaction_due(self):
    backlog = self.num_candidates - self._compacted
    # Below the target nothing can be dropped, so compacting would only cost time.
    return (backlog >= max(self._compacted // 8, self._compaction_buffer)
            and bool(np.any(self._held > self._per_class)))

  def _gather(self):
    """Concatenates and releases the parts, one array at a time to keep the peak low."""
    keys, self._key_parts = _concatenate(self._key_parts), []
    ids, self._id_parts = _concatenate(self._id_parts), []
    return keys, ids

  def _compact(self):
    """Keeps the N best candidates per class (a mask, so arrival order survives)."""
    keys, ids = self._gather()
    counts, target = self._held, self._per_class
    over = np.flatnonzero(counts > target)
    starts = np.cumsum(counts) - counts
    # The N-th smallest key of each over-full class; classes within the target keep everything.
    sorted_keys = np.sort(keys)
    cut = np.full(self._num_classes, _NO_CUTOFF, np.int64)
    cut[over] = sorted_keys[starts[over] + target - 1]
    needed = np.zeros(self._num_classes, np.int64)
    needed[over] = target - (np.searchsorted(sorted_keys, cut[over]) - starts[over])
    del sorted_keys
    keep, tied = _compare_with_cut(keys, cut)
    # Records equal to the cut share label and confidence: the smallest ids fill the class.
    tied = tied[np.lexsort((ids[tied], keys[tied]))]
    tied_labels = keys[tied] >> _CONFIDENCE_BITS
    tied_counts = np.bincount(tied_labels, minlength=self._num_classes)
    tied_starts = np.cumsum(tied_counts) - tied_counts
    rank = np.arange(len(tied)) - tied_starts[tied_labels]
    keep[tied[rank < needed[tied_labels]]] = True
    self._cut_key[over] = cut[over]
    self._cut_id[over] = ids[tied[tied_starts[over] + needed[over] - 1]]
    self._key_parts = [keys[keep]]
    del keys
    self._id_parts = [ids[keep]]
    self._compacted = self.num_candidates = len(self._id_parts[0])
    self._held = np.minimum(counts, target)


def filter_and_balance(chunks, *, num_classes, rule=FilterRule()):
  """Applies `rule` (a `FilterRule`) to an iterable of (labels, confidences, record_ids) chunks,
  1-D array triples of C classes. Returns a Selection."""
  selector = Selector(num_classes, rule)
  for labels, confidences, record_ids in chunks:
    selector.add(labels, confidences, record_ids)
  return selector.result()


def _float32_at_least(threshold):
  """The smallest float32 >= threshold: comparing float32s with it is the exact comparison."""
  rounded = np.float32(threshold)
  return np.nextafter(rounded, np.float32(np.inf)) if float(rounded) < threshold else rounded


def _as_chunk(labels, confidences, record_ids):
  labels = np.asarray(labels)
  with np.errstate(over="ignore"):  # Values beyond float32 become inf, hence invalid.
    # Adding zero turns -0.0, whose sign bit would break the key order, into 0.0.
    confidences = np.asarray(confidences, np.float32) + np.float32(0)
  record_ids = np.asarray(record_ids)
  if not (labels.ndim == confidences.ndim == record_ids.ndim == 1
          and len(labels) == len(confidences) == len(record_ids)):
    raise ValueError(f"a chunk needs three equally long 1-D arrays, got shapes {labels.shape}, "
                     f"{confidences.shape}, {record_ids.shape}")
  for name, array in (("labels", labels), ("record_ids", record_ids)):
    if len(array) and not np.issubdtype(array.dtype, np.integer):
      raise TypeError(f"{name} must be integers, got {array.dtype}")
  return labels.astype(np.int64, copy=False), confidences, record_ids.astype(np.int64, copy=False)


def _concatenate(parts):
  if len(parts) == 1:
    return parts[0]
  return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _sort_keys(labels, confidences):
  inverted = _CONFIDENCE_MASK - confidences.view(np.int32)
  return (labels << _CONFIDENCE_BITS) | inverted.astype(np.int64)


def _compare_with_cut(keys, cut, block=1 << 18):
  """(keys < their class's cut as a mask, indices of keys equal to it), in bounded blocks."""
  below = np.empty(len(keys), bool)
  tied = []
  for start in range(0, len(keys), block):
    part = keys[start:start + block]
    part_cut = cut[part >> _CONFIDENCE_BITS]
    below[start:start + block] = part < part_cut
    tied.append(start + np.flatnonzero(part == part_cut))
  return below, np.concatenate(tied) if tied else np.zeros(0, np.int64)


def _take(arrays, mask):
  return tuple(a[mask] for a in arrays)


def _unpack_keys(keys, block=1 << 18):
  """(labels int32, confidences float32) from sort keys, in blocks to bound the temporaries."""
  labels, bits = np.empty(len(keys), np.int32), np.empty(len(keys), np.int32)
  for start in range(0, len(keys), block):
    part = keys[start:start + block]
    labels[start:start + block] = part >> _CONFIDENCE_BITS
    bits[start:start + block] = _CONFIDENCE_MASK - (part & _CONFIDENCE_MASK)
  return labels, bits.view(np.float32)


def _duplicate_to_target(labels, short, target, seed):
  """Copies per kept record (labels in id order) that fill each short class to `target`."""
  copies = np.ones(len(labels), np.int32)
  members = np.flatnonzero(short[labels])
  # Stable keeps id order within each class; NumPy radix-sorts 16-bit integers.
  narrow = np.int16 if len(short) <= np.iinfo(np.int16).max else np.int32
  members = members[np.argsort(labels[members].astype(narrow), kind="stable")]
  sizes = np.bincount(labels[members], minlength=len(short))
  starts = np.cumsum(sizes) - sizes
  for c in np.flatnonzero(short):
    in_class = members[starts[c]:starts[c] + sizes[c]]
    whole, remainder = divmod(target, len(in_class))
    copies[in_class] = whole
    extra = np.random.default_rng([seed, int(c)]).choice(len(in_class), remainder, replace=False)
    copies[in_class[extra]] += 1
  return copies
