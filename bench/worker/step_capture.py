"""Whole-step CUDA-graph capture: forward, backward and a fused, capturable Adam step replayed as
one graph from static input buffers (`--compile-mode step`).

At batch 32 a step of these networks is bound by how fast the host launches kernels; one graph
launch per step removes that (H200: 23,004 -> 24,656 samples/s seed widths, 32,767 aligned;
results/nvidia-h200/README.md). The recipe is PyTorch's whole-network capture: warm up on a side
stream (so lazily made state such as Adam's moments and cuDNN's workspaces exist before capture),
set the gradients to None, capture once, then per batch copy the inputs into the static buffers and
replay. What must hold for the replay to be the same training as eager:

- the optimizer keeps its step count and its lr on the device (Adam capturable=True with a tensor
  lr): a float lr would be baked into the graph at capture and the schedule would stop applying.
  LR schedulers write a tensor lr in place (fill_), so the replayed graph reads the new value;
- the warm-up steps are real optimizer steps, so the parameters, buffers and the optimizer state
  are put back in place afterwards (same tensors: the graph holds their addresses);
- autocast's weight cache is off (cache_enabled=False), as CUDA-graph capture requires.
"""

import itertools
import warnings
from contextlib import nullcontext

import torch


def capturable_adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam as the captured step needs it: fused, capturable, lr a tensor on the device."""
    return torch.optim.Adam(params, lr=torch.tensor(lr, device=device), fused=True, capturable=True)


def fallback_reason(device: torch.device) -> str | None:
    """Why a step on `device` cannot be captured (None when it can)."""
    if device.type != "cuda":
        return f"--compile-mode step needs a CUDA device (it replays a CUDA graph); on {device} the step runs eagerly"
    return None


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise ValueError(f"step capture needs Adam or AdamW (fused, capturable), got {type(optimizer).__name__}")
    for group in optimizer.param_groups:
        if not (group["capturable"] and group["fused"]):
            raise ValueError("step capture needs the optimizer built with fused=True, capturable=True (see capturable_adam)")
        if not isinstance(group["lr"], torch.Tensor):
            raise ValueError("step capture needs lr as a tensor on the device: a float lr is frozen into the graph "
                             "at capture and the lr schedule would stop applying (see capturable_adam)")


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return nullcontext()
    if amp_dtype == torch.float16:
        raise ValueError("step capture supports fp32 and bf16: fp16 needs GradScaler, whose inf check waits for the host")
    return torch.autocast(device.type, dtype=amp_dtype, cache_enabled=False)


class EagerStep:
    """One training step, run eagerly: the fallback off CUDA, and the body that CapturedStep captures."""

    def __init__(self, model, optimizer, loss_fn, forward=None, amp_dtype=None):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.forward = model if forward is None else forward  # not `or`: a compiled module has no truth value
        self.amp_dtype = amp_dtype

    def run(self, *batch) -> torch.Tensor:
        """batch = (*inputs, target); returns the loss tensor (not detached)."""
        *inputs, target = batch
        self.optimizer.zero_grad(set_to_none=True)
        with _autocast(target.device, self.amp_dtype):
            logits = self.forward(*inputs)
        loss = self.loss_fn(logits.float(), target)
        loss.backward()
        self.optimizer.step()
        return loss

    def __call__(self, *batch) -> torch.Tensor:
        return self.run(*batch).detach()


def _warm_up(body, steps: int) -> None:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(steps):
            body()
    torch.cuda.current_stream().wait_stream(stream)


def _capture(body):
    """The body recorded into a CUDA graph (nothing runs now); returns the replay function.

    thread_local: only this thread's CUDA calls are checked during capture. The default mode
    ("global") makes an unsafe call from any thread fail the capture, and loader threads (a
    DataLoader's pin-memory thread, DALI's) may touch CUDA while the step is being captured."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        body()
    return graph.replay


class CapturedStep(EagerStep):
    """EagerStep captured once into a CUDA graph from an example batch, then replayed per batch."""

    def __init__(self, model, optimizer, loss_fn, example_batch, forward=None, amp_dtype=None, warmup_steps: int = 3):
        super().__init__(model, optimizer, loss_fn, forward, amp_dtype)
        check_optimizer(optimizer)
        self.static = [t.detach().clone() for t in example_batch]  # clone keeps the memory format
        tensors = list(itertools.chain(model.parameters(), model.buffers()))
        saved = [t.detach().clone() for t in tensors]
        _warm_up(self._body, warmup_steps)
        with torch.no_grad():
            for tensor, value in zip(tensors, saved):
                tensor.copy_(value)
            for state in optimizer.state.values():  # Adam's fresh state: step 0, both moments 0
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()
        self.replay = _capture(self._body)

    def _body(self) -> None:
        self.loss = self.run(*self.static)  # the same tensor on every replay: the graph writes into it

    def __call__(self, *batch) -> torch.Tensor:
        for buffer, tensor in zip(self.static, batch):
            if buffer.shape != tensor.shape:
                raise ValueError(f"step capture was recorded for batches shaped {tuple(buffer.shape)}, got "
                                 f"{tuple(tensor.shape)} (train with drop_last so every batch has one size)")
            buffer.copy_(tensor)
        self.replay()
        return self.loss.detach().clone()


def make_step(model, optimizer, loss_fn, example_batch, forward=None, amp_dtype=None, warmup_steps: int = 3):
    """The captured step on CUDA; elsewhere the eager step, with a warning saying why."""
    reason = fallback_reason(example_batch[0].device)
    if reason:
        warnings.warn(reason, RuntimeWarning, stacklevel=2)
        return EagerStep(model, optimizer, loss_fn, forward, amp_dtype)
    return CapturedStep(model, optimizer, loss_fn, example_batch, forward, amp_dtype, warmup_steps)
