"""Questions about the order a traced graph allows its executor."""


def ancestors(op):
    """Every op that must run before ``op``: its data and control inputs, transitively.

    An op that is not among them may be run by the executor as early as its
    own inputs allow, e.g. in the forward pass, and its output then stays
    alive until ``op`` consumes it.
    """
    seen, stack = set(), [op]
    while stack:
        current = stack.pop()
        for parent in [t.op for t in current.inputs] + list(current.control_inputs):
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen
