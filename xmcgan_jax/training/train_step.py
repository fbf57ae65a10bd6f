"""The train state and the one compiled XMC-GAN train step.

One call of the step is one generator update. The batch carries
`d_steps_per_g_step` sub-batches on a leading axis: the first ones give D-only
updates; the last gives a joint sub-step in which one G and D forward pass is
pulled back twice, once for dL_D/dD and once for dL_G/dG, and both networks
are updated (as the 2021 release; the G gradient sees D after all but the last
of its updates in this step). EMA of the G parameters follows each G update.

The step is `jax.jit` over `jax.shard_map` on the 1-D 'data' mesh: state
replicated and donated, batch sharded over its batch axis, gradients pmean'd.
The noise z is drawn for the global batch from (state.rng, state.step) outside
the shard_map and sharded with the batch, so the result does not depend on the
number of devices.
"""

import dataclasses
import functools
from typing import (Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple,
                    Union)

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from xmcgan_jax import losses
from xmcgan_jax import parallel
from xmcgan_jax.models import generator as generator_lib

Params = Any
Batch = Mapping[str, jax.Array]
Metrics = Dict[str, jax.Array]
# (frozen encoder params, images in [0, 1]) -> (N, F) features.
ImageEncoderFn = Callable[[Any, jax.Array], jax.Array]

# (frozen text encoder params, token ids, token mask) -> (words, sentence).
TextEncoderFn = Callable[[Any, jax.Array, jax.Array],
                         Tuple[jax.Array, jax.Array]]

# Batch keys with precomputed text features, and with token ids.
BATCH_KEYS = ('image', 'sentence_emb', 'word_emb', 'word_mask')
TOKEN_BATCH_KEYS = ('image', 'token_ids', 'token_mask')


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weight of each loss term; 0 switches the term off (it is not computed).

  adversarial: hinge loss of D and of G.
  sentence: sentence-image NCE, on real images for D and fake images for G.
  word: word-region NCE, on real images for D and fake images for G.
  image_d: NCE(v_fake, v_real) of D's pooled features, for G.
  image_pretrained: NCE of a frozen pretrained encoder's features of real and
    fake images, for G; needs an image encoder.
  """
  adversarial: float = 1.0
  sentence: float = 1.0
  word: float = 1.0
  image_d: float = 1.0
  image_pretrained: float = 1.0


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Hyperparameters of the train step.

  d_steps_per_g_step: sub-batches per step (D updates per G update).
  contrastive_negatives: 'global' (the whole global batch) or 'local' (this
    device's rows only, as the 2021 release).
  bn_group: generator BatchNorm statistics over 'device', 'global', or an int
    number of examples per group (a multiple of the per-device batch).
  ema_decay: decay of the EMA generator parameters.
  temperature: of the sentence and image NCE losses.
  word_gammas: (gamma1, gamma2, gamma3) of the word-region loss.
  weights: loss term weights and switches.
  """
  d_steps_per_g_step: int = 2
  contrastive_negatives: str = 'global'
  bn_group: Union[str, int] = 'device'
  ema_decay: float = 0.999
  temperature: float = 0.1
  word_gammas: Tuple[float, float, float] = (5.0, 5.0, 50.0)
  weights: LossWeights = LossWeights()

  def __post_init__(self):
    if self.d_steps_per_g_step < 1:
      raise ValueError('d_steps_per_g_step must be >= 1, got '
                       f'{self.d_steps_per_g_step}.')
    if self.contrastive_negatives not in ('global', 'local'):
      raise ValueError("contrastive_negatives must be 'global' or 'local', got "
                       f'{self.contrastive_negatives!r}.')
    if not (self.bn_group in ('device', 'global') or
            (isinstance(self.bn_group, int) and self.bn_group > 0)):
      raise ValueError("bn_group must be 'device', 'global' or a positive int, "
                       f'got {self.bn_group!r}.')


class TrainState(flax.struct.PyTreeNode):
  """Everything that training updates; replicated over the mesh."""
  step: jax.Array
  rng: jax.Array  # Raw uint32 key; z of step s comes from fold_in(rng, s).
  g_params: Params
  g_state: Params  # Generator BatchNorm running statistics.
  ema_g_params: Params
  d_params: Params
  d_state: Params  # Discriminator spectral-norm u vectors.
  g_opt_state: optax.OptState
  d_opt_state: optax.OptState


def make_optimizers(g_lr: float = 1e-4, d_lr: float = 4e-4, b1: float = 0.5,
                    b2: float = 0.999
                    ) -> Tuple[optax.GradientTransformation,
                               optax.GradientTransformation]:
  """The two Adam optimizers (TTUR learning rates) for G and D."""
  return optax.adam(g_lr, b1=b1, b2=b2), optax.adam(d_lr, b1=b1, b2=b2)


def create_train_state(rng: jax.Array, generator: nn.Module,
                       discriminator: nn.Module,
                       g_tx: optax.GradientTransformation,
                       d_tx: optax.GradientTransformation,
                       mesh: Optional[Mesh] = None) -> TrainState:
  """Initialises G, D, both optimizers and the EMA copy.

  Args:
    rng: a raw uint32 PRNG key (jax.random.PRNGKey).
    generator, discriminator: the (unbound) modules.
    g_tx, d_tx: their optimizers.
    mesh: if given, the state is created replicated on it.

  Returns:
    The initial TrainState.
  """

  def init(rng):
    g_rng, d_rng, step_rng = jax.random.split(rng, 3)
    z, sentence, words, mask = generator_lib.dummy_inputs(generator)
    g_vars = generator.init(g_rng, z, sentence, words, mask, train=False)
    size = discriminator.image_size
    images = jnp.zeros((z.shape[0], size, size, 3), jnp.float32)
    d_vars = discriminator.init(d_rng, images, sentence, train=False)
    return TrainState(
        step=jnp.zeros((), jnp.int32), rng=step_rng,
        g_params=g_vars['params'], g_state=g_vars['batch_stats'],
        ema_g_params=g_vars['params'], d_params=d_vars['params'],
        d_state=d_vars['spectral_norm_stats'],
        g_opt_state=g_tx.init(g_vars['params']),
        d_opt_state=d_tx.init(d_vars['params']))

  if mesh is None:
    return jax.jit(init)(rng)
  return jax.jit(init, out_shardings=NamedSharding(mesh, parallel.REPLICATED))(
      rng)


def _bn_axis(bn_group: Union[str, int], local_batch: int, n_devices: int
             ) -> Tuple[Optional[str], Optional[int]]:
  """(axis_name, devices per group) of the generator BatchNorm."""
  if bn_group == 'device':
    return None, None
  if bn_group == 'global':
    return parallel.DATA_AXIS, None
  if bn_group % local_batch or n_devices % (bn_group // local_batch):
    raise ValueError(
        f'bn_group={bn_group} examples must be a multiple of the per-device '
        f'batch {local_batch} and split the {n_devices} devices into groups.')
  return parallel.DATA_AXIS, bn_group // local_batch


def _check_batch(batch: Batch, generator: nn.Module, d_steps: int,
                 mesh: Mesh, keys: Tuple[str, ...]) -> None:
  missing = [k for k in keys if k not in batch]
  if missing:
    raise ValueError(f'Batch lacks {missing}; it has {sorted(batch)}.')
  lead = batch['image'].shape[:2]
  if batch['image'].ndim != 5 or lead[0] != d_steps:
    raise ValueError(
        f'batch["image"] has shape {batch["image"].shape}; expected '
        f'(d_steps_per_g_step={d_steps}, batch, H, W, 3).')
  size = generator.image_size
  want = {'image': lead + (size, size, 3),
          'sentence_emb': lead + (generator.text_dim,),
          'word_emb': lead + (generator.max_tokens, generator.text_dim),
          'word_mask': lead + (generator.max_tokens,),
          'token_ids': lead + (generator.max_tokens,),
          'token_mask': lead + (generator.max_tokens,)}
  for key in keys:
    shape = want[key]
    if tuple(batch[key].shape) != shape:
      raise ValueError(f'batch[{key!r}] has shape {tuple(batch[key].shape)}, '
                       f'expected {shape}.')
  parallel.check_batch_divisible(lead[1], mesh)


class DiscriminatorState(NamedTuple):
  """What a D update changes: parameters, spectral-norm vectors, Adam."""
  params: Params
  state: Params
  opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class Networks:
  """G (BatchNorm axis set for the mesh) and D, applied in training mode."""
  generator: nn.Module
  discriminator: nn.Module

  def generate(self, g_params: Params, g_state: Params, z: jax.Array,
               sub: Batch) -> Tuple[jax.Array, Params]:
    """(fake images, G's new BatchNorm statistics) of one sub-batch."""
    images, new_vars = self.generator.apply(
        {'params': g_params, 'batch_stats': g_state}, z, sub['sentence_emb'],
        sub['word_emb'], sub['word_mask'], train=True, mutable=['batch_stats'])
    return images, new_vars['batch_stats']

  def discriminate(self, d_params: Params, d_state: Params, real: jax.Array,
                   fake: jax.Array, sentence: jax.Array):
    """(D's output on [real; fake], D's new spectral-norm vectors)."""
    out, new_vars = self.discriminator.apply(
        {'params': d_params, 'spectral_norm_stats': d_state},
        jnp.concatenate([real, fake]), jnp.concatenate([sentence, sentence]),
        train=True, mutable=['spectral_norm_stats'])
    return out, new_vars['spectral_norm_stats']


# Loss terms --------------------------------------------------------------
# Each objective maps D's output on [real; fake] and the sub-batch to
# (weighted loss, metrics). Metrics are pmean'd over the mesh; the losses stay
# per-device values whose gradients the sub-steps pmean (losses.py).


def _negatives_axis(config: StepConfig) -> Optional[str]:
  return (parallel.DATA_AXIS if config.contrastive_negatives == 'global'
          else None)


def _nce(a: jax.Array, b: jax.Array, config: StepConfig):
  return losses.contrastive_loss(a, b, temperature=config.temperature,
                                 axis_name=_negatives_axis(config),
                                 with_accuracy=True)


def _word_nce(regions: jax.Array, sub: Batch, config: StepConfig):
  gamma1, gamma2, gamma3 = config.word_gammas
  return losses.word_region_loss(regions, sub['word_emb'], sub['word_mask'],
                                 gamma1=gamma1, gamma2=gamma2, gamma3=gamma3,
                                 axis_name=_negatives_axis(config),
                                 with_accuracy=True)


def _weighted_total(terms, weights: Mapping[str, float]) -> jax.Array:
  return sum(weights[name] * loss for name, (loss, _) in terms.items())


def d_objective(out, sub: Batch, config: StepConfig
                ) -> Tuple[jax.Array, Metrics]:
  """L_D: hinge, plus the sentence and word-region NCE on real images."""
  w = config.weights
  real, fake = _split_real_fake(out, sub['image'].shape[0])
  terms = {'d_adv': (losses.hinge_d(real.logits, fake.logits), None)}
  if w.sentence:
    terms['d_sentence'] = _nce(real.pooled, real.projection, config)
  if w.word:
    terms['d_word'] = _word_nce(real.regions, sub, config)
  total = _weighted_total(terms, {'d_adv': w.adversarial,
                                  'd_sentence': w.sentence, 'd_word': w.word})
  pmean = lambda x: jax.lax.pmean(x, parallel.DATA_AXIS)
  metrics = {'real_logits': pmean(jnp.mean(real.logits)),
             'fake_logits': pmean(jnp.mean(fake.logits))}
  return total, _flatten(terms, metrics)


def g_objective(out, sub: Batch, fake_images: jax.Array, config: StepConfig,
                pretrained: Optional[Callable[[jax.Array], jax.Array]] = None
                ) -> Tuple[jax.Array, Metrics]:
  """L_G: hinge, sentence and word-region NCE on fake images, image NCE of
  D's features, and image NCE of a frozen encoder's (`pretrained`, or off)."""
  w = config.weights
  real, fake = _split_real_fake(out, sub['image'].shape[0])
  terms = {'g_adv': (losses.hinge_g(fake.logits), None)}
  if w.sentence:
    terms['g_sentence'] = _nce(fake.pooled, fake.projection, config)
  if w.word:
    terms['g_word'] = _word_nce(fake.regions, sub, config)
  if w.image_d:
    terms['g_image_d'] = _nce(fake.pooled, real.pooled, config)
  if pretrained is not None:
    # Two calls, not one on the concatenation: the real half is a constant
    # of G, so its forward needs no backward (one call would compute the
    # input gradient of the whole batch through the encoder).
    real_features = jax.lax.stop_gradient(pretrained(sub['image']))
    terms['g_image_pretrained'] = _nce(real_features, pretrained(fake_images),
                                       config)
  total = _weighted_total(terms, {
      'g_adv': w.adversarial, 'g_sentence': w.sentence, 'g_word': w.word,
      'g_image_d': w.image_d, 'g_image_pretrained': w.image_pretrained})
  return total, _flatten(terms, {})


# Sub-steps ---------------------------------------------------------------


def _apply_d_update(d_tx: optax.GradientTransformation,
                    d: DiscriminatorState, new_d_state: Params,
                    d_loss: jax.Array, d_grads: Params, metrics: Metrics
                    ) -> Tuple[DiscriminatorState, Metrics]:
  """Adam on pmean'd D gradients; the sub-step's D metrics."""
  d_grads = jax.lax.pmean(d_grads, parallel.DATA_AXIS)
  updates, opt_state = d_tx.update(d_grads, d.opt_state, d.params)
  new = DiscriminatorState(optax.apply_updates(d.params, updates),
                           new_d_state, opt_state)
  return new, dict(metrics, d_loss=jax.lax.pmean(d_loss, parallel.DATA_AXIS),
                   d_grad_norm=optax.tree.norm(d_grads))


def d_only_substep(nets: Networks, d_tx: optax.GradientTransformation,
                   config: StepConfig, g_params: Params, g_state: Params,
                   d: DiscriminatorState, sub: Batch, z: jax.Array
                   ) -> Tuple[DiscriminatorState, Metrics]:
  """One D update on a sub-batch against G's (fixed) current samples.

  G's BatchNorm statistics from this forward are discarded.
  """
  fake = jax.lax.stop_gradient(nets.generate(g_params, g_state, z, sub)[0])

  def loss_fn(d_params):
    out, new_d_state = nets.discriminate(d_params, d.state, sub['image'],
                                         fake, sub['sentence_emb'])
    loss, metrics = d_objective(out, sub, config)
    return loss, (metrics, new_d_state)

  (d_loss, (metrics, new_d_state)), d_grads = jax.value_and_grad(
      loss_fn, has_aux=True)(d.params)
  return _apply_d_update(d_tx, d, new_d_state, d_loss, d_grads, metrics)


def joint_substep(nets: Networks, g_tx: optax.GradientTransformation,
                  d_tx: optax.GradientTransformation, config: StepConfig,
                  state: TrainState, d: DiscriminatorState, sub: Batch,
                  z: jax.Array,
                  pretrained: Optional[Callable[[jax.Array], jax.Array]]):
  """One G and D forward pulled back twice (dL_D/dD, dL_G/dG); both update.

  Returns:
    (g_params, g_opt_state, g_state, d, d_metrics, g_metrics).
  """

  def losses_of(g_params, d_params):
    fake, new_g_state = nets.generate(g_params, state.g_state, z, sub)
    out, new_d_state = nets.discriminate(d_params, d.state, sub['image'],
                                         fake, sub['sentence_emb'])
    d_loss, d_metrics = d_objective(out, sub, config)
    g_loss, g_metrics = g_objective(out, sub, fake, config, pretrained)
    return (d_loss, g_loss), (d_metrics, g_metrics, new_g_state, new_d_state)

  (d_loss, g_loss), pullback, aux = jax.vjp(losses_of, state.g_params,
                                            d.params, has_aux=True)
  d_metrics, g_metrics, g_state, new_d_state = aux
  one, zero = jnp.ones_like(d_loss), jnp.zeros_like(d_loss)
  d_grads = pullback((one, zero))[1]
  g_grads = jax.lax.pmean(pullback((zero, one))[0], parallel.DATA_AXIS)
  d, d_metrics = _apply_d_update(d_tx, d, new_d_state, d_loss, d_grads,
                                 d_metrics)
  updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state,
                                     state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  g_metrics = dict(g_metrics, g_loss=jax.lax.pmean(g_loss, parallel.DATA_AXIS),
                   g_grad_norm=optax.tree.norm(g_grads))
  return g_params, g_opt_state, g_state, d, d_metrics, g_metrics


def ema_update(ema_params: Params, params: Params, decay: float) -> Params:
  """decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema_params,
                      params)


def _per_device_step(nets: Networks, g_tx, d_tx, config: StepConfig,
                     state: TrainState, batch: Batch, z: jax.Array,
                     pretrained) -> Tuple[TrainState, Metrics]:
  """The step on this device's rows: D-only sub-steps, the joint one, EMA."""
  sub = lambda k: jax.tree.map(lambda x: x[k], batch)
  d = DiscriminatorState(state.d_params, state.d_state, state.d_opt_state)
  d_metrics = []
  for k in range(config.d_steps_per_g_step - 1):
    d, metrics = d_only_substep(nets, d_tx, config, state.g_params,
                                state.g_state, d, sub(k), z[k])
    d_metrics.append(metrics)
  k = config.d_steps_per_g_step - 1
  g_params, g_opt_state, g_state, d, metrics, g_metrics = joint_substep(
      nets, g_tx, d_tx, config, state, d, sub(k), z[k], pretrained)
  d_metrics.append(metrics)
  out_metrics = jax.tree.map(lambda *xs: sum(xs) / len(xs), *d_metrics)
  out_metrics.update(g_metrics)
  new_state = state.replace(
      step=state.step + 1, g_params=g_params,
      # Per-device (or per-group) running statistics differ; average them
      # so the replicated state is one well-defined value.
      g_state=jax.lax.pmean(g_state, parallel.DATA_AXIS),
      ema_g_params=ema_update(state.ema_g_params, g_params, config.ema_decay),
      d_params=d.params, d_state=d.state, g_opt_state=g_opt_state,
      d_opt_state=d.opt_state)
  return new_state, {k: v.astype(jnp.float32) for k, v in out_metrics.items()}


def make_train_step(generator: nn.Module, discriminator: nn.Module,
                    g_tx: optax.GradientTransformation,
                    d_tx: optax.GradientTransformation, mesh: Mesh,
                    config: StepConfig = StepConfig(),
                    image_encoder: Optional[ImageEncoderFn] = None,
                    text_encoder: Optional[TextEncoderFn] = None
                    ) -> Callable[..., Tuple[TrainState, Metrics]]:
  """Builds the compiled train step.

  Args:
    generator, discriminator: the modules (G's BatchNorm axis is set here).
    g_tx, d_tx: optimizers matching the state's optimizer states.
    mesh: the 1-D data mesh.
    config: step hyperparameters.
    image_encoder: frozen pretrained image feature function for the
      `image_pretrained` term, called with `frozen['image_encoder']`.
    text_encoder: frozen text encoder run inside the step on the batch's
      token ids, called with `frozen['text_encoder']`. Without it the batch
      carries precomputed text features.

  Returns:
    step(state, batch, frozen=None) -> (new_state, metrics). `batch` maps
    TOKEN_BATCH_KEYS (with a text encoder) or BATCH_KEYS (without) to arrays
    shaped (d_steps_per_g_step, global_batch, ...);
    `frozen` holds the parameters of frozen encoders. The state is donated.
    Metrics are float32 scalars of the global batch.
  """
  use_pretrained = bool(config.weights.image_pretrained) and (
      image_encoder is not None)
  n_devices = mesh.shape[parallel.DATA_AXIS]

  def per_device(state: TrainState, batch: Batch, z: jax.Array, frozen):
    if text_encoder is not None:
      batch = dict(batch, **_encode_text(text_encoder, frozen['text_encoder'],
                                         batch['token_ids'],
                                         batch['token_mask']))
    bn_axis, bn_size = _bn_axis(config.bn_group, batch['image'].shape[1],
                                n_devices)
    nets = Networks(generator.clone(bn_axis_name=bn_axis,
                                    bn_group_size=bn_size), discriminator)
    pretrained = (functools.partial(image_encoder, frozen['image_encoder'])
                  if use_pretrained else None)
    return _per_device_step(nets, g_tx, d_tx, config, state, batch, z,
                            pretrained)

  sharded = jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(parallel.REPLICATED, parallel.BATCH_SPEC, parallel.BATCH_SPEC,
                parallel.REPLICATED),
      out_specs=(parallel.REPLICATED, parallel.REPLICATED),
      # Per-device semantics as documented in losses.py: replicated inputs are
      # plain per-device values and we pmean gradients ourselves.
      check_vma=False)
  keys = BATCH_KEYS if text_encoder is None else TOKEN_BATCH_KEYS
  d_steps = config.d_steps_per_g_step

  def step(state: TrainState, batch: Batch, frozen):
    _check_batch(batch, generator, d_steps, mesh, keys)
    if text_encoder is not None and 'text_encoder' not in frozen:
      raise ValueError("A step with a text encoder needs its params in "
                       "frozen['text_encoder'].")
    batch = {k: batch[k] for k in keys}
    # z of the global batch from (rng, step), outside the shard_map: the
    # result does not depend on the number of devices.
    key = jax.random.fold_in(state.rng, state.step)
    z = jax.random.normal(key, (d_steps, batch['image'].shape[1],
                                generator.z_dim), jnp.float32)
    z = jax.lax.with_sharding_constraint(
        z, NamedSharding(mesh, parallel.BATCH_SPEC))
    return sharded(state, batch, z, frozen)

  jitted = jax.jit(step, donate_argnums=0)

  def train_step(state: TrainState, batch: Batch, frozen=None):
    return jitted(state, batch, {} if frozen is None else frozen)

  train_step.jitted = jitted  # For cache inspection and lowering.
  return train_step


def _encode_text(encoder: TextEncoderFn, params, token_ids: jax.Array,
                 token_mask: jax.Array) -> Dict[str, jax.Array]:
  """Text features of (d_steps, b, T) tokens, all sub-batches in one pass."""
  lead = token_ids.shape[:2]
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  words, sentence = encoder(params, flat(token_ids), flat(token_mask))
  mask = token_mask.astype(bool)
  return {'word_emb': words.reshape(lead + words.shape[1:]),
          'sentence_emb': sentence.reshape(lead + sentence.shape[1:]),
          'word_mask': mask}


def _split_real_fake(out, b: int):
  """Splits D's output on [real; fake] into its two halves."""
  return (type(out)(*(x[:b] for x in out)), type(out)(*(x[b:] for x in out)))


def _flatten(terms: Mapping[str, Tuple[jax.Array, Optional[jax.Array]]],
             metrics: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
  """{name: (loss, accuracy)} -> {name: loss, name_acc: accuracy} + metrics."""
  out = dict(metrics)
  for name, (loss, accuracy) in terms.items():
    out[name] = jax.lax.pmean(loss, parallel.DATA_AXIS)
    if accuracy is not None:
      out[name + '_acc'] = jax.lax.pmean(accuracy, parallel.DATA_AXIS)
  return out
