"""One flat buffer for all parameters, one for all their gradients: each parameter a view.

On a GPU every array operation is a launch, so updating 323 parameters one
by one costs 323 launches, and all-reducing 323 gradients across processes
costs 323 calls. With every parameter a view of one contiguous buffer (and
every gradient a view of another), the optimiser updates them all with ONE
elementwise kernel, and data-parallel training all-reduces ONE array.

How the gradients get there: each parameter's ``grad_slot`` is its view of
the gradient buffer. The autograd core writes a parameter's first gradient
of a step into that slot (a copy, unless the Function that produced it wrote
it there itself, as the engine's GPU convolution and batch norm do) and adds
later ones in place (see ``Tensor._accumulate``).

Code that rebinds ``p.data`` to a new array (``load_state_dict``,
``Module.to``) takes a parameter out of the buffer; :meth:`FlatParameters.sync`
(which the optimiser calls before every step) notices and copies it back in,
rebuilding the buffers when the parameters moved to another device.
"""

from __future__ import annotations

from miniran import backend

__all__ = ["FlatParameters"]


class FlatParameters:
    """Gather ``params`` into ``self.data`` (one 1-D array) and give them ``self.grad`` slots.

    Args:
        params: the parameters (all of one dtype and one device).

    Attributes:
        data: the flat parameter buffer; ``params[i].data`` is a view of it.
        grad: the flat gradient buffer; ``params[i].grad_slot`` is a view of it.
        offsets: where each parameter starts in both buffers.
    """

    def __init__(self, params):
        self.params = list(params)
        if not self.params:
            raise ValueError("FlatParameters: params is empty")
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) != 1 or len(devices) != 1:
            raise ValueError(f"FlatParameters: the parameters must share one dtype and one device, "
                             f"got dtypes {sorted(map(str, dtypes))} on {sorted(devices)}")
        self._build()

    def _build(self):
        first = self.params[0].data
        xp = backend.get_array_module(first)
        sizes = [p.data.size for p in self.params]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.device, self.dtype = backend.device_of(first), first.dtype
        self.data = xp.empty(self.offsets[-1], dtype=first.dtype)
        self.grad = xp.zeros(self.offsets[-1], dtype=first.dtype)
        for i, p in enumerate(self.params):
            view = self.view(self.data, i)
            view[...] = p.data
            p.data = view
            p.grad_slot = self.view(self.grad, i)
            if p.grad is not None:  # a gradient from before (maybe on the old device): keep it, in its slot
                p.grad_slot[...] = backend.to_device(p.grad, self.device)
                p.grad = p.grad_slot

    def view(self, flat, i):
        """Parameter ``i``'s part of a flat array, in the parameter's shape (a view)."""
        return flat[self.offsets[i]:self.offsets[i + 1]].reshape(self.params[i].shape)

    def sync(self) -> bool:
        """Put back into the buffers any parameter whose ``.data`` was rebound; True when all were in place.

        A parameter moved to another device or cast to another dtype rebuilds
        the buffers there (the gradients of the step, if any, are kept).
        """
        in_place = True
        for i, p in enumerate(self.params):
            if backend.device_of(p.data) != self.device or p.data.dtype != self.dtype:
                self._build()
                return False
            view = self.view(self.data, i)
            if not backend.same_memory(p.data, view):
                view[...] = p.data
                p.data = view
                in_place = False
        return in_place

    def grads_in_slots(self) -> bool:
        """Whether every parameter has a gradient and it lives in its slot of :attr:`grad`."""
        for i, p in enumerate(self.params):
            if p.grad is None or not backend.same_memory(p.grad, self.view(self.grad, i)):
                return False
        return True
