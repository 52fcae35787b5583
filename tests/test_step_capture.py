"""Whole-step capture: the CUDA-free logic on CPU (a replay stand-in runs the captured body
again), the fallback, the checks; the real CUDA graph on a GPU."""

import pytest
import torch
from torch import nn

from bench.worker import step_capture
from bench.worker.step_capture import CapturedStep, EagerStep, capturable_adam, check_optimizer, make_step
from conftest import requires_cuda


class TwoInputNet(nn.Module):
    """The fusion networks' call shape (rgb, lidar) -> logits, small enough for many steps."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 2)

    def forward(self, rgb, lidar):
        return self.head(torch.relu(self.conv(rgb) + self.conv(lidar)).flatten(1))


def _batches(n, batch=3, device="cpu"):
    g = torch.Generator().manual_seed(5)
    return [(torch.rand(batch, 4, 4, 4, generator=g).to(device), torch.rand(batch, 4, 4, 4, generator=g).to(device),
             torch.randint(0, 2, (batch,), generator=g).to(device)) for _ in range(n)]


def _train(make, optimizer_for, batches, epochs=3, device="cpu", schedule=True):
    """Fresh net, the seed's schedule (cosine, stepped per epoch); returns the trained weights and losses."""
    torch.manual_seed(0)
    model = TwoInputNet().to(device)
    optimizer = optimizer_for(model)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    step = make(model, optimizer, batches[0])
    losses = []
    for _ in range(epochs):
        losses += [step(*batch) for batch in batches]
        if schedule:
            scheduler.step()
    return [p.detach().clone() for p in model.parameters()], torch.stack(losses)


@pytest.fixture
def replay_on_cpu(monkeypatch):
    """Stand-ins for the CUDA-only calls: warm-up runs the body on the current device, and
    'capture' records nothing and returns the body, so each replay runs it again."""
    monkeypatch.setattr(step_capture, "_warm_up", lambda body, steps: [body() for _ in range(steps)])
    monkeypatch.setattr(step_capture, "_capture", lambda body: body)


def test_captured_step_trains_like_eager_under_the_lr_schedule(replay_on_cpu):
    batches = _batches(4)
    eager = _train(lambda m, o, b: EagerStep(m, o, nn.functional.cross_entropy),
                   lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), batches)
    captured = _train(lambda m, o, b: CapturedStep(m, o, nn.functional.cross_entropy, b),
                      lambda m: capturable_adam(m.parameters(), 1e-2, torch.device("cpu")), batches)
    constant_lr = _train(lambda m, o, b: EagerStep(m, o, nn.functional.cross_entropy),
                         lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), batches, schedule=False)
    for mine, theirs in zip(captured[0], eager[0]):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(captured[1], eager[1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(captured[0][0], constant_lr[0][0], rtol=1e-3, atol=1e-4)  # the schedule mattered


def test_warm_up_steps_leave_weights_and_adam_state_as_they_were(replay_on_cpu):
    torch.manual_seed(0)
    model = TwoInputNet()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = capturable_adam(model.parameters(), 1e-2, torch.device("cpu"))
    step = CapturedStep(model, optimizer, nn.functional.cross_entropy, _batches(1)[0], warmup_steps=3)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    state = [v for s in optimizer.state.values() for v in s.values()]
    assert len(state) == 3 * len(before) and all(torch.count_nonzero(v) == 0 for v in state)
    with pytest.raises(ValueError, match="recorded for batches shaped"):
        step(*_batches(1, batch=2)[0])


def test_make_step_falls_back_to_the_eager_step_on_cpu():
    torch.manual_seed(0)
    model = TwoInputNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with pytest.warns(RuntimeWarning, match="needs a CUDA device .* on cpu the step runs eagerly"):
        step = make_step(model, optimizer, nn.functional.cross_entropy, _batches(1)[0])
    assert type(step) is EagerStep
    rgb, lidar, label = _batches(1)[0]
    expected = nn.functional.cross_entropy(model(rgb, lidar), label)
    torch.testing.assert_close(step(rgb, lidar, label), expected.detach())


@pytest.mark.parametrize("make_optimizer,message", [
    (lambda p: torch.optim.SGD(p, lr=0.1), "Adam or AdamW"),
    (lambda p: torch.optim.Adam(p, lr=torch.tensor(0.1)), "fused=True, capturable=True"),
    (lambda p: torch.optim.Adam(p, lr=0.1, fused=True, capturable=True), "lr as a tensor"),
])
def test_optimizers_that_cannot_be_replayed_are_rejected(make_optimizer, message):
    with pytest.raises(ValueError, match=message):
        check_optimizer(make_optimizer(TwoInputNet().parameters()))


def test_fp16_is_rejected(replay_on_cpu):
    model = TwoInputNet()
    with pytest.raises(ValueError, match="fp16 needs GradScaler"):
        CapturedStep(model, capturable_adam(model.parameters(), 1e-2, torch.device("cpu")), nn.functional.cross_entropy,
                     _batches(1)[0], amp_dtype=torch.float16)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_cuda_graph_replay_trains_like_eager(amp_dtype):
    device = torch.device("cuda")
    batches = _batches(4, device=device)
    eager = _train(lambda m, o, b: EagerStep(m, o, nn.functional.cross_entropy, amp_dtype=amp_dtype),
                   lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, fused=True), batches, device=device)
    captured = _train(lambda m, o, b: make_step(m, o, nn.functional.cross_entropy, b, amp_dtype=amp_dtype),
                      lambda m: capturable_adam(m.parameters(), 1e-2, device), batches, device=device)
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if amp_dtype is None else {"rtol": 2e-2, "atol": 1e-3}
    for mine, theirs in zip(captured[0], eager[0]):
        torch.testing.assert_close(mine, theirs, **tolerance)
    torch.testing.assert_close(captured[1], eager[1], **tolerance)


def test_a_compiled_forward_is_taken_as_given():
    """The Trainer passes torch.compile(model) (an OptimizedModule, which has no truth value);
    wrapping compiles nothing until called."""
    model = TwoInputNet()
    compiled = torch.compile(model)
    step = EagerStep(model, torch.optim.Adam(model.parameters()), nn.functional.cross_entropy, forward=compiled)
    assert step.forward is compiled and EagerStep(model, None, None).forward is model
