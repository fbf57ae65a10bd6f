"""Adversarial and contrastive losses of XMC-GAN, float32 whatever the inputs.

Cross-device negatives. With `axis_name` (inside `jax.shard_map`), each device
holds b rows of a global batch of B = n_devices * b; the contrastive losses then
use all B rows as negatives. Each device computes its (b x B) block of the score
matrix against the all-gathered other side, then all-gathers those small blocks
to score the other direction. Gradients flow through both gathers.

Value and gradient convention. The value returned on every device is the
global-batch loss. Its gradient is that of this device's rows' mean (with global
negatives), so `pmean` of the per-device parameter gradients, as the train step
does, equals the gradient of the global-batch loss: the same convention as a
per-device mean loss such as `hinge_d`.
"""

from typing import Optional, Tuple, Union

import jax
import jax.numpy as jnp

_f32 = lambda x: jnp.asarray(x, jnp.float32)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """Scales `x` to unit l2 norm along `axis` (x * rsqrt(max(|x|^2, eps)))."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps))


def hinge_d(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Discriminator hinge loss: mean relu(1 - real) + mean relu(1 + fake)."""
  return (jnp.mean(jax.nn.relu(1.0 - _f32(real_logits)))
          + jnp.mean(jax.nn.relu(1.0 + _f32(fake_logits))))


def hinge_g(fake_logits: jax.Array) -> jax.Array:
  """Generator hinge loss: -mean fake."""
  return -jnp.mean(_f32(fake_logits))


def _gather_rows(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  if axis_name is None:
    return x
  return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def _row_offset(local_rows: int, axis_name: Optional[str]) -> jax.Array:
  if axis_name is None:
    return jnp.int32(0)
  return jax.lax.axis_index(axis_name) * local_rows


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-row softmax cross-entropy with integer labels."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def _symmetric_ce(scores: jax.Array, axis_name: Optional[str],
                  extra_scores: Optional[jax.Array] = None
                  ) -> Tuple[jax.Array, jax.Array]:
  """Two-way cross-entropy on the diagonal of a (possibly sharded) score matrix.

  Args:
    scores: (b, B) scores of this device's rows of side A (e.g. images) against
      all B items of side B (e.g. captions); row i's positive is global item
      axis_index * b + i.
    axis_name: mesh axis the batch is sharded over, or None.
    extra_scores: (b, K) more B-side negatives of each A row only (hard
      negatives with no A item of their own), or None.

  Returns:
    (loss, accuracy): the summed A->B and B->A mean cross-entropies (global
    value, local-mean gradient; see the module docstring) and the top-1
    accuracy of both directions together.
  """
  b = scores.shape[0]
  offset = _row_offset(b, axis_name)
  labels = offset + jnp.arange(b)
  full = _gather_rows(scores, axis_name)  # (B, B): rows A, columns B.
  # Rows of this device's B items against every A item.
  transposed = jax.lax.dynamic_slice_in_dim(full, offset, b, axis=1).T
  rows = (scores if extra_scores is None
          else jnp.concatenate([scores, extra_scores], axis=-1))
  local = (jnp.mean(_cross_entropy(rows, labels))
           + jnp.mean(_cross_entropy(transposed, labels)))
  correct = ((jnp.argmax(rows, -1) == labels).mean()
             + (jnp.argmax(transposed, -1) == labels).mean()) / 2
  if axis_name is None:
    return local, correct
  global_loss = jax.lax.pmean(local, axis_name)
  loss = local + jax.lax.stop_gradient(global_loss - local)
  return loss, jax.lax.pmean(correct, axis_name)


def contrastive_loss(a: jax.Array, b: jax.Array, *, temperature: float = 0.1,
                     axis_name: Optional[str] = None,
                     with_accuracy: bool = False,
                     hard_negatives: Optional[jax.Array] = None,
                     hard_valid: Optional[jax.Array] = None
                     ) -> Union[jax.Array, Tuple[jax.Array, jax.Array]]:
  """NCE between paired rows of `a` and `b`, both directions summed.

  Args:
    a: (b, D) features; row i is paired with row i of `b`.
    b: (b, D') with D' == D.
    temperature: softmax temperature of the cosine similarities.
    axis_name: mesh axis for global negatives (inside shard_map), or None for
      the rows of this call only.
    with_accuracy: also return the top-1 retrieval accuracy.
    hard_negatives: (b, K, D) more negatives of each row of `a` on the `b`
      side (a->b direction only; they have no `a` item to retrieve them), or
      None.
    hard_valid: (b, K) bool, False where a hard negative must be left out;
      None = all valid.

  Returns:
    The loss (float32 scalar), and the accuracy if `with_accuracy`.
  """
  a_hat = l2_normalize(_f32(a))
  b_hat = l2_normalize(_f32(b))
  scores = a_hat @ _gather_rows(b_hat, axis_name).T / temperature
  extra = None
  if hard_negatives is not None:
    extra = jnp.einsum('bd,bkd->bk', a_hat,
                       l2_normalize(_f32(hard_negatives))) / temperature
    if hard_valid is not None:
      # A large finite value, not -inf: exp() gives 0 and no NaN gradient.
      extra = jnp.where(hard_valid, extra, -1e9)
  loss, accuracy = _symmetric_ce(scores, axis_name, extra)
  return (loss, accuracy) if with_accuracy else loss


def word_region_scores(regions: jax.Array, words: jax.Array,
                       word_mask: jax.Array, *, gamma1: float = 5.0,
                       gamma2: float = 5.0) -> jax.Array:
  """DAMSM matching scores S[i, j] of image i's regions and caption j's words.

  Each real word of caption j attends over image i's l2-normalised regions
  (softmax over regions of gamma1 * cosine); S[i, j] =
  log(sum over real words t of exp(gamma2 * cos(w_t, c_t))) / gamma2.

  Args:
    regions: (n_img, R, E).
    words: (n_cap, T, E).
    word_mask: (n_cap, T) bool, True on real tokens.
    gamma1, gamma2: attention and aggregation sharpness.

  Returns:
    (n_img, n_cap) float32 scores.
  """
  return _damsm_scores(l2_normalize(_f32(regions)),
                       l2_normalize(_f32(words)), word_mask, gamma1, gamma2,
                       own_captions=False)


def _damsm_scores(r_hat: jax.Array, w_hat: jax.Array, word_mask: jax.Array,
                  gamma1: float, gamma2: float, own_captions: bool
                  ) -> jax.Array:
  """word_region_scores of l2-normalised features.

  Args:
    r_hat: (n, R, E) unit region features.
    w_hat: unit word features: (m, T, E), scored against every image, or
      with own_captions (n, m, T, E), image i against its own m captions.
    word_mask: (m, T), or with own_captions (n, m, T).
    gamma1, gamma2: see word_region_scores.
    own_captions: which of the two layouts w_hat has.

  Returns:
    (n, m) float32 scores.
  """
  cos_rw = jnp.einsum('ire,ijte->ijtr' if own_captions else 'ire,jte->ijtr',
                      r_hat, w_hat)
  attn = jax.nn.softmax(gamma1 * cos_rw, axis=-1)  # Over regions.
  context = jnp.einsum('ijtr,ire->ijte', attn, r_hat)
  # cos(w_t, c_t) = (c_t . w_t) / |c_t| with c_t . w_t = sum_r attn * cos_rw:
  # equal to l2_normalize(context) . w_hat (its eps included) without a
  # product over the words broadcast to every image (~10% of the term).
  norm = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(context), -1), 1e-12))
  cos_wc = jnp.sum(attn * cos_rw, axis=-1) * norm  # (i, j, t)
  mask = word_mask if own_captions else word_mask[None]
  logits = jnp.where(mask, gamma2 * cos_wc, -jnp.inf)
  return jax.nn.logsumexp(logits, axis=-1) / gamma2


def word_region_loss(regions: jax.Array, words: jax.Array,
                     word_mask: jax.Array, *, gamma1: float = 5.0,
                     gamma2: float = 5.0, gamma3: float = 50.0,
                     axis_name: Optional[str] = None,
                     with_accuracy: bool = False,
                     hard_words: Optional[jax.Array] = None,
                     hard_mask: Optional[jax.Array] = None,
                     hard_valid: Optional[jax.Array] = None
                     ) -> Union[jax.Array, Tuple[jax.Array, jax.Array]]:
  """Word-region contrastive loss (AttnGAN DAMSM form), both directions summed.

  Args:
    regions: (b, R, E) image region features; image i matches caption i.
    words: (b, T, E) word features.
    word_mask: (b, T) bool, True on real tokens (padding is excluded).
    gamma1, gamma2: see `word_region_scores`; gamma3 scales the logits.
    axis_name: mesh axis for global negatives, or None.
    with_accuracy: also return the top-1 retrieval accuracy.
    hard_words: (b, K, T, E) word features of more negative captions of each
      image (image-to-caption direction only), or None.
    hard_mask: (b, K, T) their token masks.
    hard_valid: (b, K) bool, False where a hard negative must be left out;
      None = all valid.

  Returns:
    The loss (float32 scalar), and the accuracy if `with_accuracy`.
  """
  r_hat = l2_normalize(_f32(regions))  # Once for both sets of captions.
  all_words = l2_normalize(_f32(_gather_rows(words, axis_name)))
  all_mask = _gather_rows(word_mask, axis_name)
  scores = gamma3 * _damsm_scores(r_hat, all_words, all_mask, gamma1, gamma2,
                                  own_captions=False)
  extra = None
  if hard_words is not None:
    # Image i against its own K negatives only: (b, K). One batched einsum,
    # not a vmap of word_region_scores: 1.5x faster for the whole term with
    # 5 negatives on XLA:CPU (benchmarks/README).
    extra = gamma3 * _damsm_scores(r_hat, l2_normalize(_f32(hard_words)),
                                   hard_mask, gamma1, gamma2,
                                   own_captions=True)
    if hard_valid is not None:
      extra = jnp.where(hard_valid, extra, -1e9)
  loss, accuracy = _symmetric_ce(scores, axis_name, extra)
  return (loss, accuracy) if with_accuracy else loss
