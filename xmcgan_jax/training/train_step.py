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

from xmcgan_jax import config_base
from xmcgan_jax import data
from xmcgan_jax import objectives
from xmcgan_jax import parallel
from xmcgan_jax.models import generator as generator_lib
from xmcgan_jax.text import hard_negatives

Params = Any
Batch = Mapping[str, jax.Array]
Metrics = Dict[str, jax.Array]
# (frozen encoder params, images in [0, 1]) -> (N, F) features.
ImageEncoderFn = Callable[[Any, jax.Array], jax.Array]
# (frozen text encoder params, token ids, token mask) -> (words, sentence).
TextEncoderFn = Callable[[Any, jax.Array, jax.Array],
                         Tuple[jax.Array, jax.Array]]

BATCH_KEYS = data.TRAIN_BATCH_KEYS  # What the step takes (see there).


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Hyperparameters of the train step (config fields of the same names;
  training/builders.py builds it from a config, where every default lives).

  d_steps_per_g_step: sub-batches per step (D updates per G update).
  bn_group: generator BatchNorm statistics over 'device', 'global', or an int
    number of examples per group (a multiple of the per-device batch).
  ema_decay: decay of the EMA generator parameters.
  loss: the objectives' weights and hyperparameters.
  hard_negative_classes: token ids of config.hard_negative_words' classes
    (text/hard_negatives.word_class_ids); () = no hard negative captions.
  """
  d_steps_per_g_step: int
  bn_group: Union[str, int]
  ema_decay: float
  loss: objectives.LossConfig
  hard_negative_classes: hard_negatives.WordClasses = ()

  def __post_init__(self):  # The checks of config_base.validate.
    config_base.check_positive('d_steps_per_g_step', self.d_steps_per_g_step)
    config_base.check_bn_group(self.bn_group)


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
  config_base.check_bn_group(bn_group, local_batch, n_devices)
  if bn_group == 'device':
    return None, None
  if bn_group == 'global':
    return parallel.DATA_AXIS, None
  return parallel.DATA_AXIS, bn_group // local_batch


def _check_batch(batch: Batch, generator: nn.Module, d_steps: int,
                 mesh: Mesh) -> None:
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise ValueError(f'Batch lacks {missing}; it has {sorted(batch)}.')
  lead = batch['image'].shape[:2]
  if batch['image'].ndim != 5 or lead[0] != d_steps:
    raise ValueError(
        f'batch["image"] has shape {batch["image"].shape}; expected '
        f'(d_steps_per_g_step={d_steps}, batch, H, W, 3).')
  size = generator.image_size
  want = {'image': lead + (size, size, 3),
          'token_ids': lead + (generator.max_tokens,),
          'token_mask': lead + (generator.max_tokens,)}
  for key in BATCH_KEYS:
    shape = want[key]
    if tuple(batch[key].shape) != shape:
      raise ValueError(f'batch[{key!r}] has shape {tuple(batch[key].shape)}, '
                       f'expected {shape}.')
  parallel.check_batch_divisible(lead[1], mesh)


class GeneratorState(NamedTuple):
  """What a G update changes: parameters, BatchNorm statistics, Adam."""
  params: Params
  state: Params
  opt_state: optax.OptState


class DiscriminatorState(NamedTuple):
  """What a D update changes: parameters, spectral-norm vectors, Adam."""
  params: Params
  state: Params
  opt_state: optax.OptState


class JointResult(NamedTuple):
  """The joint sub-step's updated networks and the metrics of each."""
  g: GeneratorState
  d: DiscriminatorState
  d_metrics: Metrics
  g_metrics: Metrics


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
                   fake: jax.Array, sub: Batch):
    """(D's output on [real; fake], D's new spectral-norm vectors)."""
    twice = lambda x: None if x is None else jnp.concatenate([x, x])
    out, new_vars = self.discriminator.apply(
        {'params': d_params, 'spectral_norm_stats': d_state},
        jnp.concatenate([real, fake]), twice(sub['sentence_emb']),
        train=True, hard_sentence_emb=twice(sub.get('hard_sentence_emb')),
        mutable=['spectral_norm_stats'])
    return out, new_vars['spectral_norm_stats']

  def real_logits(self, d_params: Params, d_state: Params, sub: Batch
                  ) -> Callable[[jax.Array], jax.Array]:
    """images -> D's logits against the sub-batch's captions (the R1 term's
    function). D runs the same power iteration from d_state as in
    `discriminate`, so both see one normalised D; its new vectors are
    dropped (discriminate's are kept)."""
    def logits(images):
      out, _ = self.discriminator.apply(
          {'params': d_params, 'spectral_norm_stats': d_state}, images,
          sub['sentence_emb'], train=True, mutable=['spectral_norm_stats'])
      return out.logits
    return logits


# Sub-steps ---------------------------------------------------------------


def _apply_d_update(nets: Networks, d_tx: optax.GradientTransformation,
                    config: StepConfig, d: DiscriminatorState, sub: Batch,
                    new_d_state: Params, d_loss: jax.Array, d_grads: Params,
                    metrics: Metrics) -> Tuple[DiscriminatorState, Metrics]:
  """Adam on pmean'd D gradients (with the R1 term's added, if it is on);
  the sub-step's D metrics."""
  if config.loss.weights.r1:
    # A gradient of its own: inside the joint sub-step's vjp, the second
    # derivative would run again in the pullback for G.
    (r1_loss, r1_metrics), r1_grads = jax.value_and_grad(
        lambda p: objectives.d_r1_objective(
            nets.real_logits(p, d.state, sub), sub['image'], config.loss),
        has_aux=True)(d.params)
    d_grads = jax.tree.map(jnp.add, d_grads, r1_grads)
    d_loss = d_loss + r1_loss
    metrics = dict(metrics, **r1_metrics)
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
                                         fake, sub)
    loss, metrics = objectives.d_objective(out, sub, config.loss)
    return loss, (metrics, new_d_state)

  (d_loss, (metrics, new_d_state)), d_grads = jax.value_and_grad(
      loss_fn, has_aux=True)(d.params)
  return _apply_d_update(nets, d_tx, config, d, sub, new_d_state, d_loss,
                         d_grads, metrics)


def joint_substep(nets: Networks, g_tx: optax.GradientTransformation,
                  d_tx: optax.GradientTransformation, config: StepConfig,
                  g: GeneratorState, d: DiscriminatorState, sub: Batch,
                  z: jax.Array,
                  pretrained: Optional[Callable[[jax.Array], jax.Array]]
                  ) -> JointResult:
  """One G and D forward pulled back twice (dL_D/dD, dL_G/dG); both update."""

  def losses_of(g_params, d_params):
    fake, new_g_state = nets.generate(g_params, g.state, z, sub)
    out, new_d_state = nets.discriminate(d_params, d.state, sub['image'],
                                         fake, sub)
    d_loss, d_metrics = objectives.d_objective(out, sub, config.loss)
    g_loss, g_metrics = objectives.g_objective(out, sub, fake, config.loss,
                                               pretrained)
    return (d_loss, g_loss), (d_metrics, g_metrics, new_g_state, new_d_state)

  (d_loss, g_loss), pullback, aux = jax.vjp(losses_of, g.params, d.params,
                                            has_aux=True)
  d_metrics, g_metrics, new_g_state, new_d_state = aux
  one, zero = jnp.ones_like(d_loss), jnp.zeros_like(d_loss)
  d_grads = pullback((one, zero))[1]
  g_grads = jax.lax.pmean(pullback((zero, one))[0], parallel.DATA_AXIS)
  d, d_metrics = _apply_d_update(nets, d_tx, config, d, sub, new_d_state,
                                 d_loss, d_grads, d_metrics)
  updates, g_opt_state = g_tx.update(g_grads, g.opt_state, g.params)
  g = GeneratorState(optax.apply_updates(g.params, updates), new_g_state,
                     g_opt_state)
  g_metrics = dict(g_metrics, g_loss=jax.lax.pmean(g_loss, parallel.DATA_AXIS),
                   g_grad_norm=optax.tree.norm(g_grads))
  return JointResult(g, d, d_metrics, g_metrics)


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
  g = GeneratorState(state.g_params, state.g_state, state.g_opt_state)
  joint = joint_substep(nets, g_tx, d_tx, config, g, d, sub(k), z[k],
                        pretrained)
  d_metrics.append(joint.d_metrics)
  out_metrics = jax.tree.map(lambda *xs: sum(xs) / len(xs), *d_metrics)
  out_metrics.update(joint.g_metrics)
  g, d = joint.g, joint.d
  new_state = state.replace(
      step=state.step + 1, g_params=g.params,
      # Per-device (or per-group) running statistics differ; average them
      # so the replicated state is one well-defined value.
      g_state=jax.lax.pmean(g.state, parallel.DATA_AXIS),
      ema_g_params=ema_update(state.ema_g_params, g.params, config.ema_decay),
      d_params=d.params, d_state=d.state, g_opt_state=g.opt_state,
      d_opt_state=d.opt_state)
  return new_state, {k: v.astype(jnp.float32) for k, v in out_metrics.items()}


def make_train_step(generator: nn.Module, discriminator: nn.Module,
                    g_tx: optax.GradientTransformation,
                    d_tx: optax.GradientTransformation, mesh: Mesh,
                    config: StepConfig, text_encoder: TextEncoderFn,
                    image_encoder: Optional[ImageEncoderFn] = None
                    ) -> Callable[..., Tuple[TrainState, Metrics]]:
  """Builds the compiled train step.

  Args:
    generator, discriminator: the modules (G's BatchNorm axis is set here).
    g_tx, d_tx: optimizers matching the state's optimizer states.
    mesh: the 1-D data mesh.
    config: step hyperparameters.
    text_encoder: the frozen text features of the batch's token rows, called
      inside the step with `frozen['text_encoder']`: the encoder itself, or
      a text/feature_table lookup (features computed once, or elsewhere).
    image_encoder: frozen pretrained image feature function for the
      `image_pretrained` term, called with `frozen['image_encoder']`.

  Returns:
    step(state, batch, frozen) -> (new_state, metrics). `batch` maps
    BATCH_KEYS (data.TRAIN_BATCH_KEYS) to arrays shaped
    (d_steps_per_g_step, global_batch, ...); `frozen` holds the parameters
    of the frozen encoders. The state is donated.
    Metrics are float32 scalars of the global batch.
  """
  use_pretrained = bool(config.loss.weights.image_pretrained) and (
      image_encoder is not None)
  n_devices = mesh.shape[parallel.DATA_AXIS]

  def per_device(state: TrainState, batch: Batch, z: jax.Array, frozen):
    batch = _encode_text(text_encoder, frozen['text_encoder'], batch)
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
  d_steps = config.d_steps_per_g_step

  def step(state: TrainState, batch: Batch, frozen):
    _check_batch(batch, generator, d_steps, mesh)
    if 'text_encoder' not in frozen:
      raise ValueError("The step needs the text encoder's params in "
                       "frozen['text_encoder'].")
    batch = {k: batch[k] for k in BATCH_KEYS}
    # z of the global batch from (rng, step), outside the shard_map: the
    # result does not depend on the number of devices.
    key = jax.random.fold_in(state.rng, state.step)
    z = jax.random.normal(key, (d_steps, batch['image'].shape[1],
                                generator.z_dim), jnp.float32)
    by_batch = lambda x: jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, parallel.BATCH_SPEC))
    if config.hard_negative_classes:
      # Drawn for the global batch, like z: independent of the device count.
      ids, mask, valid = hard_negatives.swap_words(
          jax.random.fold_in(key, 1), batch['token_ids'],
          batch['token_mask'], config.hard_negative_classes)
      batch.update(hard_token_ids=by_batch(ids), hard_token_mask=by_batch(mask),
                   hard_valid=by_batch(valid))
    return sharded(state, batch, by_batch(z), frozen)

  jitted = jax.jit(step, donate_argnums=0)

  def train_step(state: TrainState, batch: Batch, frozen):
    return jitted(state, batch, frozen)

  train_step.jitted = jitted  # For cache inspection and lowering.
  return train_step


def _encode_text(encoder: TextEncoderFn, params, batch: Batch
                 ) -> Dict[str, jax.Array]:
  """The sub-batches as G and D take them: image, word_emb, sentence_emb,
  word_mask, each (d_steps, b, ...), and with hard negative captions
  hard_sentence_emb (d_steps, b, K, E), hard_word_emb (d_steps, b, K, T, E),
  hard_word_mask and hard_valid (d_steps, b, K); all sub-batches encoded in
  one pass."""
  token_ids, token_mask = batch['token_ids'], batch['token_mask']
  lead = token_ids.shape[:2]
  flat = lambda x: x.reshape((-1,) + x.shape[-1:])
  words, sentence = encoder(params, flat(token_ids), flat(token_mask))
  out = {'image': batch['image'],
         'word_emb': words.reshape(lead + words.shape[1:]),
         'sentence_emb': sentence.reshape(lead + sentence.shape[1:]),
         'word_mask': token_mask.astype(bool)}
  if 'hard_token_ids' in batch:
    hard_lead = batch['hard_token_ids'].shape[:3]
    hard_words, hard = encoder(params, flat(batch['hard_token_ids']),
                               flat(batch['hard_token_mask']))
    out['hard_sentence_emb'] = hard.reshape(hard_lead + hard.shape[1:])
    out['hard_word_emb'] = hard_words.reshape(hard_lead + hard_words.shape[1:])
    out['hard_word_mask'] = batch['hard_token_mask'].astype(bool)
    out['hard_valid'] = batch['hard_valid']
  return out
