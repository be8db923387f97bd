"""The optimisation layer: device defaults, and every optimisation equals the plain modules.

Each optimisation is checked against the plain path on values and gradients of every component's
loss; the CPU kernels also against float64 oracles (the GroupNorm precision of channels-last maps).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from agent_helpers import BATCHES, OFF, component_losses, make_batch, small_config
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from iris_core.config import FrameCnnConfig, IrisConfig, RuntimeConfig
from iris_core.models import runtime
from iris_core.models.agent import Agent
from iris_core.models.convnet import FrameDecoder, FrameEncoder, ResidualBlock, Upsample
from iris_core.training.optim import split_weight_decay

VARIANTS = {
    "channels_last": RuntimeConfig(channels_last=True, checkpoint_cnns=False, cpu_kernels=False),
    "cpu_kernels": RuntimeConfig(channels_last=False, checkpoint_cnns=False, cpu_kernels=True),
    "checkpoint_cnns": RuntimeConfig(channels_last=False, checkpoint_cnns=True, cpu_kernels=False),
    "cpu_default": RuntimeConfig(),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", list(BATCHES))
def test_each_optimisation_equals_the_plain_modules(variant: str, name: str) -> None:
    torch.manual_seed(0)
    plain = runtime.apply_runtime(Agent(small_config()), OFF, "cpu")
    optimised = runtime.apply_runtime(copy.deepcopy(plain), VARIANTS[variant], "cpu")
    batch = make_batch(*BATCHES[name])
    expected = component_losses(plain, name, batch)
    # The actor-critic learns from frames that imagination rounded to multiples of 1/255: with
    # optimised frozen models a rounding difference could flip a pixel, so they are the plain
    # ones here (their own optimisations are checked by their own losses).
    actual = component_losses(optimised, name, batch, frozen=plain if name == "actor_critic" else None)
    assert actual.keys() == expected.keys() and len(expected) > 3
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_checkpointing_under_bf16_autocast_gives_the_plain_values_and_gradients() -> None:
    torch.manual_seed(0)
    plain = runtime.apply_runtime(Agent(small_config()), OFF, "cpu")
    optimised = runtime.apply_runtime(copy.deepcopy(plain), RuntimeConfig(checkpoint_cnns=True), "cpu")
    batch = make_batch(*BATCHES["tokenizer"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = component_losses(plain, "tokenizer", batch)
        actual = component_losses(optimised, "tokenizer", batch)
    for key, value in expected.items():
        # Same bf16 kernels on the same inputs: only the layout and the sub-pixel form differ.
        torch.testing.assert_close(actual[key], value, rtol=2e-2, atol=2e-3, msg=key)


def test_cpu_default_under_bf16_autocast_backpropagates_outside_it() -> None:
    """Batch chunks run each CNN more than once per forward pass; autocast's cache of cast weights
    must not make the checkpointed recomputation differ from the forward pass (the training loop
    calls backward after leaving autocast)."""
    torch.manual_seed(0)
    plain = runtime.apply_runtime(Agent(small_config()), OFF, "cpu")
    optimised = runtime.apply_runtime(copy.deepcopy(plain), RuntimeConfig(), "cpu")
    batch = make_batch(4, 21)  # 84 frames: three chunks
    grads = []
    for agent in (plain, optimised):
        agent.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses, _ = agent.tokenizer.train().compute_loss(batch)
        torch.stack([v.float() for v in losses.values()]).sum().backward()
        grads.append({k: p.grad for k, p in agent.tokenizer.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for key, value in grads[0].items():
        torch.testing.assert_close(grads[1][key], value, rtol=5e-2, atol=5e-3, msg=key)


def test_defaults_per_device() -> None:
    cpu = runtime.resolve_runtime(RuntimeConfig(), "cpu")
    assert (cpu.channels_last, cpu.cpu_kernels, cpu.checkpoint_cnns) == (True, True, True)
    assert not (cpu.tf32 or cpu.fused_adam or cpu.compile)
    cuda = runtime.resolve_runtime(RuntimeConfig(), "cuda")
    assert (cuda.channels_last, cuda.tf32, cuda.fused_adam) == (True, True, True)
    assert not (cuda.cpu_kernels or cuda.checkpoint_cnns or cuda.compile)
    assert runtime.resolve_runtime(RuntimeConfig(tf32=False, compile=True), "cuda:1").tf32 is False
    assert runtime.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="cpu_kernels"):
        runtime.resolve_runtime(RuntimeConfig(cpu_kernels=True), "cuda")
    assert runtime.optimizer_options(RuntimeConfig(), "cuda") == {"fused": True}
    assert runtime.optimizer_options(RuntimeConfig(fused_adam=False), "cuda") == {}
    assert runtime.optimizer_options(RuntimeConfig(), "cpu") == {}


def test_the_agent_keeps_its_parameters_names_and_weight_decay_groups() -> None:
    agent = Agent(small_config())
    before = {name: (id(p), p.clone()) for name, p in agent.state_dict(keep_vars=True).items()}
    groups = {name: sorted(split_weight_decay(getattr(agent, name)).decay) for name in BATCHES}
    assert runtime.apply_runtime(agent, RuntimeConfig(), "cpu") is agent
    after = agent.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for name, tensor in after.items():
        assert id(tensor) == before[name][0] and torch.equal(tensor, before[name][1]), name
    assert groups == {name: sorted(split_weight_decay(getattr(agent, name)).decay) for name in BATCHES}
    kinds = {type(m).__name__ for m in agent.modules()}
    assert {"AccurateGroupNorm", "CheckpointedResidualBlock", "CheckpointedSubPixelUpsample"} <= kinds
    assert "LayerNorm" in kinds  # the transformer's norms are untouched
    conv = agent.world_model.frame_cnn.layers[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


# --- CPU kernels against float64 oracles --------------------------------------------------------


def test_group_norm_of_channels_last_maps_is_as_accurate_as_the_contiguous_kernel() -> None:
    """Groups whose mean is 30× their spread: torch's channels-last CPU kernel loses ~3 digits."""
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 16)
    x = 30.0 + torch.randn(2, 16, 32, 32)
    oracle = F.group_norm(x.double(), 4)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    contiguous_error = (norm(x).double() - oracle).abs().max()
    assert (norm(channels_last).double() - oracle).abs().max() > 100 * contiguous_error  # the bug
    swapped = copy.deepcopy(norm)
    runtime.swap_group_norms(swapped)
    out = swapped(channels_last)  # with autograd: through the contiguous kernel
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, norm(x))


GROUP_NORM_MAPS = {
    "mean 30x the spread": lambda: 30.0 + torch.randn(2, 16, 32, 32),
    "mean 1000x the spread": lambda: 1000.0 + torch.randn(2, 16, 32, 32),
    "constant channels": lambda: torch.randn(2, 16, 1, 1).expand(2, 16, 32, 32).contiguous(),
    "constant groups": lambda: torch.full((2, 16, 32, 32), 0.7),
    "zeros": lambda: torch.zeros(2, 16, 32, 32),
    "ordinary": lambda: torch.randn(2, 16, 8, 8),
}


@pytest.mark.parametrize("name", list(GROUP_NORM_MAPS))
def test_group_norm_without_autograd_takes_accurate_statistics_in_the_channels_last_layout(name: str) -> None:
    """The two-pass statistics against a float64 oracle: no worse than torch's contiguous kernel."""
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = GROUP_NORM_MAPS[name]()
    oracle = F.group_norm(x.double(), 4, norm.weight.double(), norm.bias.double())
    contiguous_error = (norm(x).double() - oracle).abs().max().item()
    swapped = copy.deepcopy(norm)
    runtime.swap_group_norms(swapped)
    with torch.no_grad():
        out = swapped(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out.double() - oracle).abs().max().item() <= 2 * contiguous_error + 1e-6


def test_group_norm_without_autograd_equals_the_plain_norm_in_float64() -> None:
    torch.manual_seed(0)
    norm = nn.GroupNorm(8, 32).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = 3.0 + torch.randn(3, 32, 5, 7, dtype=torch.float64)
    swapped = copy.deepcopy(norm)
    runtime.swap_group_norms(swapped)
    with torch.no_grad():
        out = swapped(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, norm(x), rtol=1e-12, atol=1e-12)


def test_cnn_features_of_flat_and_padding_frames_are_as_accurate_as_the_contiguous_layout() -> None:
    """The tokenizer's context CNN at the paper's widths on all-zero (padding) and near-flat frames."""
    torch.manual_seed(0)
    encoder = FrameEncoder(IrisConfig().tokenizer.frame_cnn, 3)
    frames = torch.cat([torch.zeros(1, 3, 64, 64), 0.6 + 0.01 * torch.rand(2, 3, 64, 64)])
    oracle = copy.deepcopy(encoder).double()(frames.double())

    def error(config: RuntimeConfig | None) -> Tensor:
        cnn = copy.deepcopy(encoder)
        if config is None:  # torch's own channels-last kernels
            cnn.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        else:
            runtime.optimise_cnn(cnn, runtime.resolve_runtime(config, "cpu"))
        return (cnn(frames).double() - oracle).abs().amax(dim=(1, 2, 3))

    contiguous = error(OFF)
    for autograd in (True, False):  # the norms take two routes, with autograd and without
        with torch.set_grad_enabled(autograd):
            for layout in (True, False):
                optimised = error(RuntimeConfig(channels_last=layout))
                assert torch.all(optimised <= 3 * contiguous + 2e-6), (autograd, layout, optimised)
    assert torch.all(error(None) > 5 * contiguous)  # the test sees the imprecision of torch's kernel


@pytest.mark.parametrize("channels_last", [False, True])
def test_sub_pixel_upsample_equals_upsampling_then_convolving(channels_last: bool) -> None:
    """float64, a non-square map: every output phase, the zero-padded borders and all gradients."""
    torch.manual_seed(0)
    plain = Upsample(3).double()
    nn.init.normal_(plain.conv.bias)
    swapped = copy.deepcopy(plain)
    swapped.__class__ = runtime.SubPixelUpsample
    x = torch.randn(2, 3, 4, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        swapped.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def output_and_grads(module: nn.Module) -> list[Tensor]:
        inp = x.detach().requires_grad_()
        out = module(inp)
        (out * torch.arange(out.numel(), dtype=out.dtype).view(out.shape).sin()).sum().backward()
        return [out, inp.grad, *(p.grad for p in module.parameters())]  # type: ignore[list-item]

    expected, actual = output_and_grads(plain), output_and_grads(swapped)
    assert actual[0].shape == (2, 3, 8, 14)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert actual[0].is_contiguous(memory_format=layout)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_sub_pixel_upsample_saves_multiply_adds_only_in_full_precision() -> None:
    up = Upsample(8)
    up.__class__ = runtime.SubPixelUpsample
    x = torch.randn(2, 8, 8, 8)

    def conv_flops() -> int:
        with FlopCounterMode(display=False) as counter:
            up(x)
        return int(counter.get_flop_counts()["Global"][torch.ops.aten.convolution])

    assert conv_flops() == 2 * 2 * (4 * 8) * 8 * 4 * (9 * 9)  # one 2×2 conv, 4 phases, 9×9 positions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv_flops() == 2 * 2 * 8 * 8 * 9 * (16 * 16)  # 3×3 conv over the upsampled map


def saved_bytes(module: nn.Module, x: Tensor) -> int:
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum().backward()
    return total


def assert_same_outputs_and_gradients(module: nn.Module, plain: nn.Module, x: Tensor) -> None:
    """float64 modules on the same input: outputs and parameter gradients equal up to summation order."""

    def output_and_grads(m: nn.Module) -> list[Tensor]:
        out = m(x)
        (out * torch.randn_like(out, generator=torch.Generator().manual_seed(1))).sum().backward()
        return [out, *(p.grad for p in m.parameters())]  # type: ignore[list-item]

    for a, e in zip(output_and_grads(module), output_and_grads(plain), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


class _CountConvolutions(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += func is torch.ops.aten.convolution.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("widths", [(16, 16), (16, 32)])
def test_checkpointed_blocks_keep_two_maps_and_rerun_no_convolution(widths: tuple[int, int]) -> None:
    torch.manual_seed(0)
    block = ResidualBlock(*widths, 4)
    x = torch.randn(4, 16, 32, 32, requires_grad=True)
    plain = saved_bytes(block, x)
    map_bytes = 4 * 32 * 32 * 4
    params = sum(p.numel() * 4 for p in block.parameters())
    runtime.checkpoint_cnn(block)
    assert type(block).__name__ == "CheckpointedResidualBlock"
    # Plain autograd keeps the input, both GN outputs, both SiLU inputs/outputs and a conv output;
    # the checkpointed block keeps its input and its first convolution's output (the skip
    # projection, when there is one, saves the same input again: counted twice, stored once).
    inputs = 2 if widths[0] != widths[1] else 1
    kept = saved_bytes(block, x)
    assert kept <= inputs * 16 * map_bytes + widths[1] * map_bytes + 2 * params < plain / 2
    out = block(x)
    with _CountConvolutions() as counter:
        out.sum().backward()
    assert counter.count == 0  # the backward re-runs GroupNorm and SiLU, never a convolution


def test_checkpointed_upsample_reruns_only_the_interpolation() -> None:
    torch.manual_seed(0)
    for upsample in (Upsample(8), runtime.SubPixelUpsample(8)):
        runtime.checkpoint_cnn(upsample)
        x = torch.randn(2, 8, 8, 8, requires_grad=True)
        params = sum(p.numel() * 4 for p in upsample.parameters())
        assert saved_bytes(upsample, x) <= x.numel() * 4 + 2 * params  # its input (and weights) only
        out = upsample(x)
        with _CountConvolutions() as counter:
            out.sum().backward()
        assert counter.count == 0, type(upsample).__name__


@pytest.mark.parametrize("decoder", [False, True])
def test_checkpointed_head_keeps_only_its_input_and_gives_the_plain_values(decoder: bool) -> None:
    """The final GN → SiLU → conv of a CNN: float64, values and gradients as the plain module."""
    torch.manual_seed(0)
    config = FrameCnnConfig(num_channels=8, mult=(1, 2), down=(1, 1), latent_dim=4, norm_groups=4)
    plain = (FrameDecoder(config, 3) if decoder else FrameEncoder(config, 3)).double()
    x = torch.randn(3, 4, 4, 4) if decoder else torch.rand(3, 3, 16, 16)
    x = x.double().requires_grad_()
    blocks_only = copy.deepcopy(plain)
    for module in blocks_only.modules():  # the blocks and upsamples only, as before the head
        if type(module) in (ResidualBlock, Upsample):
            runtime.checkpoint_cnn(module)
    checkpointed = copy.deepcopy(plain)
    runtime.checkpoint_cnn(checkpointed)
    head_input = plain.layers[:-3](x)
    # Plain autograd keeps the head's input, the GN output and the SiLU output (and the weights);
    # the checkpointed unit keeps its input only.
    assert saved_bytes(blocks_only, x) - saved_bytes(checkpointed, x) >= 2 * head_input.numel() * 8
    checkpointed.zero_grad(set_to_none=True)
    assert_same_outputs_and_gradients(checkpointed, plain, x)


def test_cpu_default_reruns_every_cnn_but_the_tokenizers_encoder_and_decoder() -> None:
    agent = runtime.apply_runtime(Agent(small_config()), RuntimeConfig(), "cpu")
    tokenizer = agent.tokenizer
    for cnn in (tokenizer.encoder, tokenizer.decoder):
        assert isinstance(cnn, runtime._OptimisedCnn) and not cnn.recompute and cnn.checkpoint_head
    rerun = [tokenizer.frame_cnn, agent.world_model.frame_cnn, agent.actor_critic.model.frame_encoder]
    for cnn in rerun:
        assert isinstance(cnn, runtime._OptimisedCnn) and cnn.recompute and not cnn.checkpoint_head
        assert not any(type(m).__name__.startswith("Checkpointed") for m in cnn.modules())


def test_without_checkpointing_no_cnn_is_re_run() -> None:
    """``checkpoint_cnns=false`` (small batches): the CPU kernels and chunks stay, nothing re-runs."""
    agent = runtime.apply_runtime(Agent(small_config()), RuntimeConfig(checkpoint_cnns=False), "cpu")
    cnns = [m for m in agent.modules() if isinstance(m, FrameEncoder | FrameDecoder)]
    assert len(cnns) == 6  # tokenizer ×3, world model, policy and its target
    for cnn in cnns:
        assert isinstance(cnn, runtime._OptimisedCnn) and cnn.frames_per_chunk is not None
        assert not cnn.recompute and not cnn.checkpoint_head
        assert not any(type(m).__name__.startswith("Checkpointed") for m in cnn.modules())
    assert any(isinstance(m, runtime.SubPixelUpsample) for m in agent.tokenizer.decoder.modules())


def test_without_autograd_the_checkpointed_blocks_run_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    block = ResidualBlock(8, 8, 4)
    x = torch.randn(1, 8, 4, 4)
    expected = block(x)
    runtime.checkpoint_cnn(block)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("checkpoint called without autograd")

    monkeypatch.setattr(runtime, "checkpoint", fail)
    with torch.no_grad():
        assert torch.equal(block(x), expected)
    with pytest.raises(AssertionError, match="without autograd"):
        block(x)


@pytest.mark.parametrize(("decoder", "recompute"), [(False, True), (True, True), (True, False)])
def test_batch_chunks_give_the_plain_values_and_gradients(decoder: bool, recompute: bool) -> None:
    """7 frames in chunks of 3, 3 and 1, with or without re-running each chunk in the backward
    pass; float64, so only summation order differs."""
    torch.manual_seed(0)
    config = FrameCnnConfig(num_channels=8, mult=(1, 2), down=(1, 1), latent_dim=4, norm_groups=4)
    plain = (FrameDecoder(config, 3) if decoder else FrameEncoder(config, 3)).double()
    chunked = copy.deepcopy(plain)
    runtime.chunk_batches(chunked, frames_per_chunk=3, recompute=recompute)
    x = (
        torch.randn(7, 4, 4, 4, dtype=torch.float64)
        if decoder
        else torch.rand(7, 3, 16, 16, dtype=torch.float64)
    )
    assert_same_outputs_and_gradients(chunked, plain, x)
    with torch.no_grad():
        assert torch.equal(chunked(x), plain(x))
    if recompute:
        assert saved_bytes(chunked, x) < saved_bytes(plain, x) / 4  # only the chunks' inputs are kept
