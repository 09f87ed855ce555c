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

Graphs that must run without XLA (an exported SavedModel: TF Serving
disables XLA on CPU unless started with --xla_cpu_compilation_enabled) trace
the same functions inside `uncompiled()`: one entry point per function,
compiled or not depending on where it is traced.
"""

import contextlib
import functools
import threading

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


_STATE = threading.local()


@contextlib.contextmanager
def uncompiled():
    """Within this context (per thread), `compiled` functions run as plain TF ops."""
    previous = getattr(_STATE, "uncompiled", False)
    _STATE.uncompiled = True
    try:
        yield
    finally:
        _STATE.uncompiled = previous


def compiled(function):
    """Decorator: `function` compiled with XLA, inlined into an enclosing XLA step.

    Args:
      function: a Python function of tensors.

    Returns:
      A callable with the same signature: the plain function inside an
      XLA-compiled caller or `uncompiled()`, its XLA-compiled `tf.function`
      elsewhere.
    """
    jit_function = tf.function(function, jit_compile=True)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if inside_xla() or getattr(_STATE, "uncompiled", False):
            return function(*args, **kwargs)
        return jit_function(*args, **kwargs)

    return wrapper
