"""What D and G minimise: every loss term, its weight and its switch.

L_D = adversarial + sentence(real) + word_region(real) [+ r1]
L_G = adversarial + sentence(fake) + word_region(fake) + image_d
      + image_pretrained

Each term has one name, used alike by its weight (config.loss_weights.NAME),
its metric key ('d_NAME' / 'g_NAME', plus '_acc' for a contrastive term's
top-1 accuracy) and this code. A weight of 0 switches a term off: it is not
computed. The loss arithmetic itself (hinge, NCE, word-region) is in
losses.py; this module picks the features each term compares. With hard
negative captions (config.hard_negative_words) the sentence and word-region
terms also score each image against its caption's one-word swaps
(text/hard_negatives.py).

Objectives run inside the per-device program of the sharded train step:
metrics are pmean'd over the mesh here, losses stay per-device values whose
gradients the train step pmeans (losses.py explains the convention).
"""

import dataclasses
from typing import Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from xmcgan_jax import config_base
from xmcgan_jax import losses
from xmcgan_jax import parallel

Metrics = Dict[str, jax.Array]
Batch = Mapping[str, jax.Array]
# {term name: (loss, top-1 accuracy or None)}.
Terms = Dict[str, Tuple[jax.Array, Optional[jax.Array]]]


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weight of each loss term (config.loss_weights; 0 = off).

  adversarial: hinge loss of D and of G.
  sentence: sentence-image NCE, on real images for D and fake images for G.
  word_region: word-region NCE, on real images for D and fake ones for G.
  image_d: NCE(v_fake, v_real) of D's pooled features, for G.
  image_pretrained: NCE of a frozen pretrained encoder's features of real and
    fake images, for G; needs an image encoder.
  r1: gamma of the R1 penalty on D, gamma / 2 * E ||dD(x)/dx||^2 over real
    images x in [0, 1] (Mescheder et al. 2018; not in the paper, off by
    default).
  """
  adversarial: float
  sentence: float
  word_region: float
  image_d: float
  image_pretrained: float
  r1: float = 0.0  # Runs saved before the field have no R1.


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The objectives' hyperparameters (config fields of the same names).

  weights: loss term weights and switches.
  temperature: of the sentence and image NCE losses.
  word_gammas: (gamma1, gamma2, gamma3) of the word-region loss.
  contrastive_negatives: 'global' (the whole global batch) or 'local' (this
    device's rows only, as the 2021 release).
  """
  weights: LossWeights
  temperature: float
  word_gammas: Tuple[float, float, float]
  contrastive_negatives: str

  def __post_init__(self):
    config_base.check_contrastive_negatives(self.contrastive_negatives)

  @property
  def negatives_axis(self) -> Optional[str]:
    """The mesh axis contrastive negatives are gathered over, or None."""
    return (parallel.DATA_AXIS if self.contrastive_negatives == 'global'
            else None)


def _nce(a: jax.Array, b: jax.Array, config: LossConfig,
         hard_negatives: Optional[jax.Array] = None,
         hard_valid: Optional[jax.Array] = None):
  return losses.contrastive_loss(a, b, temperature=config.temperature,
                                 axis_name=config.negatives_axis,
                                 with_accuracy=True,
                                 hard_negatives=hard_negatives,
                                 hard_valid=hard_valid)


def _sentence_nce(half, sub: Batch, config: LossConfig):
  """Sentence-image NCE of D's output on real or fake images; with hard
  negative captions in the batch, they are more negatives of each image."""
  return _nce(half.pooled, half.projection, config, half.hard_projection,
              sub.get('hard_valid'))


def _word_region_nce(regions: jax.Array, sub: Batch, config: LossConfig):
  gamma1, gamma2, gamma3 = config.word_gammas
  return losses.word_region_loss(regions, sub['word_emb'], sub['word_mask'],
                                 gamma1=gamma1, gamma2=gamma2, gamma3=gamma3,
                                 axis_name=config.negatives_axis,
                                 with_accuracy=True,
                                 hard_words=sub.get('hard_word_emb'),
                                 hard_mask=sub.get('hard_word_mask'),
                                 hard_valid=sub.get('hard_valid'))


def split_real_fake(out, b: int):
  """Splits D's output on [real; fake] into its two halves."""
  half = lambda rows: type(out)(*(None if x is None else x[rows] for x in out))
  return half(slice(None, b)), half(slice(b, None))


def _weighted_total(terms: Terms, weights: LossWeights, prefix: str
                    ) -> jax.Array:
  """sum of weight * loss over the terms ('d_sentence' -> weights.sentence)."""
  return sum(getattr(weights, name[len(prefix):]) * loss
             for name, (loss, _) in terms.items())


def _metrics(terms: Terms, extra: Metrics) -> Metrics:
  """{name: (loss, accuracy)} -> {name: loss, name_acc: accuracy} + extra,
  each averaged over the mesh."""
  pmean = lambda x: jax.lax.pmean(x, parallel.DATA_AXIS)
  out = {k: pmean(v) for k, v in extra.items()}
  for name, (loss, accuracy) in terms.items():
    out[name] = pmean(loss)
    if accuracy is not None:
      out[name + '_acc'] = pmean(accuracy)
  return out


def d_objective(out, sub: Batch, config: LossConfig
                ) -> Tuple[jax.Array, Metrics]:
  """L_D: adversarial, plus sentence and word-region NCE on real images.

  Args:
    out: D's output (a DiscOutput) on [real; fake].
    sub: the sub-batch ('image', 'word_emb', 'word_mask'; with hard negative
      captions 'hard_word_emb', 'hard_word_mask', 'hard_valid').
    config: the objectives' hyperparameters.

  Returns:
    (weighted loss of this device's rows, metrics of the global batch).
  """
  w = config.weights
  real, fake = split_real_fake(out, sub['image'].shape[0])
  terms = {'d_adversarial': (losses.hinge_d(real.logits, fake.logits), None)}
  if w.sentence:
    terms['d_sentence'] = _sentence_nce(real, sub, config)
  if w.word_region:
    terms['d_word_region'] = _word_region_nce(real.regions, sub, config)
  metrics = _metrics(terms, {'real_logits': jnp.mean(real.logits),
                             'fake_logits': jnp.mean(fake.logits)})
  return _weighted_total(terms, w, 'd_'), metrics


def d_r1_objective(real_logits: Callable[[jax.Array], jax.Array],
                   images: jax.Array, config: LossConfig
                   ) -> Tuple[jax.Array, Metrics]:
  """The R1 penalty of D: gamma / 2 * mean over real images of
  ||dD(x)/dx||^2, a term of L_D kept apart from d_objective because it
  differentiates D twice (the train step takes its D gradient separately).

  Args:
    real_logits: D's logits as a function of this device's real images,
      with their captions and D's parameters bound.
    images: this device's real images (N, H, W, 3) in [0, 1].
    config: the objectives' hyperparameters (weights.r1 = gamma).

  Returns:
    (gamma-weighted penalty of this device's rows, {'d_r1': the penalty
    without gamma, averaged over the mesh}).
  """
  grads = jax.grad(lambda x: jnp.sum(real_logits(x)))(images)
  penalty = 0.5 * jnp.mean(jnp.sum(jnp.square(grads), axis=(1, 2, 3)))
  return (config.weights.r1 * penalty,
          {'d_r1': jax.lax.pmean(penalty, parallel.DATA_AXIS)})


def g_objective(out, sub: Batch, fake_images: jax.Array, config: LossConfig,
                pretrained: Optional[Callable[[jax.Array], jax.Array]] = None
                ) -> Tuple[jax.Array, Metrics]:
  """L_G: adversarial, sentence and word-region NCE on fake images, image NCE
  of D's features, and image NCE of a frozen encoder's features.

  Args:
    out: D's output (a DiscOutput) on [real; fake].
    sub: the sub-batch.
    fake_images: G's images of the sub-batch (the pretrained term's input).
    config: the objectives' hyperparameters.
    pretrained: the frozen image encoder's feature function, or None (the
      image_pretrained term is then off).

  Returns:
    (weighted loss of this device's rows, metrics of the global batch).
  """
  w = config.weights
  real, fake = split_real_fake(out, sub['image'].shape[0])
  terms = {'g_adversarial': (losses.hinge_g(fake.logits), None)}
  if w.sentence:
    terms['g_sentence'] = _sentence_nce(fake, sub, config)
  if w.word_region:
    terms['g_word_region'] = _word_region_nce(fake.regions, sub, config)
  if w.image_d:
    terms['g_image_d'] = _nce(fake.pooled, real.pooled, config)
  if pretrained is not None and w.image_pretrained:
    # Two calls, not one on the concatenation: the real half is a constant
    # of G, so its forward needs no backward (one call would compute the
    # input gradient of the whole batch through the encoder).
    real_features = jax.lax.stop_gradient(pretrained(sub['image']))
    terms['g_image_pretrained'] = _nce(real_features, pretrained(fake_images),
                                       config)
  return _weighted_total(terms, w, 'g_'), _metrics(terms, {})
