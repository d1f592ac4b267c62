"""Where an engine Function may write a parameter's gradient directly: its slot of a flat buffer.

With ``SGD(..., flat=True)`` every parameter's gradient lives in its view of
one flat gradient buffer (``miniran.nn.flat``). The autograd core copies a
gradient into that slot; a GPU twin that produces the gradient with a
kernel or a reduction can write it there itself, and the copy (one launch per
parameter and step) disappears.
"""

from __future__ import annotations

from miniran import backend


def gradient_slot(function, index, like):
    """The slot to write input ``index``'s gradient into, or None.

    Only for a leaf (a parameter) that has a slot, whose gradient of this
    step is still to come (a second gradient is added by the autograd core),
    and whose slot is on the device and of the dtype of ``like``, the array
    the Function computes the gradient from.
    """
    inputs = function.inputs
    if inputs is None or index >= len(inputs):
        return None
    tensor = inputs[index]
    slot = getattr(tensor, "grad_slot", None)
    if slot is None or tensor.creator is not None or tensor.grad is not None or slot.dtype != like.dtype:
        return None
    if backend.is_cupy_array(slot) != backend.is_cupy_array(like):
        return None  # the parameter moved to another device; the optimiser will make a new slot
    return slot
