"""Datasets (TFDS builders) and the tf.data input pipeline."""

# The training batch, from the input pipeline to the train step (one schema,
# named here): each array is (d_steps_per_g_step, batch, ...): 'image'
# float32 (S, S, 3) in [0, 1], 'token_ids' int32 (T,), 'token_mask' bool
# (T,). The step turns the tokens into text features itself (the frozen
# encoder, or a text/feature_table lookup). This package's __init__ imports
# nothing, so the step can use the name without TensorFlow.
TRAIN_BATCH_KEYS = ('image', 'token_ids', 'token_mask')
