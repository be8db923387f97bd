"""Every hyperparameter of Δ-IRIS, as frozen dataclasses.

The defaults are the paper's Crafter configuration (docs/models.md, docs/method.md); the Atari
preset and the small quickstart preset override them from YAML (see ``config/``). Sizes that follow
from other sizes are derived here, never written as arithmetic in YAML: a field left as ``None`` is
filled in by ``__post_init__``; a field given explicitly must agree with what it would be derived to.

The frame size is one key, ``env.train.size`` (what the environment renders or resizes to): the
loader (``pipelines.config``) fills ``env.test.size`` and the three ``image_size`` fields from it
when they are ``null`` (:data:`FRAME_SIZE_FOLLOWERS`), and :class:`IrisConfig` refuses any that
disagree, naming both keys. The world model's I-token CNN width follows the frame size too.

Glossary: ``obs`` frames, ``act`` actions, ``latent_tokens`` Δ-tokens, ``rew`` rewards, ``end``
terminations. ``num_actions`` is only known once the environment exists: it stays ``None`` in
presets and is set with :meth:`IrisConfig.with_num_actions`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A configuration value is invalid. ``key`` is the dotted path of the offending field.

    Nested dataclasses raise it with their own field name; whoever builds the config tree
    prefixes the parent path (see :func:`prefix_config_error`).
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.message))


def prefix_config_error(error: ConfigError, prefix: str) -> ConfigError:
    """The same error, with ``prefix`` prepended to its key path."""
    return ConfigError(f"{prefix}.{error.key}" if prefix else error.key, error.message)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(value > 0, name, f"must be > 0, got {value!r}")


def _non_negative(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(value >= 0, name, f"must be >= 0, got {value!r}")


def _unit_interval(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(0.0 <= value <= 1.0, name, f"must be in [0, 1], got {value!r}")


def _one_of(obj: object, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    _require(value in allowed, name, f"must be one of {list(allowed)}, got {value!r}")


def _derived(obj: _T, prefix: str = "", **derived: object) -> _T:
    """A copy of ``obj`` with its ``None`` fields filled with their derived values.

    A field given explicitly must agree with its derived value. Never mutates ``obj`` (it may be
    shared by other configs).
    """
    updates = {}
    for name, value in derived.items():
        current = getattr(obj, name)
        if current is None:
            updates[name] = value
        else:
            key = f"{prefix}.{name}" if prefix else name
            _require(current == value, key, f"must equal its derived value {value!r}, got {current!r}")
    return replace(obj, **updates) if updates else obj  # type: ignore[type-var]


def _nested(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


# ---------------------------------------------------------------------------------------------
# Convolutional networks (docs/models.md §1; the reference's FrameEncoder / FrameDecoder)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameCnnConfig:
    """A residual CNN: base width ``num_channels``, per-stage multipliers ``mult``, and a 2×2
    stride-2 downsample (or nearest ×2 upsample in a decoder) after stage i when ``down[i]``.

    ``latent_dim`` is the channel count of the 8×8 map at the encoder output, or of the decoder
    input (derived from its inputs in the tokenizer when left ``None``).
    """

    num_channels: int = 64
    mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    down: tuple[int, ...] = (1, 0, 1, 1, 0)
    latent_dim: int | None = None
    norm_groups: int = 32  # GroupNorm(32) in every residual block

    def __post_init__(self) -> None:
        _nested(self, "mult", tuple(self.mult))
        _nested(self, "down", tuple(self.down))
        _positive(self, "num_channels", "norm_groups")
        _require(len(self.mult) > 0, "mult", "must not be empty")
        _require(all(m > 0 for m in self.mult), "mult", f"entries must be > 0, got {list(self.mult)}")
        _require(
            len(self.down) == len(self.mult),
            "down",
            f"must have as many entries as mult ({len(self.mult)}), got {len(self.down)}",
        )
        _require(
            all(d in (0, 1) for d in self.down), "down", f"entries must be 0 or 1, got {list(self.down)}"
        )
        for m in self.mult:
            width = m * self.num_channels
            _require(
                width % self.norm_groups == 0,
                "num_channels",
                f"stage width {width} is not divisible by norm_groups={self.norm_groups}",
            )
        if self.latent_dim is not None:
            _require(self.latent_dim > 0, "latent_dim", f"must be > 0, got {self.latent_dim}")

    @property
    def num_downsamples(self) -> int:
        return sum(self.down)

    def output_resolution(self, image_size: int) -> int:
        return image_size >> self.num_downsamples

    def output_size(self, image_size: int) -> int:
        """Number of features of the flattened output map (``latent_dim × res × res``)."""
        assert self.latent_dim is not None
        return self.latent_dim * self.output_resolution(image_size) ** 2


# ---------------------------------------------------------------------------------------------
# Tokenizer (docs/models.md §2)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerConfig:
    image_channels: int = 3
    image_size: int = 64
    num_actions: int | None = None
    num_tokens: int = 4
    decoder_act_channels: int = 4
    codebook_size: int = 1024
    codebook_dim: int = 64
    # Revival allowed while the update counter is below this (None: always; Crafter 0: only on collapse).
    max_codebook_updates_with_revival: int | None = 0
    codebook_ema_decay: float = 0.99  # codebook <- lerp(codebook, batch means, 1 - decay)
    usage_ema_decay: float = 0.98  # EMA of code usage frequencies
    revival_entropy_margin_bits: float = 2.0  # revive when entropy < log2(codebook_size) - margin
    collapse_entropy_bits: float = 1.0  # below this, revival is always allowed
    dead_code_factor: float = 10.0  # a code is dead when its frequency < 1 / (factor · codebook_size)
    commitment_weight: float = 0.02
    l2_weight: float = 1.0
    l1_weight: float = 0.1
    worst_pixel_weight: float = 0.01
    encoder: FrameCnnConfig = field(default_factory=lambda: FrameCnnConfig(num_channels=64, latent_dim=64))
    decoder: FrameCnnConfig = field(default_factory=lambda: FrameCnnConfig(num_channels=64))
    frame_cnn: FrameCnnConfig = field(default_factory=lambda: FrameCnnConfig(num_channels=64, latent_dim=8))

    def __post_init__(self) -> None:
        _positive(
            self,
            "image_channels",
            "image_size",
            "num_tokens",
            "decoder_act_channels",
            "codebook_size",
            "codebook_dim",
            "dead_code_factor",
        )
        _non_negative(
            self,
            "commitment_weight",
            "l2_weight",
            "l1_weight",
            "worst_pixel_weight",
            "revival_entropy_margin_bits",
            "collapse_entropy_bits",
        )
        _unit_interval(self, "codebook_ema_decay", "usage_ema_decay")
        if self.num_actions is not None:
            _require(self.num_actions > 0, "num_actions", f"must be > 0, got {self.num_actions}")
        if self.max_codebook_updates_with_revival is not None:
            _non_negative(self, "max_codebook_updates_with_revival")
        _require(self.encoder.latent_dim is not None, "encoder.latent_dim", "must be set")
        _require(self.frame_cnn.latent_dim is not None, "frame_cnn.latent_dim", "must be set")
        _nested(self, "decoder", _derived(self.decoder, "decoder", latent_dim=self.decoder_in_channels))
        for name in ("encoder", "decoder", "frame_cnn"):
            cnn: FrameCnnConfig = getattr(self, name)
            _require(
                self.image_size % 2**cnn.num_downsamples == 0,
                f"{name}.down",
                f"image_size {self.image_size} (the frame size, env.train.size) is not divisible by "
                f"2**{cnn.num_downsamples}",
            )
        _require(
            self.encoder.num_downsamples == self.decoder.num_downsamples == self.frame_cnn.num_downsamples,
            "decoder.down",
            "encoder, decoder and frame_cnn must reach the same latent resolution",
        )
        grid = math.isqrt(self.num_tokens)
        _require(
            grid * grid == self.num_tokens, "num_tokens", f"must be a perfect square, got {self.num_tokens}"
        )
        _require(
            self.latent_resolution % grid == 0,
            "num_tokens",
            f"a {grid}×{grid} token grid does not tile the {self.latent_resolution}×{self.latent_resolution} "
            f"latent map of {self.image_size}×{self.image_size} frames (env.train.size)",
        )

    @property
    def encoder_in_channels(self) -> int:
        """Previous frame, one learned action plane, next frame."""
        return 2 * self.image_channels + 1

    @property
    def decoder_in_channels(self) -> int:
        """``frame_cnn`` features of the previous frame, action tensor, quantised tokens map."""
        assert self.frame_cnn.latent_dim is not None and self.encoder.latent_dim is not None
        return self.frame_cnn.latent_dim + self.decoder_act_channels + self.encoder.latent_dim

    @property
    def latent_resolution(self) -> int:
        return self.encoder.output_resolution(self.image_size)

    @property
    def tokens_grid_res(self) -> int:
        return math.isqrt(self.num_tokens)

    @property
    def token_res(self) -> int:
        return self.latent_resolution // self.tokens_grid_res

    @property
    def token_dim(self) -> int:
        """Size of a token's patch vector before ``pre_quant_proj`` (4·4·64 = 1024)."""
        assert self.encoder.latent_dim is not None
        return self.token_res**2 * self.encoder.latent_dim

    @property
    def max_codebook_entropy_bits(self) -> float:
        return math.log2(self.codebook_size)


# ---------------------------------------------------------------------------------------------
# World model (docs/models.md §3)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformerConfig:
    max_blocks: int | None = None  # = training.world_model.sequence_length
    tokens_per_block: int | None = None  # = 1 (I-token) + 1 (action) + tokenizer.num_tokens
    num_layers: int = 3
    num_heads: int = 8
    embed_dim: int = 512
    mlp_ratio: int = 4
    attention: str = "causal"
    embed_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0

    def __post_init__(self) -> None:
        _positive(self, "num_layers", "num_heads", "embed_dim", "mlp_ratio")
        _one_of(self, "attention", ("causal", "block_causal"))
        _unit_interval(self, "embed_pdrop", "resid_pdrop", "attn_pdrop")
        _require(
            self.embed_dim % self.num_heads == 0,
            "num_heads",
            f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}",
        )
        for name in ("max_blocks", "tokens_per_block"):
            value = getattr(self, name)
            if value is not None:
                _require(value > 0, name, f"must be > 0, got {value}")

    @property
    def max_tokens(self) -> int:
        assert self.max_blocks is not None and self.tokens_per_block is not None
        return self.max_blocks * self.tokens_per_block


@dataclass(frozen=True)
class TwoHotConfig:
    """Two-hot encoding of symlog values over uniformly spaced buckets (docs/models.md §3, §4)."""

    num_buckets: int = 255
    low: float = -20.0
    high: float = 20.0

    def __post_init__(self) -> None:
        _require(self.num_buckets >= 2, "num_buckets", f"must be >= 2, got {self.num_buckets}")
        _require(self.low < self.high, "high", f"must be > low ({self.low}), got {self.high}")


@dataclass(frozen=True)
class WorldModelConfig:
    image_channels: int = 3
    image_size: int = 64
    latent_vocab_size: int | None = None  # = tokenizer.codebook_size
    num_latent_tokens: int | None = None  # = tokenizer.num_tokens
    num_actions: int | None = None
    latents_weight: float = 1.0
    rewards_weight: float = 1.0
    ends_weight: float = 1.0
    two_hot_rews: bool = True  # False: 3 sign classes (Atari)
    reward_support: TwoHotConfig = field(default_factory=TwoHotConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    # latent_dim None: transformer.embed_dim / (output resolution)², so that the I-token has
    # embed_dim features at any frame size.
    frame_cnn: FrameCnnConfig = field(default_factory=lambda: FrameCnnConfig(num_channels=32, latent_dim=8))

    def __post_init__(self) -> None:
        _positive(self, "image_channels", "image_size")
        _non_negative(self, "latents_weight", "rewards_weight", "ends_weight")
        if self.num_actions is not None:
            _require(self.num_actions > 0, "num_actions", f"must be > 0, got {self.num_actions}")
        res = self.frame_cnn.output_resolution(self.image_size)
        embed_dim = self.transformer.embed_dim
        if self.frame_cnn.latent_dim is None:
            _require(
                res > 0 and embed_dim % (res * res) == 0,
                "frame_cnn.latent_dim",
                f"cannot be derived: transformer.embed_dim {embed_dim} is not a multiple of the "
                f"{res}×{res} map the I-token CNN makes of {self.image_size}×{self.image_size} frames "
                "(env.train.size); change one of them, or set frame_cnn.down",
            )
            _nested(self, "frame_cnn", replace(self.frame_cnn, latent_dim=embed_dim // (res * res)))
        i_token_size = self.frame_cnn.output_size(self.image_size)
        _require(
            i_token_size == self.transformer.embed_dim,
            "frame_cnn.latent_dim",
            f"the I-token CNN outputs {self.frame_cnn.latent_dim}×"
            f"{self.frame_cnn.output_resolution(self.image_size)}² = {i_token_size} features, "
            f"but transformer.embed_dim is {self.transformer.embed_dim} (leave frame_cnn.latent_dim null "
            "to derive it)",
        )

    @property
    def num_reward_classes(self) -> int:
        return self.reward_support.num_buckets if self.two_hot_rews else 3


# ---------------------------------------------------------------------------------------------
# Actor-critic (docs/models.md §4)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActorCriticConfig:
    burn_in_length: int = 5
    imagination_horizon: int = 15
    gamma: float = 0.997
    lambda_: float = 0.95
    entropy_weight: float = 0.001
    two_hot_rets: bool = True  # False: scalar value trained with MSE (Atari)
    value_support: TwoHotConfig = field(default_factory=TwoHotConfig)
    target_tau: float = 0.995  # target <- tau·target + (1 - tau)·online, once per loss call
    lstm_dim: int = 512
    temperature: float = 1.0  # action sampling temperature in imagination
    num_actions: int | None = None
    image_size: int = 64
    frame_encoder: FrameCnnConfig = field(
        default_factory=lambda: FrameCnnConfig(num_channels=32, latent_dim=16)
    )

    def __post_init__(self) -> None:
        _non_negative(self, "burn_in_length", "entropy_weight")
        _positive(self, "imagination_horizon", "lstm_dim", "temperature", "image_size")
        _unit_interval(self, "gamma", "lambda_", "target_tau")
        if self.num_actions is not None:
            _require(self.num_actions > 0, "num_actions", f"must be > 0, got {self.num_actions}")
        _require(self.frame_encoder.latent_dim is not None, "frame_encoder.latent_dim", "must be set")

    @property
    def lstm_input_dim(self) -> int:
        return self.frame_encoder.output_size(self.image_size)

    @property
    def num_value_outputs(self) -> int:
        return self.value_support.num_buckets if self.two_hot_rets else 1


# ---------------------------------------------------------------------------------------------
# Training schedule and optimisation (docs/method.md §5, §6)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentTrainingConfig:
    """Schedule and optimiser of one component. ``steps_first_epoch`` applies at epoch 1 only;
    the component trains in epochs ``> start_after_epochs``."""

    sequence_length: int | None = None
    batch_num_samples: int = 32
    grad_acc_steps: int = 1
    max_grad_norm: float = 10.0
    priority_alpha: float = 5.0
    weight_decay: float = 0.01
    start_after_epochs: int = 0
    steps_first_epoch: int = 500
    steps_per_epoch: int = 500
    optimizer: str = "adamw"  # AdamW with decay on Linear/Conv1d weights only; "adam": no decay
    bf16_autocast: bool = True  # on accelerators (and in the CPU benchmarks that mirror the reference)

    def __post_init__(self) -> None:
        _positive(self, "batch_num_samples", "grad_acc_steps", "max_grad_norm")
        _non_negative(
            self,
            "priority_alpha",
            "weight_decay",
            "start_after_epochs",
            "steps_first_epoch",
            "steps_per_epoch",
        )
        _one_of(self, "optimizer", ("adamw", "adam"))
        _require(
            not (self.optimizer == "adam" and self.weight_decay != 0.0),
            "weight_decay",
            "plain Adam takes no weight decay (use optimizer: adamw)",
        )
        if self.sequence_length is not None:
            _require(
                self.sequence_length >= 2, "sequence_length", f"must be >= 2, got {self.sequence_length}"
            )

    def steps_in_epoch(self, epoch: int) -> int:
        """Optimizer steps this component takes in paper epoch ``epoch`` (1-based)."""
        if epoch <= self.start_after_epochs:
            return 0
        return self.steps_first_epoch if epoch == 1 else self.steps_per_epoch


def _tokenizer_training() -> ComponentTrainingConfig:
    return ComponentTrainingConfig(steps_first_epoch=5000)


def _world_model_training() -> ComponentTrainingConfig:
    return ComponentTrainingConfig(sequence_length=21, steps_first_epoch=2500)


def _actor_critic_training() -> ComponentTrainingConfig:
    return ComponentTrainingConfig(
        batch_num_samples=86, weight_decay=0.0, steps_first_epoch=500, optimizer="adam", bf16_autocast=False
    )


@dataclass(frozen=True)
class TrainingConfig:
    learning_rate: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    tokenizer: ComponentTrainingConfig = field(default_factory=_tokenizer_training)
    world_model: ComponentTrainingConfig = field(default_factory=_world_model_training)
    actor_critic: ComponentTrainingConfig = field(default_factory=_actor_critic_training)

    def __post_init__(self) -> None:
        _nested(self, "adam_betas", tuple(self.adam_betas))
        _positive(self, "learning_rate", "adam_eps")
        _require(len(self.adam_betas) == 2, "adam_betas", f"must have 2 entries, got {len(self.adam_betas)}")
        _require(all(0.0 <= b < 1.0 for b in self.adam_betas), "adam_betas", "entries must be in [0, 1)")


# ---------------------------------------------------------------------------------------------
# Collection and evaluation (docs/method.md §4)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainCollectionConfig:
    num_envs: int = 16
    stop_after_epochs: int = 991  # collect while epoch <= this
    epsilon: float = 0.01  # batch-wide: the whole action vector is random with this probability
    should_sample: bool = True
    temperature: float = 1.0
    num_steps: int = 10_000
    num_steps_first_epoch: int = 100_000  # epoch 1 is fully random (epsilon forced to 1)
    # Not in the paper: run the policy under bf16 autocast while collecting (~1.7× faster on CPUs
    # with bf16 instructions; action probabilities differ slightly from fp32). Off = the paper.
    policy_bf16: bool = False
    # Not in the paper, speed only: processes stepping the envs (this one plus env_processes - 1
    # workers, each with a share of the envs). The episodes do not depend on it.
    env_processes: int = 2

    def __post_init__(self) -> None:
        _positive(self, "num_envs", "temperature", "num_steps", "num_steps_first_epoch", "env_processes")
        _non_negative(self, "stop_after_epochs")
        _unit_interval(self, "epsilon")

    def steps_in_epoch(self, epoch: int) -> int:
        if epoch > self.stop_after_epochs:
            return 0
        return self.num_steps_first_epoch if epoch == 1 else self.num_steps


@dataclass(frozen=True)
class TestCollectionConfig:
    num_envs: int = 32
    # Videos written by each evaluation (media/<i>/test_episode*.mp4): the first this many test
    # episodes (at most num_episodes); 0: none.
    num_episodes_to_save: int = 10
    epsilon: float = 0.0
    should_sample: bool = True  # the test policy samples at temperature 1: it is not greedy
    temperature: float = 1.0
    num_episodes: int = 64
    env_processes: int = 2  # as in TrainCollectionConfig

    def __post_init__(self) -> None:
        _positive(self, "num_envs", "temperature", "num_episodes", "env_processes")
        _non_negative(self, "num_episodes_to_save")
        _unit_interval(self, "epsilon")


@dataclass(frozen=True)
class CollectionConfig:
    train: TrainCollectionConfig = field(default_factory=TrainCollectionConfig)
    test: TestCollectionConfig = field(default_factory=TestCollectionConfig)


@dataclass(frozen=True)
class EvaluationConfig:
    should: bool = True
    every: int = 50  # evaluate at epochs divisible by this
    tokenizer_batch_num_samples: int | None = None  # = training.tokenizer.batch_num_samples
    world_model_batch_num_samples: int | None = None  # = training.world_model.batch_num_samples
    save_reconstructions: bool = True

    def __post_init__(self) -> None:
        _positive(self, "every")
        for name in ("tokenizer_batch_num_samples", "world_model_batch_num_samples"):
            value = getattr(self, name)
            if value is not None:
                _require(value > 0, name, f"must be > 0, got {value}")


DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class CommonConfig:
    epochs: int = 1000
    seed: int = 0
    device: str = "auto"  # "auto": cuda when available, else cpu; or "cpu", "cuda", "cuda:<index>"

    def __post_init__(self) -> None:
        _positive(self, "epochs")
        _non_negative(self, "seed")
        kind, _, index = self.device.partition(":")
        _require(
            self.device == "auto"
            or (kind in DEVICE_TYPES and (not index or (kind == "cuda" and index.isdigit()))),
            "device",
            f"must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {self.device!r}",
        )


# ---------------------------------------------------------------------------------------------
# Runtime: how the agent runs on its device (never the maths; see iris_core.models.runtime)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeConfig:
    """Optimisations that change speed and memory, never the values computed (up to rounding).

    Kept apart from the paper's hyperparameters. ``None`` (the default) takes the device's default
    (``iris_core.models.runtime.resolve_runtime``): on CUDA TF32, fused Adam, channels-last; on CPU
    channels-last, the sub-pixel upsampling and activation checkpointing of the CNNs.
    """

    channels_last: bool | None = None  # CNN weights and maps in NHWC (on CPU with an accurate GroupNorm)
    checkpoint_cnns: bool | None = None  # CNNs re-run GN/SiLU (or whole chunks) backward: less memory
    cpu_kernels: bool | None = None  # CPU only: sub-pixel fp32 upsampling, CNNs on batch chunks
    compile: bool | None = None  # torch.compile each compute_loss; imagination with CUDA graphs on CUDA
    tf32: bool | None = None  # CUDA: TF32 matmuls and convolutions, as the reference trains
    fused_adam: bool | None = None  # CUDA: one fused kernel per optimizer step


# ---------------------------------------------------------------------------------------------
# Environments (docs/method.md §1)
# ---------------------------------------------------------------------------------------------


ENV_KINDS = ("crafter", "atari")
CRAFTER_IDS = ("crafter",)
# The games the paper's Atari wrappers take: gymnasium's <Game>NoFrameskip-v4 ids registered by ale-py
# (no frame skip, no sticky actions). Checked statically: whether the ROM exists is the env's business.
ATARI_ID = re.compile(r"[A-Z][A-Za-z0-9]*NoFrameskip-v4")
FRAME_CHANNELS = 3  # both environments give RGB frames
# Keys that follow the frame size (``env.train.size``) when left null; the loader fills them in.
FRAME_SIZE_FOLLOWERS = (
    "env.test.size",
    "tokenizer.image_size",
    "world_model.image_size",
    "actor_critic.image_size",
)


def check_env_id(kind: str, env_id: str) -> str | None:
    """Why ``env_id`` cannot name an env of ``kind`` (``None``: it can)."""
    if kind == "crafter" and env_id not in CRAFTER_IDS:
        return (
            f"{env_id!r} is not a Crafter id (kind is 'crafter', whose only id is 'crafter'); "
            "for an Atari game select env=atari params=atari"
        )
    if kind == "atari" and not ATARI_ID.fullmatch(env_id):
        return (
            f"{env_id!r} is not an Atari id (kind is 'atari'): expected <Game>NoFrameskip-v4, "
            "e.g. BreakoutNoFrameskip-v4"
        )
    return None


@dataclass(frozen=True)
class EnvSpec:
    """One environment. ``kind`` picks the builder; an option of the other kind is refused.

    ``id`` of the test env may be ``None``: it then follows ``train.id`` (so overriding
    ``env.train.id`` switches both, as in the paper code). ``size`` (the frame size) is set on
    the train env; the test env's follows it (see :data:`FRAME_SIZE_FOLLOWERS`).
    """

    kind: str = "crafter"
    id: str | None = "crafter"
    size: int = 64
    max_episode_steps: int = 10_000
    noop_max: int = 0  # Atari: random no-ops at reset (train 1..30, test exactly 1)
    frame_skip: int = 1
    done_on_life_loss: bool = False
    clip_reward: bool = False
    # Not in the paper code, Crafter only: pixel-identical faster rendering and world generation
    # (same frames, rewards and worlds for a seed; tested against crafter's own code). false runs
    # crafter's own code.
    fast: bool = True

    def __post_init__(self) -> None:
        _one_of(self, "kind", ENV_KINDS)
        _positive(self, "size", "max_episode_steps", "frame_skip")
        _non_negative(self, "noop_max")
        if self.id is not None:
            problem = check_env_id(self.kind, self.id)
            _require(problem is None, "id", problem or "")
        if self.kind == "crafter":
            _require(self.frame_skip == 1, "frame_skip", "Crafter has no frame skip")
            _require(not self.done_on_life_loss, "done_on_life_loss", "Crafter has no lives")
            _require(
                self.noop_max == 0,
                "noop_max",
                f"Atari only (Crafter has no no-op reset), got {self.noop_max}",
            )
            _require(not self.clip_reward, "clip_reward", "Atari only (Crafter's rewards are never clipped)")
        else:
            _require(self.fast, "fast", "Crafter only (Atari has no fast mode)")


@dataclass(frozen=True)
class EnvConfig:
    train: EnvSpec = field(default_factory=EnvSpec)
    test: EnvSpec = field(default_factory=lambda: EnvSpec(id=None))

    def __post_init__(self) -> None:
        _require(self.train.id is not None, "train.id", "must name the environment")
        if self.test.id is None:
            _nested(self, "test", replace(self.test, id=self.train.id))
        _require(
            self.train.kind == self.test.kind,
            "test.kind",
            f"train and test envs must be of one kind, got {self.train.kind!r} and {self.test.kind!r}",
        )
        _require(
            self.train.size == self.test.size,
            "test.size",
            f"must equal env.train.size ({self.train.size}), got {self.test.size}: the frame size is "
            "set by env.train.size alone (leave env.test.size null to follow it)",
        )


# ---------------------------------------------------------------------------------------------
# The whole agent
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IrisConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    common: CommonConfig = field(default_factory=CommonConfig)
    collection: CollectionConfig = field(default_factory=CollectionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    actor_critic: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        tok, wm, ac, tr = self.tokenizer, self.world_model, self.actor_critic, self.training

        # Frames: one size (env.train.size) and channel count for every CNN and the environment.
        size = self.env.train.size
        for key, value in (
            ("tokenizer.image_size", tok.image_size),
            ("world_model.image_size", wm.image_size),
            ("actor_critic.image_size", ac.image_size),
        ):
            _require(
                value == size,
                key,
                f"must equal env.train.size ({size}), got {value}: the frame size is set by "
                f"env.train.size alone (leave {key} null to follow it)",
            )
        _require(
            tok.image_channels == FRAME_CHANNELS,
            "tokenizer.image_channels",
            f"must be {FRAME_CHANNELS}: {self.env.train.kind} frames are RGB, got {tok.image_channels}",
        )
        _require(
            wm.image_channels == tok.image_channels,
            "world_model.image_channels",
            f"must equal tokenizer.image_channels ({tok.image_channels})",
        )

        # Sequence lengths: the tokenizer sees world-model-length segments, the actor-critic
        # burn-in + 1 frames (docs/method.md §3).
        wm_len = tr.world_model.sequence_length
        _require(wm_len is not None, "training.world_model.sequence_length", "must be set")
        assert wm_len is not None
        tr = replace(
            tr,
            # A default, not a derivation: Atari trains its tokenizer on 21 frames, its world model on 26.
            tokenizer=tr.tokenizer
            if tr.tokenizer.sequence_length is not None
            else replace(tr.tokenizer, sequence_length=wm_len),
            actor_critic=_derived(
                tr.actor_critic, "training.actor_critic", sequence_length=ac.burn_in_length + 1
            ),
        )
        _nested(self, "training", tr)

        # World model sizes follow the tokenizer and its training segments.
        transformer = _derived(
            wm.transformer, "world_model.transformer", max_blocks=wm_len, tokens_per_block=2 + tok.num_tokens
        )
        wm = _derived(
            wm, "world_model", latent_vocab_size=tok.codebook_size, num_latent_tokens=tok.num_tokens
        )
        wm = replace(wm, transformer=transformer)
        _nested(self, "world_model", wm)
        needed = ac.burn_in_length + ac.imagination_horizon + 1
        max_blocks = transformer.max_blocks
        assert max_blocks is not None
        _require(
            needed <= max_blocks,
            "actor_critic.imagination_horizon",
            f"burn_in_length ({ac.burn_in_length}) + imagination_horizon ({ac.imagination_horizon}) + 1 = "
            f"{needed} exceeds the world model's context of {max_blocks} blocks "
            "(training.world_model.sequence_length)",
        )

        # Evaluation batches default to the training batches.
        ev = self.evaluation
        if ev.tokenizer_batch_num_samples is None:
            ev = replace(ev, tokenizer_batch_num_samples=tr.tokenizer.batch_num_samples)
        if ev.world_model_batch_num_samples is None:
            ev = replace(ev, world_model_batch_num_samples=tr.world_model.batch_num_samples)
        _nested(self, "evaluation", ev)

        # num_actions: all three components agree (all None before the env is known).
        counts = {tok.num_actions, wm.num_actions, ac.num_actions}
        _require(
            len(counts) == 1,
            "world_model.num_actions",
            f"tokenizer, world_model and actor_critic disagree on num_actions: {sorted(map(str, counts))}",
        )

    @property
    def num_actions(self) -> int | None:
        return self.tokenizer.num_actions

    def with_num_actions(self, num_actions: int) -> IrisConfig:
        """A copy with the action count of the environment set in every component."""
        return replace(
            self,
            tokenizer=replace(self.tokenizer, num_actions=num_actions),
            world_model=replace(self.world_model, num_actions=num_actions),
            actor_critic=replace(self.actor_critic, num_actions=num_actions),
        )


def config_to_dict(config: object) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (tuples become lists), for YAML and logging."""

    def convert(value: object) -> object:
        if hasattr(value, "__dataclass_fields__"):
            return {f.name: convert(getattr(value, f.name)) for f in fields(value)}  # type: ignore[arg-type]
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        return value

    result = convert(config)
    assert isinstance(result, dict)
    return result
