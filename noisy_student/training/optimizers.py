"""RMSProp with TF1 semantics, the reference's optimizer (`utils.build_optimizer`).

`tf.train.RMSPropOptimizer(lr, decay=0.9, momentum=0.9, epsilon=1e-3)` runs the
`ApplyRMSProp` kernel:

  ms  <- ms + (g**2 - ms) * (1 - rho)            (= rho * ms + (1 - rho) * g**2)
  mom <- momentum * mom + lr * g / sqrt(ms + eps)
  var <- var - mom

with the `ms` slot initialised to ONES. `keras.optimizers.RMSprop(rho=0.9, momentum=0.9,
epsilon=1e-3)` has the same update but starts `ms` at zeros: its first step per coordinate is about
`lr / sqrt(1 - rho)` (3.2 lr) whatever the gradient's size, against about `lr * g` here for
|g| < 1. The difference fades as `ms` forgets its start (0.9**t).
"""

import keras
from keras import ops

from noisy_student.training import ema


@keras.saving.register_keras_serializable(package="noisy_student")
class TF1RMSProp(ema.MovingAverageMixin, keras.optimizers.Optimizer):
  """TF1 RMSProp, optionally keeping the reference's weight EMA (see `ema.MovingAverageMixin`).

  Backend-agnostic (`keras.ops`). Use the reference's L2 term through
  `losses.add_weight_decay`, not the `weight_decay` argument (Keras' is decoupled, AdamW-style).

  Args:
    learning_rate: float or schedule (`schedules.WarmupExponentialDecay`).
    rho: TF1's `decay`, 0.9.
    momentum: 0.9.
    epsilon: 1e-3, inside the square root.
    moving_average_decay: None, or 0.9999 to keep the EMA.
    name: optimizer name.
    **kwargs: other `keras.optimizers.Optimizer` arguments (clipping, loss scaling).
  """

  def __init__(self, learning_rate=0.016, rho=0.9, momentum=0.9, epsilon=1e-3,
               moving_average_decay=None, name="tf1_rmsprop", **kwargs):
    super().__init__(learning_rate=learning_rate, moving_average_decay=moving_average_decay,
                     name=name, **kwargs)
    self.rho = rho
    self.momentum = momentum
    self.epsilon = epsilon

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    self._mean_squares = self.add_optimizer_variables(var_list, "rms", initializer="ones")
    self._momentums = self.add_optimizer_variables(var_list, "momentum")

  def update_step(self, gradient, variable, learning_rate):
    index = self._get_variable_index(variable)
    mean_square = self._mean_squares[index]
    momentum = self._momentums[index]
    lr = ops.cast(learning_rate, variable.dtype)
    gradient = ops.cast(gradient, variable.dtype)
    new_mean_square = mean_square + (ops.square(gradient) - mean_square) * (1.0 - self.rho)
    self.assign(mean_square, new_mean_square)
    new_momentum = (self.momentum * momentum
                    + lr * gradient / ops.sqrt(new_mean_square + self.epsilon))
    self.assign(momentum, new_momentum)
    self.assign_sub(variable, new_momentum)

  def get_config(self):
    config = super().get_config()
    config.update({"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon})
    return config
