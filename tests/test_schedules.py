"""Tests for advent_tf.core.schedules and its consumer advent_tf.core.optimizers.

The poly learning rates and the SGD trajectories come from the reference. The
optimizer is tested here, beside the schedule it consumes.
"""

import collections
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from advent_tf.core import optimizers
from advent_tf.core import schedules

import graph_helpers
import two_cpus


def _lrs(schedule, steps):
    return np.array([float(schedule(step)) for step in steps])


def test_poly_schedule_matches_reference(ref):
    steps = ref["e_iters"]
    np.testing.assert_allclose(
        _lrs(schedules.PolySchedule(2.5e-4), steps), ref["e_lr_seg_1x"], rtol=1e-6)
    np.testing.assert_allclose(
        _lrs(schedules.PolySchedule(2.5e-4, multiplier=10), steps), ref["e_lr_seg_10x"], rtol=1e-6)
    np.testing.assert_allclose(
        _lrs(schedules.PolySchedule(1e-4), steps), ref["e_lr_disc"], rtol=1e-6)


def test_horizon_is_not_the_stop_step():
    schedule = schedules.PolySchedule(1.0)
    at_stop = float(schedule(schedules.REFERENCE_STOP_STEP))
    np.testing.assert_allclose(at_stop, (1 - 120_000 / 250_000) ** 0.9, rtol=1e-6)
    assert float(schedule(schedules.REFERENCE_HORIZON)) == 0.0
    assert float(schedule(schedules.REFERENCE_HORIZON + 10)) == 0.0


def test_poly_schedule_config_round_trip():
    schedule = schedules.PolySchedule(2.5e-4, horizon=schedules.SYNTHIA_HORIZON, multiplier=10)
    restored = schedules.PolySchedule.from_config(schedule.get_config())
    assert restored.get_config() == schedule.get_config()
    serialized = keras.optimizers.schedules.serialize(schedule)
    # Registered with Keras, so optimizer configs holding it deserialize as is.
    assert keras.optimizers.schedules.deserialize(serialized).horizon == 90_000


# TorchSGD: the trajectories come from PyTorch 2.13 and 0.4.1 runs of
# SGD(lr=0.025, momentum=0.9, weight_decay=0.05).
_LR, _MOMENTUM, _WD = 0.025, 0.9, 0.05


def _run_sgd(ref, repeats=1, jit=False, optimizer=None, variable=None, steps=None):
    if variable is None:
        variable = keras.Variable(ref["h_p0"], dtype="float64")
    if optimizer is None:
        optimizer = optimizers.TorchSGD(_LR, momentum=_MOMENTUM, weight_decay=_WD)
        optimizer.set_update_repeats([variable], repeats)
        optimizer.build([variable])

    @tf.function(jit_compile=jit)
    def step(grad):
        optimizer.apply_gradients([(grad, variable)])

    trajectory = []
    for grad in ref["h_grads"][steps or slice(None)]:
        step(tf.constant(grad))
        trajectory.append(variable.numpy().copy())
    return np.array(trajectory), optimizer, variable


def test_torch_sgd_matches_pytorch(ref):
    trajectory, _, _ = _run_sgd(ref)
    # Keras keeps the learning rate as a float32 variable (0.025 + 4e-10), the
    # only difference from PyTorch's float64 run.
    np.testing.assert_allclose(trajectory, ref["h_traj_torch213_mult1"], rtol=1e-6)
    np.testing.assert_allclose(trajectory, ref["h_traj_torch041_mult1"], rtol=1e-6)


def test_torch_sgd_update_repeats_match_torch041_duplicates(ref):
    trajectory, _, _ = _run_sgd(ref, repeats=3, jit=True)
    np.testing.assert_allclose(trajectory, ref["h_traj_torch041_mult3"], rtol=1e-6)


def test_torch_sgd_float32_under_xla(ref):
    variable = keras.Variable(ref["h_p0"].astype(np.float32))
    optimizer = optimizers.TorchSGD(_LR, momentum=_MOMENTUM, weight_decay=_WD)
    optimizer.build([variable])
    trajectory, _, _ = _run_sgd(ref, jit=True, optimizer=optimizer, variable=variable)
    np.testing.assert_allclose(trajectory, ref["h_traj_torch213_mult1"], rtol=1e-6)


def test_torch_sgd_lr_multiplier_and_schedule():
    # One step from zero momentum: w1 = w0 - lr * mult * (g + wd * w0).
    head = keras.Variable(np.ones(3), dtype="float64")
    body = keras.Variable(np.ones(2), dtype="float64")
    optimizer = optimizers.TorchSGD(
        schedules.PolySchedule(1e-2, horizon=10), momentum=0.9, weight_decay=0.1)
    optimizer.set_lr_multiplier([head], 10)
    optimizer.build([head, body])
    for _ in range(2):
        optimizer.apply_gradients([(tf.ones(3, tf.float64), head), (tf.ones(2, tf.float64), body)])
    lr0, lr1 = 1e-2, 1e-2 * 0.9 ** 0.9
    for variable, mult in [(head, 10), (body, 1)]:
        w1 = 1 - lr0 * mult * 1.1
        buf = 0.9 * 1.1 + (1 + 0.1 * w1)
        np.testing.assert_allclose(variable.numpy(), w1 - np.float32(lr1) * mult * buf, rtol=1e-6)


def _ops_using(graph, variables):
    """The ops of traced `graph` that take one of the Keras `variables`' handles as an input."""
    internal = {id(external): placeholder for external, placeholder in graph.captures}
    handles = {internal[id(v.value.handle)].op for v in variables}
    return [op for op in graph.get_operations() if any(t.op in handles for t in op.inputs)]


@pytest.mark.parametrize("name", ["TorchSGD", "TorchAdam"])
def test_update_reads_weights_and_slots_only_after_the_gradient(name):
    """No update term is computed before the gradient exists.

    A term that does not depend on the gradient (SGD's wd * w and
    momentum * buf, Adam's beta_2 * v) is run by the executor as soon as the
    step starts and then held through the whole forward and backward pass:
    for SGD twice the network's size at the peak of the step's memory.
    """
    variable = keras.Variable(np.ones(4, np.float32))
    if name == "TorchSGD":
        optimizer = optimizers.TorchSGD(_LR, momentum=_MOMENTUM, weight_decay=_WD)
        optimizer.set_update_repeats([variable], 3)
        optimizer.build([variable])
        slots = [optimizer.momentums[0]]
    else:
        optimizer = optimizers.TorchAdam(1e-4, beta_1=0.9, beta_2=0.99)
        optimizer.build([variable])
        slots = [optimizer._momentums[0], optimizer._velocities[0]]

    @tf.function
    def step(x):
        optimizer.apply_gradients([(tf.square(x, name="the_gradient"), variable)])

    graph = step.get_concrete_function(tf.TensorSpec([4], tf.float32)).graph
    gradient = graph.get_operation_by_name("the_gradient")

    def after_gradient(op):
        return gradient in graph_helpers.ancestors(op)

    # Reads, and the fused updates that read their variables themselves.
    uses = _ops_using(graph, [variable, *slots])
    assert len(uses) >= 1 + len(slots)
    assert all(after_gradient(op) for op in uses), [
        op.name for op in uses if not after_gradient(op)]


def test_torch_sgd_updates_in_place_with_one_kernel_per_repeat():
    """Each repeat is one fused in-place update, not element-wise ops and copies.

    The update used to be four element-wise ops and two assignments per
    repeat, ~25 graph nodes per variable (3,074 in ResNet-101 MinEnt's step,
    each held in host memory by every copy of the traced step) and two
    temporaries of the variable's size.
    """
    variable = keras.Variable(np.ones(4, np.float32))
    optimizer = optimizers.TorchSGD(_LR, momentum=_MOMENTUM, weight_decay=_WD)
    optimizer.set_update_repeats([variable], 3)
    optimizer.build([variable])

    @tf.function
    def step(gradient):
        optimizer.apply_gradients([(gradient, variable)])

    graph = step.get_concrete_function(tf.TensorSpec([4], tf.float32)).graph
    ops = collections.Counter(
        op.type for op in _ops_using(graph, [variable, optimizer.momentums[0]]))
    # The weights read once per repeat (for the weight decay), nothing assigned.
    assert ops == {"ResourceApplyMomentum": 3, "ReadVariableOp": 3}, ops


def test_torch_sgd_checkpoint_restores_momentum(ref, tmp_path):
    _, optimizer, variable = _run_sgd(ref, steps=slice(0, 2))
    path = tf.train.Checkpoint(optimizer=optimizer, variable=variable).save(tmp_path / "ckpt")
    restored_var = keras.Variable(np.zeros(4), dtype="float64")
    restored = optimizers.TorchSGD.from_config(optimizer.get_config())
    restored.build([restored_var])
    tf.train.Checkpoint(optimizer=restored, variable=restored_var).restore(path).assert_consumed()
    assert int(restored.iterations) == 2
    np.testing.assert_array_equal(restored.momentums[0].numpy(), optimizer.momentums[0].numpy())
    trajectory, _, _ = _run_sgd(ref, optimizer=restored, variable=restored_var, steps=slice(2, 5))
    np.testing.assert_allclose(trajectory, ref["h_traj_torch213_mult1"][2:], rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_torch_adam_matches_pytorch_adam(jit):
    """Five steps on a float64 tensor against torch.optim.Adam, gradients spanning 1e-9..1."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=6)
    grads = rng.normal(size=(5, 6)) * np.logspace(-9, 0, 6)
    theirs = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    torch_adam = torch.optim.Adam([theirs], lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    variable = keras.Variable(p0.copy(), dtype="float64")
    adam = optimizers.TorchAdam(1e-2, beta_1=0.9, beta_2=0.99, epsilon=1e-8)
    adam.build([variable])

    @tf.function(jit_compile=jit)
    def step(grad):
        adam.apply_gradients([(grad, variable)])

    torch_steps = []
    for grad in grads:
        theirs.grad = torch.from_numpy(grad.copy())
        torch_adam.step()
        torch_steps.append(theirs.detach().numpy() - p0)
        step(tf.constant(grad))
        # Keras holds the learning rate as float32 (1e-2 + 2e-10).
        np.testing.assert_allclose(variable.numpy(), theirs.detach().numpy(), rtol=1e-7,
                                   atol=1e-12)
    # Keras' own Adam takes a ~10x smaller first step on a 1e-9 gradient.
    keras_adam = keras.optimizers.Adam(1e-2, beta_1=0.9, beta_2=0.99, epsilon=1e-8)
    plain = keras.Variable(p0.copy(), dtype="float64")
    keras_adam.build([plain])
    keras_adam.apply_gradients([(tf.constant(grads[0]), plain)])
    assert abs(plain.numpy()[0] - p0[0]) < 0.2 * abs(torch_steps[0][0])


def test_torch_adam_restores_keras_adam_checkpoints(tmp_path):
    variable = keras.Variable(np.ones(3), dtype="float32")
    adam = keras.optimizers.Adam(1e-3)
    adam.build([variable])
    adam.apply_gradients([(tf.ones(3), variable)])
    path = tf.train.Checkpoint(optimizer=adam).save(tmp_path / "ckpt")
    restored = optimizers.TorchAdam(1e-3)
    restored.build([keras.Variable(np.ones(3), dtype="float32")])
    tf.train.Checkpoint(optimizer=restored).restore(path).assert_consumed()
    assert int(restored.iterations) == 1
    with pytest.raises(ValueError, match="amsgrad"):
        optimizers.TorchAdam(amsgrad=True)


_MIRRORED_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    import two_cpus
    strategy = two_cpus.mirrored_strategy()
    import keras
    from advent_tf.core import optimizers

    data = np.load(sys.argv[1])
    with strategy.scope():
        plain = keras.Variable(data["h_p0"], dtype="float64")
        repeated = keras.Variable(data["h_p0"], dtype="float64")
        optimizer = optimizers.TorchSGD(0.025, momentum=0.9, weight_decay=0.05)
        optimizer.set_update_repeats([repeated], 3)
        optimizer.build([plain, repeated])

    # No XLA here: an XLA cluster cannot hold the cross-replica all-reduce of
    # apply_gradients on these logical CPU devices (jit is tested on one device).
    def replica_step(grad):
        # Each replica holds half the gradient; the all-reduce sums them.
        half = grad / 2
        optimizer.apply_gradients([(half, plain), (half, repeated)])

    @tf.function
    def step(grad):
        strategy.run(replica_step, args=(grad,))

    for grad in data["h_grads"]:
        step(tf.constant(grad))
    np.testing.assert_allclose(plain.numpy(), data["h_traj_torch213_mult1"][-1], rtol=1e-6)
    np.testing.assert_allclose(repeated.numpy(), data["h_traj_torch041_mult3"][-1], rtol=1e-6)
    print("OK", strategy.num_replicas_in_sync)
""")


def test_torch_sgd_under_mirrored_strategy(tmp_path, ref):
    data = tmp_path / "sgd.npz"
    np.savez(data, **{k: ref[k] for k in ("h_p0", "h_grads", "h_traj_torch213_mult1",
                                          "h_traj_torch041_mult3")})
    assert "OK 2" in two_cpus.run(_MIRRORED_SCRIPT, data)


def test_the_restated_torch041_sgd_reproduces_its_trajectory(ref):
    """tools/pytorch_reference.Torch041SGD (used by the reference-iteration tests) vs 0.4.1 itself."""
    torch = pytest.importorskip("torch")
    import pytorch_reference

    param = torch.nn.Parameter(torch.tensor(ref["h_p0"], dtype=torch.float64))
    optimizer = pytorch_reference.Torch041SGD([param] * 3, lr=_LR, momentum=_MOMENTUM,
                                              weight_decay=_WD)
    trajectory = []
    for grad in ref["h_grads"]:
        param.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
        trajectory.append(param.detach().numpy().copy())
    np.testing.assert_allclose(np.array(trajectory), ref["h_traj_torch041_mult3"], rtol=1e-10)
