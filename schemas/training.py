"""Validated configs of the trainers: what pairs they read and how the models are built.

`LamConfig` is the file behind `lawam train-lam --config lam.yaml`; every field has a
default small enough to train in minutes on a 2-core CPU, and unknown fields fail at
load time (a typo never silently falls back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import Field, model_validator

from schemas.config import ConfigError, _Strict
from schemas.strict import read_yaml, validate_file


class PairsConfig(_Strict):
    """Which frame pairs (f_t, f_{t+k}) a trainer reads from the store, and what comes with them."""

    # Gap between the two frames, in seconds; converted per episode at its sampling fps
    # (the public LaWAM default is 1.2-1.6 s; 0.5 s suits the short Meta-World samples).
    k_seconds: Annotated[float, Field(gt=0)] = 0.5
    horizon: Annotated[int, Field(ge=1)] = 5  # action-chunk length H, in steps at action_rate
    action_rate: Annotated[float | None, Field(gt=0)] = 10.0  # Hz of the chunk; None = the source's control rate
    sources: list[str] = Field(default_factory=list)  # only these source ids; empty = all
    kinds: list[Literal["robot", "human"]] = Field(default_factory=list)  # only these kinds; empty = both
    # Episodes held out for metrics: chosen by a hash of the episode key (never by frame), so
    # the split is the same in every store version; a source's own split ("val", "test") wins.
    heldout_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    # Per-source mixing weights (share of each epoch); empty = in proportion to their pairs.
    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    seed: int = 0  # shuffles pairs; with the same seed the order of pairs is the same
    # A curation set of the store (`lawam curate` prints its id, 'cur-...'; `lawam catalog` lists
    # them). With one: pairs touching its still spans are skipped (drop_idle) and, of each group of
    # duplicate episodes, only the one it keeps is read (dedup). None: every frame of every episode.
    curation: str | None = None
    drop_idle: bool = True
    dedup: bool = True


class LamModelConfig(_Strict):
    """The latent world model: inverse dynamics (IDM) + bottleneck + forward model (FDM)."""

    width: Annotated[int, Field(ge=8)] = 128  # transformer width of IDM and FDM (1.0 M parameters in all)
    heads: Annotated[int, Field(ge=1)] = 4
    idm_layers: Annotated[int, Field(ge=1)] = 2
    fdm_layers: Annotated[int, Field(ge=1)] = 2
    queries: Annotated[int, Field(ge=1)] = 1  # learned query tokens of the IDM (LaWAM: 1; UniVLA: 4)
    bottleneck: Literal["vae", "vq"] = "vae"  # continuous (small KL) or vector-quantised
    code_dim: Annotated[int, Field(ge=1)] = 32  # per query; z has queries * code_dim numbers
    kl_beta: Annotated[float, Field(ge=0)] = 1e-4  # vae: weight of the KL term
    vq_codes: Annotated[int, Field(ge=2)] = 16  # vq: codebook size
    vq_beta: Annotated[float, Field(ge=0)] = 0.25  # vq: commitment weight
    vq_restart_every: Annotated[int, Field(ge=0)] = 100  # vq: steps between dead-code restarts; 0 = never
    aux_weight: Annotated[float, Field(ge=0)] = 0.1  # auxiliary head z -> state change, when state exists
    # Token-space augmentation, separately for the IDM's and the FDM's inputs (training only):
    # Gaussian noise in standardised units, and a share of tokens zeroed (set to the feature
    # mean), drawn per pair and per frame. Noise on the IDM's frames hides details z could
    # smuggle; dropped FDM tokens make the decoder lean on z for what it cannot see.
    idm_noise: Annotated[float, Field(ge=0)] = 0.05
    fdm_noise: Annotated[float, Field(ge=0)] = 0.05
    idm_token_drop: Annotated[float, Field(ge=0, lt=1)] = 0.0
    fdm_token_drop: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # Frames the IDM sees, evenly spaced from t to t+k (2 = the pair only; LAOM's multi-step
    # IDM): the frames between tell the path, not only where it ends.
    idm_frames: Annotated[int, Field(ge=2, le=8)] = 2
    # Auxiliary head z -> the pair's action chunk (pairs.horizon steps at pairs.action_rate),
    # standardised, on robot episodes that keep their actions (human video has none); 0 = off.
    # On by default: it is what makes z carry the action (held-out robot probe R² 0.57 -> 0.90
    # in bench_lam, README's stage-1 levers); a store without actions trains without it.
    action_weight: Annotated[float, Field(ge=0)] = 1.0
    # Share of robot episodes whose actions that head sees, chosen by a hash of the key (the
    # same episodes as `lawam distill --action-fraction`).
    action_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    # Condition the FDM on the instruction (learned word embeddings over the store's
    # instructions), so z needs not carry the task (UniVLA feeds language to its decoder).
    fdm_instruction: bool = False
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="after")
    def _heads_divide_width(self) -> LamModelConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        return self


class OptimConfig(_Strict):
    """AdamW with linear warm-up then cosine decay, and gradient clipping."""

    steps: Annotated[int, Field(ge=1)] = 1000  # ~0.28 s each at the defaults on 2 CPU cores
    batch_size: Annotated[int, Field(ge=1)] = 128  # pairs per step (per worker under Ray Train)
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.05  # cosine floor, as a fraction of lr
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    eval_every: Annotated[int, Field(ge=0)] = 500  # steps between held-out evaluations; 0 = only at the end
    checkpoint_every: Annotated[int, Field(ge=0)] = 500  # steps between resumable checkpoints; 0 = only at the end
    loader_workers: Annotated[int, Field(ge=0)] = 0  # DataLoader worker processes per trainer
    seed: int = 0  # model init and noise


class LamConfig(_Strict):
    """Everything `lawam train-lam` needs besides the store: pairs, model, optimiser."""

    pairs: PairsConfig = PairsConfig()
    model: LamModelConfig = LamModelConfig()
    optim: OptimConfig = OptimConfig()


TrainingConfig = TypeVar("TrainingConfig", "LamConfig", "DistillConfig")


def with_steps(cfg: TrainingConfig, steps: int | None) -> TrainingConfig:
    """`cfg` (a LamConfig or DistillConfig) with `optim.steps` replaced; `cfg` itself when
    `steps` is None (the `--steps` flag of every trainer and flow)."""
    if steps is None:
        return cfg
    return cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"steps": steps})})


def load_lam_config(path: str | Path | None) -> LamConfig:
    """Load `lam.yaml` (all fields optional); None gives the defaults."""
    if path is None:
        return LamConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    return validate_file(LamConfig, read_yaml(path), path)


class PolicyModelConfig(_Strict):
    """The LaWAM policy: features + instruction + proprioception -> latent action -> subgoal -> chunk."""

    width: Annotated[int, Field(ge=8)] = 128  # trunk width
    heads: Annotated[int, Field(ge=1)] = 4
    layers: Annotated[int, Field(ge=1)] = 2  # trunk transformer layers over f_t's tokens
    hidden: Annotated[int, Field(ge=8)] = 256  # action-head MLP width
    subgoal_dim: Annotated[int, Field(ge=1)] = 16  # per token: the subgoal's change from f_t, projected
    # False = the ablation: the same trunk and action head without the subgoal, and no latent
    # term (plain behaviour cloning from the robot episodes' actions).
    subgoal: bool = True
    action_head: Literal["l1", "flow"] = "l1"  # L1 regression, or flow matching (GR00T-style)
    flow_steps: Annotated[int, Field(ge=1)] = 10  # flow: Euler steps at inference
    latent_weight: Annotated[float, Field(ge=0)] = 1.0  # distillation term (every episode)
    action_weight: Annotated[float, Field(ge=0)] = 1.0  # action term (robot episodes with actions)
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="after")
    def _heads_divide_width(self) -> PolicyModelConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        return self


class PolicyPairsConfig(PairsConfig):
    """The pairs a policy reads: a chunk of 8 steps at the robot episodes' own control rate."""

    horizon: Annotated[int, Field(ge=1)] = 8
    action_rate: Annotated[float | None, Field(gt=0)] = None


def _policy_optim() -> OptimConfig:
    return OptimConfig(steps=2000, batch_size=128, lr=1e-3, warmup_steps=100, eval_every=500,
                       checkpoint_every=500)


class DistillConfig(_Strict):
    """Everything `lawam distill` needs besides the store and the LaWM: pairs, policy, optimiser.

    `pairs.k_seconds` is taken from the LaWM (labels exist for that gap only)."""

    pairs: PolicyPairsConfig = PolicyPairsConfig()
    model: PolicyModelConfig = PolicyModelConfig()
    optim: OptimConfig = Field(default_factory=_policy_optim)
    # Share of robot episodes that keep their actions (and proprioception); the others serve as
    # action-free video, as human episodes do. Chosen by a hash of the episode key.
    action_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0


def load_distill_config(path: str | Path | None) -> DistillConfig:
    """Load `distill.yaml` (all fields optional); None gives the defaults."""
    if path is None:
        return DistillConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    return validate_file(DistillConfig, read_yaml(path), path)
