"""XLA compilation of small numeric functions that nests inside a compiled step.

The losses are compiled with XLA on their own, whatever `--jit_compile` says.
Calling a `tf.function(jit_compile=True)` from inside a train step that is
itself XLA-compiled (Keras `compile(jit_compile=True)`) makes XLA treat the
step's inputs and the model's variables as compile-time constants: the whole
step then recompiles on every call, because the weights change at every
step (measured: 4 compilations for 4 calls; TF_CPP_VMODULE=device_compiler=3
lists the arguments as ``kind=constant-resource``). `compiled` therefore
inlines the plain Python function when the caller is already being compiled
by XLA, and calls the compiled `tf.function` otherwise.
"""

import functools

import tensorflow as tf

try:
    # Internal, but the only way to ask "is the graph being traced for XLA":
    # tf.function enters an XLA control-flow context while tracing a
    # jit_compile=True function and checks it with this same helper to decide
    # whether a nested jit function is compiled separately.
    from tensorflow.python.framework import ops as _tf_ops
    from tensorflow.python.ops import control_flow_util as _control_flow_util

    def inside_xla():
        """True while tracing a graph that XLA will compile as a whole."""
        return _control_flow_util.GraphOrParentsInXlaContext(_tf_ops.get_default_graph())
except ImportError:  # pragma: no cover - a TensorFlow without the helper.
    def inside_xla():
        """Unknown on this TensorFlow: always compile separately (correct, slower)."""
        return False


def compiled(function):
    """Decorator: `function` compiled with XLA, inlined into an enclosing XLA step.

    Args:
      function: a Python function of tensors.

    Returns:
      A callable with the same signature; `.python_function` is the original
      (the attribute `tf.function` offers, which inference.py uses).
    """
    jit_function = tf.function(function, jit_compile=True)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if inside_xla():
            return function(*args, **kwargs)
        return jit_function(*args, **kwargs)

    wrapper.python_function = function
    return wrapper
